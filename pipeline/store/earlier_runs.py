"""Runs written before November 2026: four files per job (image, trace.parquet, job.json, and
the result row as JSON in _COMMIT, written last). They are read as they are, rescored in their
own form, and a job of theirs that runs again is written in the current form (layout's
``uncommit_paths`` deletes its old files first). What only that form needs is here; its file
names live with every other name in ``layout``, and its _COMMIT row is parsed as every
record's row is (``record.marker_row``)."""

from __future__ import annotations

import json
from typing import Any

from pipeline.store import layout

TRACE, RECORD, MARKER = layout.V1_TRACE, layout.V1_RECORD, layout.V1_MARKER


def record_path(job_id: str) -> str:
    return layout.job_path(job_id, RECORD)


def read_record(data: bytes) -> dict[str, Any]:
    """An earlier run's job.json: the row plus versions and timings."""
    rec: dict[str, Any] = json.loads(data)
    return rec


def rescored(
    record: bytes | None, row: dict[str, Any], scores: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The files `nst score` writes for an earlier run's job, in the order to write them (the
    marker last): its job.json and its _COMMIT with the new scores."""
    try:
        rec = read_record(record) if record is not None else {}
    except ValueError:
        rec = {}
    marker = {k: v for k, v in row.items() if k != "committed"}
    return {
        record_path(row["job_id"]): {**rec, **scores},
        layout.job_path(row["job_id"], MARKER): marker,
    }
