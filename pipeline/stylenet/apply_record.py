"""An `nst apply` run's per-image row: its declared schema (the same column types in every
run), the part files that commit a batch of images, and the results table rebuilt from them."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store import layout as run_layout
from pipeline.store import storage
from pipeline.stylenet import layout

SCHEMA = pa.schema(
    [
        ("input", pa.string()),  # path under the collection root (the row's key)
        ("input_uri", pa.string()),
        ("input_fingerprint", pa.string()),
        ("output", pa.string()),  # path under --out (null when failed)
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("seconds", pa.float64()),
        ("width", pa.int64()),  # the input's size
        ("height", pa.int64()),
        ("out_width", pa.int64()),
        ("out_height", pa.int64()),
        ("bytes", pa.int64()),  # the output's size
        ("model_fingerprint", pa.string()),
        ("device", pa.string()),
        ("score_content", pa.float64()),
        ("score_style", pa.float64()),
        ("score_by", pa.string()),
        ("score_error", pa.string()),
        ("objective", pa.float64()),  # the job's own loss of the output (scored rows)
        ("objective_photo", pa.float64()),  # ... and of the unstyled photo: the zero point
        ("finished_at", pa.float64()),
    ]
)


def table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as a table of exactly SCHEMA (missing fields null, extra fields an error)."""
    rows = list(rows)
    extra = {k for r in rows for k in r} - set(SCHEMA.names)
    if extra:
        raise ValueError(f"unknown result field(s): {', '.join(sorted(extra))}")
    return pa.Table.from_pylist([{k: r.get(k) for k in SCHEMA.names} for r in rows], SCHEMA)


def to_bytes(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def _read(data: bytes) -> pa.Table:
    """A part or results table in SCHEMA; columns added since it was written are null."""
    t = pq.read_table(io.BytesIO(data))
    for f in SCHEMA:
        if f.name not in t.column_names:
            t = t.append_column(f, pa.nulls(t.num_rows, f.type))
    return t.select(SCHEMA.names).cast(SCHEMA)


def part_paths(store: storage.Store) -> list[str]:
    """Every committed part under parts/ (one listing: one LIST per 1,000 parts on S3)."""
    base = storage.join(store.root, layout.PARTS)
    try:
        found = store.fs.find(base)
    except FileNotFoundError:
        return []
    return [f"{layout.PARTS}/{p[len(base) :].lstrip('/')}" for p in found if p.endswith(".parquet")]


def read_all(store: storage.Store) -> tuple[pa.Table, list[str]]:
    """The latest row per input from results.parquet and every part (a part newer than the
    table wins), and the parts read. An unreadable file is skipped: its images are redone."""
    tables, parts = [], part_paths(store)
    for path in [run_layout.RESULTS_TABLE, *parts]:
        try:
            tables.append(_read(store.get(path)))
        except (OSError, pa.ArrowException, KeyError):
            continue
    if not tables:
        return SCHEMA.empty_table(), parts
    return latest(pa.concat_tables(tables)), parts


def latest(t: pa.Table) -> pa.Table:
    """One row per input: the one finished last."""
    if t.num_rows == 0:
        return t
    order = t.sort_by([("input", "ascending"), ("finished_at", "descending")])
    inputs = order.column("input")
    first = pc.not_equal(inputs.slice(1), inputs.slice(0, len(inputs) - 1))
    keep = pa.concat_arrays([pa.array([True]), first.combine_chunks()])
    return order.filter(keep)


def compact(store: storage.Store, listed: pa.Array | None = None) -> pa.Table:
    """Rebuild results.parquet from itself and the parts, then delete the parts it now holds
    (if that delete is lost, the same rows are read twice and the latest still wins). With
    ``listed`` (the collection as listed now) rows of inputs no longer there are dropped, so
    the summary and `nst status` count the same images; their outputs stay where they are."""
    t, parts = read_all(store)
    if listed is not None:
        t = t.filter(pc.is_in(t.column("input"), value_set=listed))
    store.put(run_layout.RESULTS_TABLE, to_bytes(t))
    if parts:
        try:
            store.fs.rm([storage.join(store.root, p) for p in parts])
        except FileNotFoundError:
            pass
    return t
