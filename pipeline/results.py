"""Reading a run back: committed markers first, then results.parquet for what has none."""

from __future__ import annotations

from typing import Any

from . import storage

RESULTS = "results.parquet"
JOBS = "jobs.parquet"


def collect(store: storage.Store) -> tuple[list[dict[str, Any]], int]:
    """(rows, total jobs): every committed job plus uncommitted failures from the last run."""
    rows = list(store.committed().values())
    total = len(rows)
    if store.exists(RESULTS):
        known = {r["job_id"] for r in rows}
        rows += [
            r
            for r in store.get_table(RESULTS).to_pylist()
            if r["job_id"] not in known and r.get("status") != "pending"
        ]
    if store.exists(JOBS):
        total = store.get_table(JOBS).num_rows
    return rows, max(total, len(rows))
