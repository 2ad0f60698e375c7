"""The output layout of a run: every file name and path rule, relative to the run root.

Rows and records store these relative paths, never absolute URLs, so a run can be moved, copied
between buckets or downloaded and still read back (readers resolve them against the root).

    jobs.parquet                 the expanded jobs table
    results.parquet              one row per job (parameters, status, losses, relative paths)
    report.html                  `nst report`
    _LEASE                       the live run's lease (owner, host, heartbeat)
    _KIND                        {"kind": "run"}: what the root holds (pipeline.store.root_kind)
    report_cache/thumbs/         thumbnails `nst report` made (reused while a job is unchanged)
    jobs/<job_id>/image.png      the result (best image; for diverged jobs the best before it);
                                 image.jpg / .webp / .tiff with another --image-format
    jobs/<job_id>/snapshots/<iteration>.png   with save_every: the image every N iterations
    jobs/<job_id>/result.parquet the loss trace (one row per iteration) with the job's record
                                 (parameters, status, timings, inputs, scores, versions) as JSON
                                 in its metadata; written last: a job is done iff it exists

Two objects per job, so reading a run back lists 2 keys per job (S3: one LIST per 500 jobs).
Runs written before November 2026 have four per job (image, trace.parquet, job.json, and the
row as JSON in _COMMIT, written last); they are read as they are, and a job of theirs that is
run again is written in the current form (its old files deleted when it is un-committed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JOBS_TABLE = "jobs.parquet"
RESULTS_TABLE = "results.parquet"
REPORT = "report.html"
LEASE = "_LEASE"
JOBS_DIR = "jobs"
RESULT = "result.parquet"  # the trace + the job's record; the commit marker
V1_TRACE, V1_RECORD, V1_MARKER = "trace.parquet", "job.json", "_COMMIT"  # earlier runs
MARKERS = (RESULT, V1_MARKER)  # a job folder holding either is committed
SNAPSHOTS = "snapshots"
THUMBS = "report_cache/thumbs"  # `nst report`'s thumbnails, <job_id>-<commit time>.jpg


def job_dir(job_id: str) -> str:
    if not job_id.isalnum():  # ids are hex digests; anything else never becomes a path
        raise ValueError(f"invalid job id {job_id!r}")
    return f"{JOBS_DIR}/{job_id}"


def job_path(job_id: str, name: str) -> str:
    return f"{job_dir(job_id)}/{name}"


def image_name(ext: str = "png") -> str:
    """The result's file name: image.png, or image.<ext> for another output format."""
    return f"image.{ext}"


IMAGE = image_name()  # the PNG default


def snapshot_path(job_id: str, iteration: int, ext: str = "png") -> str:
    return f"{job_dir(job_id)}/{SNAPSHOTS}/{iteration:06d}.{ext}"


@dataclass(frozen=True)
class OutputNames:
    """Where one job's files go, relative to a store's root: a run's job folder, or, for
    `nst transfer`, beside the image the user named. The task writes through these, so the
    two cannot drift apart."""

    image: str
    result: str  # the trace + the record; written last
    snapshot: Callable[[int], str]  # iteration -> path


def job_outputs(job_id: str, ext: str = "png") -> OutputNames:
    return OutputNames(
        job_path(job_id, image_name(ext)),
        job_path(job_id, RESULT),
        lambda i: snapshot_path(job_id, i, ext),
    )


def beside(image: str) -> OutputNames:
    """`nst transfer`'s files: out.png, out.trace.parquet, out.000100.png (save_every); the
    image's name has an extension (images.format_of refused it otherwise)."""
    stem, _, ext = image.rpartition(".")
    return OutputNames(image, f"{stem}.trace.parquet", lambda i: f"{stem}.{i:06d}.{ext}")


def split_job_path(rel: str) -> tuple[str, str] | None:
    """'jobs/<id>/<name>' -> (id, name), 'jobs/<id>/snapshots/<n>' -> (id, 'snapshots/<n>');
    anything else -> None."""
    parts = rel.split("/")
    if len(parts) == 4 and parts[0] == JOBS_DIR and parts[2] == SNAPSHOTS:
        return parts[1], f"{SNAPSHOTS}/{parts[3]}"
    if len(parts) != 3 or parts[0] != JOBS_DIR:
        return None
    return parts[1], parts[2]


def marker_of(names: dict[str, int] | set[str]) -> str | None:
    """The commit marker a job folder holds (the current form first), if any."""
    return next((m for m in MARKERS if m in names), None)


def uncommit_paths(job_id: str, names: dict[str, int] | set[str]) -> list[str]:
    """What to delete to un-commit a job: its marker, an earlier run's record and trace, and
    its outputs (image, snapshots): if the redo fails, nothing of the old inputs' result may
    stay beside the failed record for anything that syncs jobs/*/image.* to ship."""
    records = [n for n in (RESULT, V1_MARKER, V1_RECORD, V1_TRACE) if n in names]
    outputs = [n for n in names if n.startswith(("image.", f"{SNAPSHOTS}/"))]
    return [job_path(job_id, n) for n in [*records, *outputs]]


def outputs_missing(row: dict[str, Any], names: dict[str, int]) -> bool:
    """A committed job that optimised (its row names an image) whose image or trace is gone or
    empty; ``names`` maps the job folder's file names to sizes."""
    image = row.get("image_uri")
    if not image:
        return False
    wanted = [str(u).rsplit("/", 1)[-1] for u in (image, row.get("trace_uri")) if u]
    return any(names.get(n, 0) == 0 for n in wanted)


def is_relative(path: str) -> bool:
    return "://" not in path and not path.startswith("/")
