"""The declared schema of a result row: one type per column in results.parquet, in every run.

A row is the job (identity, inputs, every JobSpec parameter), then what running it produced
(status, losses, outputs, where it ran, scores). Only families stay open: ``final_<term>`` and
``final_style_<layer>`` (float64, one per loss term and layer) and the manifest's ``tag_*``
columns (their type comes from the values). Before the schema, Parquet inferred each column's
type per run, so one column could be null-typed in one run, bool in another and JSON text in a
third; `conform` reads such earlier tables back in the declared types.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, TypedDict

import pyarrow as pa

from nst_ops.param import FieldType, field_types
from nst_ops.spec import JobSpec

STR, INT, FLOAT, BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()


class InputPrint(TypedDict):
    uri: str
    fingerprint: str | None


class JobColumns(TypedDict, total=False):
    """Who the job is: its id, manifest row, name and inputs (then every JobSpec field)."""

    job_id: str
    row: int
    job_name: str | None
    content_uri: str | None
    style_uris: list[str]
    sweep_of: str | None
    preset: str | None


class OutcomeColumns(TypedDict, total=False):
    """What running it produced, where it ran, and its scores."""

    status: str
    error: str | None
    traceback: str | None
    committed: bool
    device: str
    host: str
    ray_gpu_ids: str
    ray_node_id: str
    inputs: list[InputPrint]
    batch_size: int
    amp_used: bool
    iterations_run: int
    diverged_at: int | None
    restarts_used: int
    restarted_at: list[int]
    converged_at: int | None
    image_uri: str
    trace_uri: str
    snapshots: list[str]
    seconds: float
    score_content: float | None
    score_style: float | None
    score_by: str | None
    score_error: str | None
    outputs_missing: bool


class ResultRow(JobColumns, OutcomeColumns, total=False):
    """A result row as the code sees it: these columns typed, then every JobSpec field by its
    own type, the final_<term> / final_style_<layer> losses and the manifest's tag_* columns."""


FAMILIES: dict[str, pa.DataType] = {"final_": FLOAT}  # final_<term>, final_style_<layer>

_SCALARS: dict[Any, pa.DataType] = {str: STR, int: INT, float: FLOAT, bool: BOOL}


def _arrow_type(hint: Any) -> pa.DataType:
    """A declared Python type in Arrow: optional values are nullable, tuples and lists are
    lists, TypedDicts structs, and a bool-or-word (amp: true, false or auto) is text."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _arrow_type(args[0]) if len(args) == 1 else STR
    if typing.get_origin(hint) in (tuple, list):
        return pa.list_(_arrow_type(args[0]))
    if typing.is_typeddict(hint):
        return pa.struct([(k, _arrow_type(t)) for k, t in typing.get_type_hints(hint).items()])
    return _SCALARS[hint]


def _columns(declared: type) -> dict[str, pa.DataType]:
    return {k: _arrow_type(t) for k, t in typing.get_type_hints(declared).items()}


def _param_column(t: FieldType) -> pa.DataType:
    """A parameter's column: text where it takes a bool or a word (amp), lists for lists."""
    scalar = _SCALARS[t.kinds[0]] if len(t.kinds) == 1 else STR
    return pa.list_(scalar) if t.is_seq else scalar


_PARAM_TYPES = field_types(JobSpec)
# Parameters stored as text that hold a bool or a word (amp): read back as the bool.
_BOOL_WORDS = tuple(n for n, t in _PARAM_TYPES.items() if set(t.kinds) == {bool, str})


DECLARED: dict[str, pa.DataType] = {
    **_columns(JobColumns),
    **{name: _param_column(t) for name, t in _PARAM_TYPES.items()},
    **_columns(OutcomeColumns),
}
SCHEMA = pa.schema(list(DECLARED.items()))


def column_type(name: str) -> pa.DataType | None:
    """The declared type of a column (None: a tag or other open column, typed by its values)."""
    if name in DECLARED:
        return DECLARED[name]
    return next((t for prefix, t in FAMILIES.items() if name.startswith(prefix)), None)


def _as_text(value: Any) -> str | None:
    """A value of a text column: bools as JSON's true/false (amp), text as is."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _unquoted(value: str | None) -> str | None:
    """Text, where the old JSON fallback stored it "quoted" (amp: "auto" beside true)."""
    if value is None or len(value) < 2 or not value[0] == value[-1] == '"':
        return value
    text: str = json.loads(value)
    return text


def typed_array(name: str, values: list[Any]) -> pa.Array | None:
    """The column in its declared type (None: not declared, or values that do not fit)."""
    kind = column_type(name)
    if kind is None:
        return None
    if kind == STR:
        values = [_as_text(v) for v in values]
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def conform(table: pa.Table) -> pa.Table:
    """An earlier run's results table in the declared types: null-typed columns typed, JSON
    text (the old fallback for mixed values) decoded, bools of text columns as true/false."""
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        kind = column_type(name)
        if name in _BOOL_WORDS and col.type == STR:  # the old JSON fallback: "auto" beside true
            columns[name] = pa.array([_unquoted(v) for v in col.to_pylist()], STR)
            continue
        if kind is None or col.type == kind:
            columns[name] = col
            continue
        values = col.to_pylist()
        if pa.types.is_string(col.type) and kind != STR:
            try:  # the old JSON fallback for mixed values
                values = [None if v is None else json.loads(v) for v in values]
            except ValueError:  # not JSON text: kept as it was, the run still reads
                columns[name] = col
                continue
        array = typed_array(name, values)
        columns[name] = col if array is None else array
    return pa.table(columns, metadata=table.schema.metadata)


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """A results table's rows with the values a JobSpec takes (amp true/false as bools again),
    whatever version wrote the table."""
    rows = conform(table).to_pylist()
    for name in _BOOL_WORDS:
        for r in rows:
            if r.get(name) in ("true", "false"):
                r[name] = r[name] == "true"
    return rows
