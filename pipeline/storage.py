"""Output layout and fsspec I/O: whole-object writes with retries, commit marker written last.

Layout under ``OUT`` (any fsspec URL)::

    jobs.parquet                 the expanded jobs table
    results.parquet              one row per job (parameters, status, losses, URIs)
    jobs/<job_id>/image.png      the result (best image; for diverged jobs the best before it)
    jobs/<job_id>/trace.parquet  the loss trace
    jobs/<job_id>/job.json       parameters, status, timings, device, versions, error
    jobs/<job_id>/_COMMIT        the result row as JSON, written last: a job is done iff it exists

Every object is written whole with ``pipe`` (one PUT), never through a buffered file that would
upload a partial object on ``close()`` after an exception.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

T = TypeVar("T")
MARKER = "_COMMIT"
NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def filesystem(
    uri: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri, **(storage_options or {}))


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def job_dir(out: str, job_id: str) -> str:
    if not job_id.isalnum():  # ids are hex digests; anything else never becomes a path
        raise ValueError(f"invalid job id {job_id!r}")
    return join(out, "jobs", job_id)


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, base_delay: float = 0.2) -> T:
    """Retry transient storage errors with exponential backoff and jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except NOT_TRANSIENT:
            raise
        except (OSError, ConnectionError, TimeoutError) as e:
            if attempt == attempts:
                raise OSError(f"{what} failed after {attempts} attempts: {e}") from e
            time.sleep(base_delay * 2 ** (attempt - 1) * (1 + random.random()))
    raise AssertionError("unreachable")


class Store:
    """One output root on one filesystem."""

    def __init__(self, out: str, storage_options: dict | None = None, attempts: int = 4):
        self.fs, self.root = filesystem(out, storage_options)
        self.attempts = attempts

    def put(self, path: str, data: bytes) -> None:
        full = join(self.root, path)
        if "file" in self.fs.protocol:  # object stores have no directories to create
            self.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
        with_retries(lambda: self.fs.pipe_file(full, data), f"writing {path}", self.attempts)

    def get(self, path: str) -> bytes:
        full = join(self.root, path)
        return with_retries(lambda: self.fs.cat_file(full), f"reading {path}", self.attempts)

    def exists(self, path: str) -> bool:
        return self.fs.exists(join(self.root, path))

    def url(self, path: str) -> str:
        return self.fs.unstrip_protocol(join(self.root, path))

    def put_json(self, path: str, obj: Any) -> None:
        self.put(path, json.dumps(obj, indent=1, default=str, allow_nan=True).encode())

    def put_table(self, path: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.put(path, buf.getvalue())

    def get_table(self, path: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get(path)))

    def committed(self) -> dict[str, dict]:
        """Result rows of every job whose commit marker exists (one listing, one batched read)."""
        pattern = join(self.root, "jobs", "*", MARKER)
        paths = self.fs.glob(pattern)
        if not paths:
            return {}
        blobs = self.fs.cat(paths, on_error="omit")
        rows = {}
        for data in blobs.values():
            try:
                row = json.loads(data)
            except ValueError:
                continue  # an unreadable marker means not committed
            rows[row["job_id"]] = row
        return rows

    def delete_marker(self, job_id: str) -> None:
        path = join(job_dir(self.root, job_id), MARKER)
        if self.fs.exists(path):
            self.fs.rm(path)


def read_bytes(uri: str, storage_options: dict | None = None, attempts: int = 4) -> bytes:
    fs, path = filesystem(uri, storage_options)
    return with_retries(lambda: fs.cat_file(path), f"reading {uri}", attempts)
