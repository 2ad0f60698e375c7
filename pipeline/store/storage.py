"""fsspec I/O for a run: whole-object writes with retries, the commit marker written last.

Every object is written whole with ``pipe`` (one PUT), never through a buffered file that would
upload a partial object on ``close()`` after an exception. Reading a run back costs one recursive
listing of ``jobs/`` (one LIST request per 1,000 keys on S3), one read of results.parquet, and
reads of only the markers written since it. Each job is two objects (its image and its
result.parquet), so 10,000 jobs are 20 LIST requests.
The layout itself lives in :mod:`pipeline.store.layout`.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline.errors import NstError
from pipeline.store import earlier_runs, input_policy, layout, record, result_schema

T = TypeVar("T")
NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


ALIASES = {"s3a": "s3", "gcs": "gs", "local": "file", "https": "http"}
OBJECT_STORES = "*"  # per-protocol key: every protocol but local files, http(s) and memory
NOT_OBJECT_STORES = ("file", "http", "memory")


def protocol_of(uri: str) -> str:
    """The canonical protocol of a URI ('file' for plain paths; gcs is gs, https is http)."""
    proto = fsspec.core.split_protocol(uri)[0] or "file"
    return ALIASES.get(proto, proto)


def is_per_protocol(options: dict[str, Any]) -> bool:
    """`{"s3": {...}, "gs": {...}}` rather than one set of options."""
    known = set(fsspec.available_protocols()) | set(ALIASES) | {OBJECT_STORES}
    return bool(options) and all(k in known and isinstance(v, dict) for k, v in options.items())


def per_protocol(options: dict[str, Any] | None, primary: str) -> dict[str, Any] | None:
    """--storage-options as the CLI passes them on: a per-protocol form as given; one set of
    options for ``primary``'s protocol only (the output's: an https input with an s3 output
    must not get the s3 endpoint), or, when ``primary`` is a local path (which takes no
    options), for the object stores its inputs are on (never http(s))."""
    if not options:
        return None
    if is_per_protocol(options):
        return {ALIASES.get(k, k): v for k, v in options.items()}
    proto = protocol_of(primary)
    return {OBJECT_STORES if proto in NOT_OBJECT_STORES else proto: options}


def options_for(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The options that apply to ``uri``: its protocol's in a per-protocol form (none when
    its protocol has none), all of a single set (as library callers give them)."""
    if not storage_options:
        return {}
    if is_per_protocol(storage_options):
        proto = protocol_of(uri)
        if proto in storage_options:
            found: dict[str, Any] = storage_options[proto]
            return found
        shared: dict[str, Any] = storage_options.get(OBJECT_STORES, {})
        return {} if proto in NOT_OBJECT_STORES else shared
    return storage_options


def filesystem(
    uri: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return url_to_fs(uri, **options_for(uri, storage_options))
    except (TypeError, ValueError) as e:
        raise NstError(f"{uri}: {_one_line(e)} (check --storage-options for its protocol)") from e
    except ImportError as e:
        raise NstError(f"{uri}: no filesystem for this protocol ({e})") from e


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


READ_BATCH = 2000  # markers read per batched call (concurrent on object stores)
DEFAULT_ATTEMPTS = 4  # tries per storage operation (transient errors only), with backoff


def with_retries(
    fn: Callable[[], T], what: str, attempts: int = DEFAULT_ATTEMPTS, base_delay: float = 0.2
) -> T:
    """Retry transient storage errors with exponential backoff and jitter. Every failure
    comes out as an OSError of one line naming ``what`` (a missing bucket, an unreachable
    endpoint, a client library's own exception), never a client library's traceback."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except NOT_TRANSIENT as e:
            if what in str(e):
                raise
            raise type(e)(f"{what}: {_one_line(e)}") from e  # the same type, with the name
        except (NstError, pa.ArrowException):  # not storage's: the caller's to judge
            raise
        except (TypeError, ValueError) as e:  # e.g. an option this store does not take
            raise OSError(f"{what}: {_one_line(e)} (check --storage-options)") from e
        except Exception as e:  # noqa: BLE001  connection errors of botocore, aiohttp, ...
            if not isinstance(e, OSError | ConnectionError | TimeoutError) and not client_error(e):
                raise
            if attempt == attempts:
                raise OSError(f"{what} failed after {attempts} attempts: {_one_line(e)}") from e
            time.sleep(base_delay * 2 ** (attempt - 1) * (1 + random.random()))
    raise AssertionError("unreachable")


def client_error(e: BaseException) -> bool:
    """An exception of a storage client library (they do not all derive from OSError)."""
    root = type(e).__module__.split(".")[0]
    return root in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google", "adlfs")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Store:
    """One output root on one filesystem."""

    def __init__(
        self,
        out: str,
        storage_options: dict[str, Any] | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
    ):
        self.fs, self.root = filesystem(out, storage_options)
        self.options = storage_options  # for reading inputs elsewhere with the same credentials
        self.attempts = attempts

    def put(self, path: str, data: bytes) -> None:
        full = join(self.root, path)
        if "file" in self.fs.protocol:  # object stores have no directories to create
            self.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
        with_retries(lambda: self.fs.pipe_file(full, data), f"writing {self.url(path)}",
                     self.attempts)  # fmt: skip

    def get(self, path: str) -> bytes:
        full = join(self.root, path)
        what = f"reading {self.url(path)}"
        return with_retries(lambda: self.fs.cat_file(full), what, self.attempts)

    def exists(self, path: str) -> bool:
        full = join(self.root, path)
        return with_retries(lambda: self.fs.exists(full), f"checking {self.url(path)}",
                            self.attempts)  # fmt: skip

    def url(self, path: str) -> str:
        return self.fs.unstrip_protocol(join(self.root, path))

    def put_json(self, path: str, obj: Any) -> None:
        self.put(path, record.to_json(obj))

    def put_table(self, path: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.put(path, buf.getvalue())

    def get_table(self, path: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.get(path)))

    def table_footer(self, path: str) -> pq.FileMetaData:
        """A Parquet file's metadata (row count, schema and its metadata) from its footer
        alone: a few ranged reads, not the whole table."""

        def read() -> pq.FileMetaData:
            with self.fs.open(join(self.root, path), "rb") as f:
                return pq.read_metadata(f)

        return with_retries(read, f"reading {self.url(path)}", self.attempts)

    def read_results(self) -> ResultsTable | None:
        """results.parquet's rows and when it was written (None: absent or unreadable)."""
        path = join(self.root, layout.RESULTS_TABLE)
        try:
            written = modified(self.fs.info(path))
            rows = result_schema.rows_of(self.get_table(layout.RESULTS_TABLE))
        except (OSError, pa.ArrowException):
            return None  # the markers say the same
        return ResultsTable(rows, written)

    def resolve(self, path: str) -> str:
        """A stored relative path as a full URL under this root (absolute ones unchanged)."""
        return self.url(path) if layout.is_relative(path) else path

    def job_files(self) -> JobFiles:
        """job id -> {file name: size} for everything under jobs/, from one recursive listing,
        with each commit marker's modification time."""
        base = join(self.root, layout.JOBS_DIR)
        out = JobFiles()
        try:
            found = with_retries(lambda: self.fs.find(base, detail=True),
                                 f"listing {self.url(layout.JOBS_DIR)}", self.attempts)  # fmt: skip
        except FileNotFoundError:
            return out
        for path, info in found.items():
            parts = layout.split_job_path(f"{layout.JOBS_DIR}/{path[len(base) :].lstrip('/')}")
            if parts:
                out.setdefault(parts[0], {})[parts[1]] = int(info.get("size") or 0)
                if parts[1] in layout.MARKERS:
                    out.marker_mtime[parts[0]] = modified(info)
        return out

    def job_record(self, job_id: str) -> dict[str, Any]:
        """A committed job's whole record (FileNotFoundError: not committed)."""
        try:
            return record.read_record(self.get(layout.job_path(job_id, layout.RESULT)))
        except FileNotFoundError:
            return earlier_runs.read_record(self.get(earlier_runs.record_path(job_id)))

    def committed(
        self, files: JobFiles | None = None, results: ResultsTable | None = None
    ) -> dict[str, dict]:
        """Result rows of every job whose commit marker exists. Rows come from results.parquet
        (``results`` if the caller has read it already) where its row is committed and the
        marker is older than the table (one read instead of one per job: 10,000 markers are
        10,000 requests on S3); other markers are read in batches."""
        files = self.job_files() if files is None else files
        markers = {k: m for k, names in files.items() if (m := layout.marker_of(names))}
        known = self._results_index(files, list(markers), results)
        rows = {k: known[k] for k in markers if k in known}
        todo = [layout.job_path(k, m) for k, m in markers.items() if k not in known]
        paths = [join(self.root, p) for p in todo]
        for i in range(0, len(paths), READ_BATCH):  # parsed batch by batch: bytes never pile up
            for path, data in self.fs.cat(paths[i : i + READ_BATCH], on_error="omit").items():
                try:
                    row = record.marker_row(path.rsplit("/", 1)[-1], data)
                except ValueError:
                    continue  # an unreadable marker means not committed
                rows[row["job_id"]] = row
        return rows

    def _results_index(
        self, files: JobFiles, marked: list[str], results: ResultsTable | None
    ) -> dict[str, dict]:
        """Committed rows of results.parquet whose marker has not changed since it was written
        (marker older than the table by a margin wider than any store's timestamp rounding).
        The table is read only when some marker is older than it."""
        if results is None:
            try:
                written = modified(self.fs.info(join(self.root, layout.RESULTS_TABLE)))
            except FileNotFoundError:
                return {}
        else:
            written = results.written
        if written is None or not marked:
            return {}
        wanted = {
            k for k in marked if (t := files.marker_mtime.get(k)) is not None and t < written - 2
        }
        if not wanted or (results is None and (results := self.read_results()) is None):
            return {}
        return {
            r["job_id"]: r
            for r in results.rows
            if r.get("job_id") in wanted and r.get("committed") and _plain(r)
        }

    def uncommit(self, job_ids: list[str], files: JobFiles) -> None:
        """Un-commit jobs in one batched delete (S3: one request per 1,000 keys); ``files`` is
        the listing that found them committed."""
        paths = [
            join(self.root, p) for j in job_ids for p in layout.uncommit_paths(j, files.get(j, {}))
        ]
        if paths:
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                pass


@dataclass
class ResultsTable:
    rows: list[dict[str, Any]]
    written: float | None  # modification time (seconds since the epoch)


class JobFiles(dict[str, dict[str, int]]):
    """One listing of jobs/: job id -> {file name: size}; ``marker_mtime``: when each job's
    commit marker was written (seconds since the epoch; None where the store does not say)."""

    def __init__(self) -> None:
        super().__init__()
        self.marker_mtime: dict[str, float | None] = {}


def modified(info: dict[str, Any]) -> float | None:
    """Modification time of a listed object, across fsspec backends (S3 LastModified, local
    mtime, GCS updated, memory created)."""
    for key in ("LastModified", "mtime", "updated", "created"):
        v = info.get(key)
        if isinstance(v, datetime):
            return v.timestamp()
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    return None


def _plain(row: dict[str, Any]) -> bool:
    """A results row as the marker would give it: inputs a list (a column that once failed to
    convert is stored as JSON text, and then the marker is read instead)."""
    return isinstance(row.get("inputs"), list | type(None))


def fingerprint(info: dict[str, Any]) -> str:
    """An ETag where the store has one (S3, GCS md5), else size and modification time."""
    for key in ("ETag", "etag", "md5Hash"):
        if info.get(key):
            return f"etag:{str(info[key]).strip(chr(34))}"
    mtime = info.get("mtime", info.get("LastModified", info.get("updated", "")))
    return f"size:{info.get('size')};mtime:{mtime}"


def fingerprint_of(uri: str, storage_options: dict | None = None) -> str | None:
    """One input's fingerprint now (None if it cannot be stat'ed or is not an allowed input:
    reading it will say why)."""
    try:
        input_policy.check_uri(uri)
        fs, path = filesystem(uri, storage_options)
        return fingerprint(fs.info(path))
    except (OSError, NstError):
        return None


def read_bytes(
    uri: str, storage_options: dict[str, Any] | None = None, attempts: int = DEFAULT_ATTEMPTS
) -> bytes:
    """Read a run's own object or an operator-given file (no input policy)."""
    fs, path = filesystem(uri, storage_options)
    return with_retries(lambda: fs.cat_file(path), f"reading {uri}", attempts)


def read_input(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    limit: int | None = None,
) -> bytes:
    """Read an input a manifest (or a user) names, under the input policy: an allowed place,
    a regular file, at most ``limit`` bytes (default: the policy's), checked on the reported
    size and again while streaming, so /dev/zero or a huge object never fills memory."""
    return read_input_and_print(uri, storage_options, attempts, limit)[0]


def read_input_and_print(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    limit: int | None = None,
) -> tuple[bytes, str | None]:
    """``read_input`` and the input's fingerprint from the same stat (a worker records what it
    read): one HEAD and one GET per input on S3, where a separate fingerprint_of made two HEADs."""
    policy = input_policy.InputPolicy.current()
    input_policy.check_uri(uri, policy)
    cap = policy.max_bytes if limit is None else limit
    options = options_for(uri, storage_options)
    if protocol_of(uri) == "http":
        options = {**options, "allow_redirects": False}
    fs, path = filesystem(uri, {protocol_of(uri): options})

    def read() -> tuple[bytes, str | None]:
        info = fs.info(path)
        size = info.get("size")
        input_policy.check_size(uri, size, cap)
        if size is not None:
            return bytes(fs.cat_file(path)), fingerprint(info)
        with fs.open(path, "rb") as f:  # size unknown (some http servers): stream, capped
            data = f.read(cap + 1)
        input_policy.check_size(uri, len(data), cap)
        return bytes(data), fingerprint(info)

    return with_retries(read, f"reading {uri}", attempts)
