"""The driver side of `nst apply`: the model checked and recorded, the lease held, Ray
started, the collection streamed, the outcome printed and summarised for schedulers."""

from __future__ import annotations

import json
import time
from typing import Any

from nst_ops.evaluator import default_evaluator

from .. import lease, record, storage
from ..cli_shared import _evaluator, console, out_console
from ..errors import NstError
from . import layout
from .apply import ApplySummary, run_apply
from .apply_worker import ApplyOptions
from .model_file import from_bytes


def apply_command(
    model_uri: str, input_uri: str, out: str, so: dict | None, *, gpus: float | None,
    score: str, evaluator: str | None, address: str | None, progress: bool, strict: bool,
    summary_json: str | None, batch_size: int, workers: int | None, retry_failed: bool,
    **options: Any,
) -> int:  # fmt: skip
    """Run the collection and return the exit code (see `nst apply --help`)."""
    from ..execute import RunProgress, init_ray

    started = time.time()
    model = from_bytes(storage.read_bytes(model_uri, so), model_uri)
    ev = None
    if score != "none":
        ev = _evaluator(evaluator, [model.spec], default_evaluator([model.spec]).to_dict())
    opts = ApplyOptions(out, model_uri, evaluator=ev, storage_options=so, **options)
    store = storage.Store(out, so)
    if store.fs.isfile(store.root):
        raise NstError(f"--out {out} is a file; give a folder or URL prefix")
    with lease.held(store):
        store.put_json(layout.APPLY_RECORD, _apply_record(model, opts, input_uri, started))
        init_ray(address)
        res_gpus = gpus if gpus is not None else (1.0 if _cluster_gpus() else 0.0)
        bar = RunProgress(0, progress, label="nst apply")
        try:
            summary = run_apply(opts, input_uri, model.fingerprint, batch_size, workers,
                                res_gpus, retry_failed, score, bar)  # fmt: skip
        finally:
            bar.close()
    code = _report(summary, out, strict)
    if summary_json:
        _write_summary(summary_json, so, summary, time.time() - started, code)
    return code


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def _apply_record(model: Any, opts: ApplyOptions, input_uri: str, started: float) -> dict:
    """apply.json: which network made this collection (its fingerprint) and how."""
    settings = {k: v for k, v in vars(opts).items() if k != "storage_options"}
    return {
        "model_uri": opts.model_uri,
        "model_fingerprint": model.fingerprint,
        "model": model.meta,
        "input": input_uri,
        "options": settings,
        "started_at": started,
        "versions": record.versions(),
    }


def _report(summary: ApplySummary, out: str, strict: bool) -> int:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.reasons.items()))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    out_console.print(
        f"{summary.total} images: {summary.todo} to do ({reasons or 'nothing to do'}) · "
        f"{counts or 'none'} · results: {storage.join(out, 'results.parquet')}",
        highlight=False,
    )
    if summary.interrupted:
        console.print("[yellow]interrupted:[/] written images are kept; run again to resume")
        return 130
    return 3 if strict and summary.counts.get("failed") else 0


def _write_summary(
    dest: str, so: dict | None, summary: ApplySummary, seconds: float, code: int
) -> None:
    doc = {
        "total": summary.total,
        "ran": dict(sorted(summary.reasons.items())),
        "status": dict(sorted(summary.counts.items())),
        "failed_inputs": summary.failed,
        "interrupted": summary.interrupted,
        "seconds": round(seconds, 3),
        "exit_code": code,
    }
    fs, path = storage.filesystem(dest, so)
    fs.pipe_file(path, json.dumps(doc, indent=1).encode())
