"""Reading a run back: committed markers first, then results.parquet for what has none."""

from __future__ import annotations

from typing import Any

from nst_ops.vocab import Status

from . import layout, storage

RESULTS = layout.RESULTS_TABLE
JOBS = layout.JOBS_TABLE


def is_run(store: storage.Store) -> bool:
    """Whether ``store`` holds a run (a missing path or an unrelated folder does not)."""
    return any(store.exists(p) for p in (JOBS, RESULTS, layout.JOBS_DIR))


def collect(store: storage.Store) -> tuple[list[dict[str, Any]], int]:
    """(rows, total jobs): every committed job plus uncommitted failures from the last run.

    Stored paths are relative to the run root and resolved here, so a moved or copied run reads
    its own files. A committed job whose image or trace is gone is flagged ``outputs_missing``.
    """
    files = store.job_files()
    rows = list(store.committed(files).values())
    for r in rows:
        if layout.outputs_missing(r, files.get(r["job_id"], {})):
            r["outputs_missing"] = True
        for key in ("image_uri", "trace_uri"):
            if r.get(key):
                r[key] = store.resolve(r[key])
    total = len(rows)
    if store.exists(RESULTS):
        known = {r["job_id"] for r in rows}
        rows += [
            r
            for r in store.get_table(RESULTS).to_pylist()
            if r["job_id"] not in known and r.get("status") != Status.PENDING
        ]
    if store.exists(JOBS):
        total = store.get_table(JOBS).num_rows
    return rows, max(total, len(rows))
