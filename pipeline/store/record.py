"""A job's record, built and read back in one place: the result row (results.parquet) and the
record (the row plus versions and timings), which travels in the metadata of the job's
result.parquet next to its loss trace. Parameters appear once, flattened."""

from __future__ import annotations

import functools
import io
import json
import platform
import sys
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from nst_ops.vocab import Status
from pipeline.store import earlier_runs, layout

if TYPE_CHECKING:  # keeps reading a run back free of torch
    from nst_ops.loop import Outcome


class Job(Protocol):
    """What the store needs of a job (pipeline.jobs.job.Job): the store sits below the jobs
    layer, so it names the shape rather than importing the class."""

    @property
    def id(self) -> str: ...

    def to_record(self) -> dict[str, Any]: ...


def row(job: Job, status: Status, **fields: Any) -> dict[str, Any]:
    """The job's identity, inputs and parameters, then its status and whatever else is known."""
    return {**job.to_record(), "status": status.value, "error": None, **fields}


def failed(job: Job, error: str, **fields: Any) -> dict[str, Any]:
    return row(job, Status.FAILED, **fields) | {"error": error}


def pending(job: Job) -> dict[str, Any]:
    return row(job, Status.PENDING, committed=False)


def outcome_fields(outcome: Outcome, names: layout.OutputNames) -> dict[str, Any]:
    """What an optimisation adds: status, losses, and the outputs' paths (relative to the
    store's root, so a moved or copied run still reads back)."""
    return {
        "status": outcome.status.value,
        "error": outcome.reason,
        "iterations_run": outcome.iterations,
        "diverged_at": outcome.diverged_at,
        "restarts_used": len(outcome.restarts),
        "restarted_at": list(outcome.restarts),
        "converged_at": outcome.converged_at,
        **{f"final_{k}": v for k, v in outcome.final.items() if k != "iteration"},
        "image_uri": names.image,
        "trace_uri": names.result,
        "snapshots": [names.snapshot(i) for i, _ in outcome.snapshots],
    }


RECORD_KEY = b"nst_record"  # result.parquet metadata key holding the record as JSON
PROCESS_FIELDS = ("versions", "started_at", "finished_at")  # in the record, not in the row


def job_json(result: dict[str, Any], started: float) -> dict[str, Any]:
    return {**result, "versions": versions(), "started_at": started, "finished_at": time.time()}


def result_file(trace: pa.Table, rec: dict[str, Any]) -> bytes:
    """result.parquet: the trace as the table (readable by any Parquet reader), the record as
    JSON in its metadata (one object per job instead of three)."""
    meta = {**(trace.schema.metadata or {}), RECORD_KEY: to_json(rec)}
    buf = io.BytesIO()
    pq.write_table(trace.replace_schema_metadata(meta), buf)
    return buf.getvalue()


def read_record(data: bytes) -> dict[str, Any]:
    """The record in a result.parquet's bytes (from its footer; the trace is not decoded)."""
    meta = pq.read_metadata(pa.BufferReader(data)).metadata or {}
    if RECORD_KEY not in meta:
        raise ValueError("result.parquet without a job record")
    rec: dict[str, Any] = json.loads(meta[RECORD_KEY], object_pairs_hook=_interned)
    return rec


def _interned(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A parsed object whose keys are shared with every other record's: 100,000 rows read
    back hold each field name once instead of 100,000 times (2.4x less memory per row)."""
    return {sys.intern(k): v for k, v in pairs}


def with_record(data: bytes, rec: dict[str, Any]) -> bytes:
    """The same result.parquet (same trace) with another record (`nst score` rewrites)."""
    return result_file(pq.read_table(pa.BufferReader(data)), rec)


def row_of(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in PROCESS_FIELDS}


def marker_row(name: str, data: bytes) -> dict[str, Any]:
    """The result row a commit marker holds, in either form (ValueError: unreadable)."""
    if name == earlier_runs.MARKER:  # an earlier run's _COMMIT: the row itself, as JSON
        row: dict[str, Any] = json.loads(data, object_pairs_hook=_interned)
        return row
    try:
        return row_of(read_record(data))
    except pa.ArrowException as e:
        raise ValueError(f"unreadable {name}: {e}") from e


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, default=str, allow_nan=True).encode()


@functools.cache
def versions() -> dict[str, str]:
    """Library versions for job.json (fixed for the life of the process)."""
    out = {"python": platform.python_version()}
    for dist in ("nst-pipeline", "torch", "torchvision", "ray", "fsspec", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out
