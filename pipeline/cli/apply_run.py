"""The driver side of `nst apply`: the model checked and recorded, the lease held, Ray
started, the collection streamed, the outcome printed and summarised for schedulers."""

from __future__ import annotations

import statistics
import time
from typing import Any

from nst_ops.evaluator import default_evaluator
from pipeline.cli.common import _evaluator, console, out_console
from pipeline.cli.exit_summary import summary_on_exit
from pipeline.errors import NstError
from pipeline.run import images, lease
from pipeline.run.model_file import read_model
from pipeline.store import record, root_kind, storage
from pipeline.store.root_kind import RootKind
from pipeline.stylenet import layout
from pipeline.stylenet.apply import (
    ApplySummary,
    check_clashes,
    check_score,
    list_collection,
    run_apply,
)
from pipeline.stylenet.apply_worker import ApplyOptions, check_size


def apply_command(
    model_uri: str, input_uri: str, out: str, so: dict | None, *, gpus: float | None,
    score: str, evaluator: str | None, address: str | None, progress: bool, strict: bool,
    summary_json: str | None, batch_size: int, workers: int | None, retry_failed: bool,
    **options: Any,
) -> int:  # fmt: skip
    """Run the collection and return the exit code (see `nst apply --help`)."""
    with summary_on_exit(summary_json, so, APPLY_SUMMARY_KEYS) as exit_summary:
        summary = _apply(model_uri, input_uri, out, so, gpus=gpus, score=score,
                         evaluator=evaluator, address=address, progress=progress,
                         batch_size=batch_size, workers=workers, retry_failed=retry_failed,
                         **options)  # fmt: skip
        exit_summary.code = _report(summary, out, strict)
        exit_summary.fields |= _summary_fields(summary)
    return exit_summary.code


def _apply(
    model_uri: str, input_uri: str, out: str, so: dict | None, *, gpus: float | None,
    score: str, evaluator: str | None, address: str | None, progress: bool, batch_size: int,
    workers: int | None, retry_failed: bool, **options: Any,
) -> ApplySummary:  # fmt: skip
    """Every check and the listing first, in one line each and with nothing written; then the
    lease, the plan, and only when there is work, apply.json and Ray."""
    from pipeline.run.scheduler import RunProgress, init_ray

    started = time.time()
    check_score(score)
    check_size(options.get("size", 0))
    model = read_model(model_uri, so)
    ev = None
    if score != "none":
        ev = _evaluator(evaluator, [model.spec], default_evaluator([model.spec]).to_dict())
    opts = ApplyOptions(out, model_uri, evaluator=ev, storage_options=so, **options)
    store = storage.Store(out, so)
    if store.fs.isfile(store.root):
        raise NstError(f"--out {out} is a file; give a folder or URL prefix")
    root_kind.check(store, RootKind.APPLY)
    listing = list_collection(input_uri, so, exclude=store.url(""))
    check_clashes(listing, images.FORMATS[opts.image_format][1])

    def start() -> float:
        store.put_json(layout.APPLY_RECORD, _apply_record(model, opts, input_uri, started))
        init_ray(address)
        return gpus if gpus is not None else (1.0 if _cluster_gpus() else 0.0)

    with lease.held(store):
        root_kind.claim(store, RootKind.APPLY)
        bar = RunProgress(0, progress, label="nst apply")
        try:
            summary = run_apply(opts, listing, model.fingerprint, batch_size, workers,
                                retry_failed, score, bar, start)  # fmt: skip
        finally:
            bar.close()
    summary.model_gap = model.meta.get("holdout_gap")
    return summary


def _cluster_gpus() -> float:
    from pipeline.run.placement import cluster_gpus

    return cluster_gpus()


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


def quality_line(kept: dict[str, float], gap: dict[str, Any] | None) -> str:
    """How far the scored outputs are from the optimiser's, in the job's own objective."""
    worst = sorted(kept, key=kept.__getitem__, reverse=True)[:3]
    text = (
        f"scored {len(kept)}: the network's loss is {statistics.median(kept.values()):.0%} of "
        f"the unstyled photo's (median, the job's own objective)"
    )
    if gap and gap.get("median_gap_closure") is not None:
        text += (
            f"; on its held-aside photos it closed {gap['median_gap_closure']:.0%} of the gap "
            f"to the optimiser ({gap['median_ratio_to_optimised']:.2f}x its loss)"
        )
    return f"{text}; refine first (least changed): {', '.join(worst)}"


def _report(summary: ApplySummary, out: str, strict: bool) -> int:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.reasons.items()))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
    out_console.print(
        f"{summary.total} images: {summary.todo} to do ({reasons or 'nothing to do'}) · "
        f"{counts or 'none'} · results: {storage.join(out, 'results.parquet')}",
        highlight=False,
    )
    if summary.kept_of_photo:
        out_console.print(quality_line(summary.kept_of_photo, summary.model_gap), highlight=False)
    if summary.interrupted:
        console.print("[yellow]interrupted:[/] written images are kept; run again to resume")
        return 130
    return 3 if strict and summary.counts.get("failed") else 0


APPLY_SUMMARY_KEYS = ("total", "ran", "status", "failed_inputs", "interrupted")


def _summary_fields(summary: ApplySummary) -> dict[str, Any]:
    return {
        "total": summary.total,
        "ran": dict(sorted(summary.reasons.items())),
        "status": dict(sorted(summary.counts.items())),
        "failed_inputs": summary.failed,
        "interrupted": summary.interrupted,
    }
