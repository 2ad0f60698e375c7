"""Reading a run back: committed markers first, then results.parquet for what has none."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from nst_ops.evaluator import SCORE_FIELDS
from nst_ops.presets import FIRST_DEFAULTS
from nst_ops.vocab import Status
from pipeline.errors import NstError
from pipeline.store import layout, result_schema, storage
from pipeline.store.record import Job

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
    table = store.read_results()  # read once: the committed rows and the failures both use it
    rows = list(store.committed(files, table).values())
    for r in rows:
        r["_committed_at"] = files.marker_mtime.get(r["job_id"])  # not stored: for caches
        if layout.outputs_missing(r, files.get(r["job_id"], {})):
            r["outputs_missing"] = True
        for key in ("image_uri", "trace_uri"):
            if r.get(key):
                r[key] = store.resolve(r[key])
    total = len(rows)
    if table is not None:  # the markers are the truth: a table row whose marker is gone is stale
        known = {r["job_id"] for r in rows}
        rows += [
            r
            for r in table.rows
            if r["job_id"] not in known
            and r.get("status") != Status.PENDING
            and not r.get("committed")
        ]
    total = max(total, _job_count(store))
    return rows, max(total, len(rows))


def _job_count(store: storage.Store) -> int:
    """jobs.parquet's row count (0 when absent or unreadable: it is derived, `nst run`
    writes it again from the manifest)."""
    try:
        return store.table_footer(JOBS).num_rows
    except (FileNotFoundError, pa.ArrowException):
        return 0


EVALUATOR_KEY = b"nst_evaluator"
DEFAULTS_KEY = b"nst_defaults"


def put_results(
    store: storage.Store,
    table: pa.Table,
    evaluator: dict[str, Any] | None,
    defaults: int | None = None,
) -> None:
    """results.parquet, with the run's evaluator in its metadata (what the scores mean) and
    its defaults edition (so either derived table can tell it)."""
    meta = dict(table.schema.metadata or {})
    if evaluator is not None:
        meta[EVALUATOR_KEY] = json.dumps(evaluator).encode()
    if defaults is not None:
        meta[DEFAULTS_KEY] = str(defaults).encode()
    store.put_table(RESULTS, table.replace_schema_metadata(meta))


def put_jobs(store: storage.Store, jobs: Sequence[Job], defaults: int) -> None:
    """jobs.parquet, with the defaults edition its jobs were resolved under in its metadata
    (so the run resolves its manifest the same way next time)."""
    table = normalise([j.to_record() for j in jobs])
    meta = {**(table.schema.metadata or {}), DEFAULTS_KEY: str(defaults).encode()}
    store.put_table(JOBS, table.replace_schema_metadata(meta))


def defaults_of(store: storage.Store) -> int | None:
    """The defaults edition of the run in ``store``: None where there is no run yet, the first
    edition for runs recorded before editions existed."""
    try:
        meta = store.table_footer(JOBS).metadata or {}
    except FileNotFoundError:
        return None
    except pa.ArrowException as e:  # derived from the manifest: say how to get it back
        recorded = _results_meta(store).get(DEFAULTS_KEY)
        if recorded is not None:
            return int(recorded)
        raise NstError(
            f"{store.url(JOBS)} is unreadable ({e}); it is derived from the manifest: give "
            "--defaults with the edition this run started with (1 for runs before November "
            "2026, 2 for runs before December 2026, else 3) and `nst run` writes it again"
        ) from None
    return int(meta.get(DEFAULTS_KEY, str(FIRST_DEFAULTS).encode()))


def _results_meta(store: storage.Store) -> dict[bytes, bytes]:
    try:
        return dict(store.table_footer(RESULTS).metadata or {})
    except (FileNotFoundError, pa.ArrowException):
        return {}


def evaluator_of(store: storage.Store) -> dict[str, Any] | None:
    """The evaluator recorded in results.parquet (None: none recorded)."""
    meta = _results_meta(store)  # the footer, not the whole table; {} if absent or unreadable
    return json.loads(meta[EVALUATOR_KEY]) if EVALUATOR_KEY in meta else None


def normalise(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows with differing keys (tags, per-layer losses) -> one table with the union of columns,
    each declared column in its declared type (pipeline.store.result_schema), so a column has
    the same type in every run.

    Open columns (tags) take their values' type: where some rows hold a list (a tag shared by
    several manifest rows), single values become one-element lists; anything else that still
    will not convert (e.g. a tag that was a number in an older run and text now) is stored as
    JSON text, so a finished run never fails at its last step."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    columns = {}
    for k in keys:
        values = [r.get(k) for r in rows]
        declared = result_schema.typed_array(k, values)
        columns[k] = declared if declared is not None else _inferred(values)
    return pa.table(columns)


def _inferred(values: list[Any]) -> pa.Array:
    if any(isinstance(v, list) for v in values):
        values = [v if v is None or isinstance(v, list) else [v] for v in values]
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else json.dumps(v) for v in values])


def merge_scores(
    store: storage.Store, scored: list[dict[str, Any]], evaluator: dict[str, Any]
) -> None:
    """results.parquet with the new scores of ``scored`` (other rows as they were)."""
    new = {r["job_id"]: {k: r.get(k) for k in SCORE_FIELDS} for r in scored}
    try:
        rows = result_schema.rows_of(store.get_table(RESULTS))
    except (FileNotFoundError, pa.ArrowException):  # absent or unreadable: rebuilt from scored
        rows = []
    known = {r["job_id"] for r in rows}
    rows = [{**r, **new.get(r["job_id"], {})} for r in rows]
    rows += [{**r, "committed": True} for r in scored if r["job_id"] not in known]
    recorded = _results_meta(store).get(DEFAULTS_KEY)
    put_results(store, normalise(rows), evaluator, int(recorded) if recorded else None)
