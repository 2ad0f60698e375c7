"""Synthetic inputs and runs, shared by the tests and the benchmarks: tiny random images, small
manifests, and a finished run written as workers write it, without optimising."""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

TINY = {
    "weights": "random:0",
    "size": 16,
    "iterations": 2,
    "content_layers": ["relu2_1"],
    "style_layers": ["relu1_1", "relu2_1"],
    "log_every": 1,
}


def png_bytes(w: int = 20, h: int = 16, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


def write_images(folder: Path, n: int, prefix: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i}.png"
        p.write_bytes(png_bytes(seed=zlib.crc32(prefix.encode()) % 1000 + i))  # not hash(): salted
        paths.append(str(p))
    return paths


def table(rows: list[dict], **common: Any) -> pa.Table:
    """A manifest table; every row gets every column (from_pylist reads keys off row 0)."""
    full = [{**TINY, **common, **r} for r in rows]
    keys = list(dict.fromkeys(k for r in full for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in full])


def _write_record(folder: Path, trace: pa.Table, row: dict, v1: bool) -> None:
    """A committed job's trace and record, marker last, in the current form or the v1 one."""
    import json

    import pyarrow.parquet as pq

    from pipeline.store import layout, record

    rec = {**row, "versions": {}, "started_at": 0.0, "finished_at": 1.0}
    if not v1:
        (folder / layout.RESULT).write_bytes(record.result_file(trace, rec))
        return
    pq.write_table(trace, folder / layout.V1_TRACE)
    (folder / layout.V1_RECORD).write_text(json.dumps(rec))
    (folder / layout.V1_MARKER).write_text(json.dumps(row))


def synthetic_run(root: Path, n: int, seed: int = 0, scored: bool = True, v1: bool = False) -> Path:
    """A finished run of ``n`` scored jobs written as workers write them (image, then
    result.parquet, then results.parquet; with ``v1`` as runs before November 2026 were
    written: image, trace.parquet, job.json, _COMMIT), without optimising: for report tests
    and benchmarks. Axes: style_weight (4 values) x lr (2) x content (n/8 images); scores
    trade off."""
    from nst_ops.spec import JobSpec
    from nst_ops.vocab import Status
    from pipeline.jobs.job import Job
    from pipeline.run.scheduler import write_results
    from pipeline.store import layout, record

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    jobs, rows = [], {}
    betas, lrs = (1e3, 1e4, 1e5, 1e6), (0.01, 0.1)
    trace_name = layout.V1_TRACE if v1 else layout.RESULT
    for i in range(n):
        beta, lr = betas[i % 4], lrs[(i // 4) % 2]
        spec = JobSpec(weights="random:0", optimizer="adam", style_weight=beta, lr=lr, size=32)
        job = Job(spec, f"/in/content/c{i // 8}.png", ("/in/style/s.png",), i // 8)
        tilt = np.log10(beta) - 4.5 + rng.normal(0, 0.4)
        style = -tilt - 6 + rng.normal(0, 0.3)  # noise: not every job is on the Pareto front
        scores = {"score_content": float(10 ** (tilt - 3)), "score_style": float(10**style)}
        if not scored:  # a run from before scores existed
            scores = {}
        row = record.row(job, Status.OK, final_total=float(rng.lognormal()), seconds=1.0,
                         **scores, score_by="synthetic" if scored else None, inputs=[],
                         image_uri=layout.job_path(job.id, layout.IMAGE),
                         trace_uri=layout.job_path(job.id, trace_name))  # fmt: skip
        d = root / layout.job_dir(job.id)
        d.mkdir(parents=True, exist_ok=True)
        (d / layout.IMAGE).write_bytes(png_bytes(32, 32, seed=i))
        its = list(range(0, 101, 10))
        total = [float(10 ** (2 - k / 50 + rng.normal(0, 0.05))) for k in its]
        _write_record(d, pa.table({"iteration": its, "total": total}), row, v1)
        jobs.append(job)
        rows[job.id] = row
    from pipeline.store.storage import Store

    evaluator = {"backbone": "vgg19", "weights": "random:0", "pooling": "max",
                 "content_layer": "relu3_1", "style_layers": ["relu1_1"]}  # fmt: skip
    write_results(Store(str(root)), jobs, {}, rows, evaluator)
    return root
