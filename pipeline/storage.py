"""fsspec I/O for a run: whole-object writes with retries, the commit marker written last.

Every object is written whole with ``pipe`` (one PUT), never through a buffered file that would
upload a partial object on ``close()`` after an exception. Reading a run back costs one recursive
listing of ``jobs/`` (one LIST request per 1,000 keys on S3) plus one batched read of the markers.
The layout itself lives in :mod:`pipeline.layout`.
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

from . import layout

T = TypeVar("T")
MARKER = layout.MARKER
NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def filesystem(
    uri: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri, **(storage_options or {}))


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


DEFAULT_ATTEMPTS = 4  # tries per storage operation (transient errors only), with backoff


def with_retries(
    fn: Callable[[], T], what: str, attempts: int = DEFAULT_ATTEMPTS, base_delay: float = 0.2
) -> T:
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

    def __init__(
        self,
        out: str,
        storage_options: dict[str, Any] | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
    ):
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

    def resolve(self, path: str) -> str:
        """A stored relative path as a full URL under this root (absolute ones unchanged)."""
        return self.url(path) if layout.is_relative(path) else path

    def job_files(self) -> dict[str, dict[str, int]]:
        """job id -> {file name: size} for everything under jobs/, from one recursive listing."""
        base = join(self.root, layout.JOBS_DIR)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out: dict[str, dict[str, int]] = {}
        for path, info in found.items():
            parts = layout.split_job_path(f"{layout.JOBS_DIR}/{path[len(base) :].lstrip('/')}")
            if parts:
                out.setdefault(parts[0], {})[parts[1]] = int(info.get("size") or 0)
        return out

    def committed(self, files: dict[str, dict[str, int]] | None = None) -> dict[str, dict]:
        """Result rows of every job whose commit marker exists (one listing, one batched read)."""
        files = self.job_files() if files is None else files
        paths = [
            join(self.root, layout.job_path(job_id, MARKER))
            for job_id, names in files.items()
            if MARKER in names
        ]
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

    def delete_markers(self, job_ids: list[str]) -> None:
        """Un-commit jobs in one batched delete (S3: one request per 1,000 keys)."""
        paths = [join(self.root, layout.job_path(j, MARKER)) for j in job_ids]
        if paths:
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                pass


def fingerprint(info: dict[str, Any]) -> str:
    """An ETag where the store has one (S3, GCS md5), else size and modification time."""
    for key in ("ETag", "etag", "md5Hash"):
        if info.get(key):
            return f"etag:{str(info[key]).strip(chr(34))}"
    mtime = info.get("mtime", info.get("LastModified", info.get("updated", "")))
    return f"size:{info.get('size')};mtime:{mtime}"


def fingerprint_of(uri: str, storage_options: dict | None = None) -> str | None:
    """One input's fingerprint now (None if it cannot be stat'ed: reading it will say why)."""
    fs, path = filesystem(uri, storage_options)
    try:
        return fingerprint(fs.info(path))
    except OSError:
        return None


def read_bytes(
    uri: str, storage_options: dict[str, Any] | None = None, attempts: int = DEFAULT_ATTEMPTS
) -> bytes:
    fs, path = filesystem(uri, storage_options)
    return with_retries(lambda: fs.cat_file(path), f"reading {uri}", attempts)
