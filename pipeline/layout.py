"""The output layout of a run: every file name and path rule, relative to the run root.

Rows and records store these relative paths, never absolute URLs, so a run can be moved, copied
between buckets or downloaded and still read back (readers resolve them against the root).

    jobs.parquet                 the expanded jobs table
    results.parquet              one row per job (parameters, status, losses, relative paths)
    report.html                  `nst report`
    _LEASE                       the live run's lease (owner, host, heartbeat)
    report_cache/thumbs/         thumbnails `nst report` made (reused while a job is unchanged)
    jobs/<job_id>/image.png      the result (best image; for diverged jobs the best before it);
                                 image.jpg / .webp / .tiff with another --image-format
    jobs/<job_id>/trace.parquet  the loss trace
    jobs/<job_id>/job.json       the job's record: parameters, status, timings, inputs, versions
    jobs/<job_id>/snapshots/<iteration>.png   with save_every: the image every N iterations
    jobs/<job_id>/_COMMIT        the result row as JSON, written last: a job is done iff it exists
"""

from __future__ import annotations

from typing import Any

JOBS_TABLE = "jobs.parquet"
RESULTS_TABLE = "results.parquet"
REPORT = "report.html"
LEASE = "_LEASE"
JOBS_DIR = "jobs"
TRACE = "trace.parquet"
RECORD = "job.json"
MARKER = "_COMMIT"
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


def split_job_path(rel: str) -> tuple[str, str] | None:
    """'jobs/<id>/<name>' -> (id, name); anything else (e.g. a nested file) -> None."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != JOBS_DIR:
        return None
    return parts[1], parts[2]


def outputs_missing(row: dict[str, Any], names: dict[str, int]) -> bool:
    """A committed job that optimised (its row names an image) whose image or trace is gone or
    empty; ``names`` maps the job folder's file names to sizes."""
    image = row.get("image_uri")
    if not image:
        return False
    wanted = (str(image).rsplit("/", 1)[-1], TRACE)  # the image in whatever format it was saved
    return any(names.get(n, 0) == 0 for n in wanted)


def is_relative(path: str) -> bool:
    return "://" not in path and not path.startswith("/")
