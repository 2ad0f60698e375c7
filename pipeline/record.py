"""A job's record, built in one place: the result row (results.parquet and the commit marker)
and job.json (the row plus versions and timings). Parameters appear once, flattened."""

from __future__ import annotations

import functools
import platform
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from nst_ops.vocab import Status

from . import layout
from .jobs import Job

if TYPE_CHECKING:  # keeps reading a run back free of torch
    from nst_ops.optim import Outcome


def row(job: Job, status: Status, **fields: Any) -> dict[str, Any]:
    """The job's identity, inputs and parameters, then its status and whatever else is known."""
    return {**job.to_record(), "status": status.value, "error": None, **fields}


def failed(job: Job, error: str, **fields: Any) -> dict[str, Any]:
    return row(job, Status.FAILED, **fields) | {"error": error}


def pending(job: Job) -> dict[str, Any]:
    return row(job, Status.PENDING, committed=False)


def outcome_fields(job: Job, outcome: Outcome, ext: str = "png") -> dict[str, Any]:
    """What an optimisation adds: status, losses, and the outputs' paths (relative to the run
    root, so a moved or copied run still reads back)."""
    return {
        "status": outcome.status.value,
        "error": outcome.reason,
        "iterations_run": outcome.iterations,
        "diverged_at": outcome.diverged_at,
        "converged_at": outcome.converged_at,
        **{f"final_{k}": v for k, v in outcome.final.items() if k != "iteration"},
        "image_uri": layout.job_path(job.id, layout.image_name(ext)),
        "trace_uri": layout.job_path(job.id, layout.TRACE),
        "snapshots": [layout.snapshot_path(job.id, i, ext) for i, _ in outcome.snapshots],
    }


def job_json(result: dict[str, Any], started: float) -> dict[str, Any]:
    return {**result, "versions": versions(), "started_at": started, "finished_at": time.time()}


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
