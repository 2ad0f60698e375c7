"""The manifest: a Parquet table of content/style pairs whose other columns are job parameters.

Parameter columns are the fields of :class:`nst_ops.spec.JobSpec`. A scalar parameter given as a
list is a grid axis; a list parameter (layers, layer weights, blend) is a grid axis when given as
a list of lists. ``job_name`` and ``tag_*`` columns are carried through to the results.
"""

from __future__ import annotations

import difflib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nst_ops.param import field_types
from nst_ops.spec import INITS, MODEL_INIT, JobSpec
from nst_ops.vocab import RowMode
from pipeline.errors import ManifestError
from pipeline.store import storage

MODES = RowMode.values()
URI_COLUMNS = ("content_uri", "style_uri")
REQUIRED = URI_COLUMNS
META_COLUMNS = ("mode", "job_name", "preset")
TAG_PREFIX = "tag_"


@dataclass(frozen=True)
class ParamType:
    """What a JobSpec field holds: its scalar kind and whether the value itself is a list."""

    kind: type
    is_seq: bool


def _param_types() -> dict[str, ParamType]:
    return {
        name: ParamType(t.kinds[0], t.is_seq)
        for name, t in field_types(JobSpec).items()
        if name != "mode"
    }


PARAMS: dict[str, ParamType] = _param_types()
KNOWN_COLUMNS = (*URI_COLUMNS, *META_COLUMNS, *PARAMS)


def _arrow_ok(kind: type, t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    if kind is bool:
        return pa.types.is_boolean(t)
    if kind is int:
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if kind is float:
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _list_depth(t: pa.DataType) -> tuple[int, pa.DataType]:
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t, depth = t.value_type, depth + 1
    return depth, t


def check_schema(schema: pa.Schema) -> None:
    """Column-level checks: required, unknown (with did-you-mean) and types."""
    names = schema.names
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ManifestError(f"manifest is missing required column(s): {', '.join(missing)}")
    for name in names:
        if name in KNOWN_COLUMNS or name.startswith(TAG_PREFIX):
            continue
        close = difflib.get_close_matches(name, KNOWN_COLUMNS, n=1)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else f" (tag columns start with {TAG_PREFIX!r})"
        )
        raise ManifestError(f"unknown column {name!r}{hint}")
    for name in names:
        t = schema.field(name).type
        depth, leaf = _list_depth(t)
        if name in ("content_uri", *META_COLUMNS):
            ok, want = depth == 0 and _arrow_ok(str, leaf), "string"
        elif name == "style_uri":
            ok, want = depth <= 1 and _arrow_ok(str, leaf), "string or list of strings"
        elif name in PARAMS:
            p = PARAMS[name]
            kind = p.kind.__name__
            ok = _arrow_ok(p.kind, leaf) and depth <= (2 if p.is_seq else 1)
            if name == "amp":  # true/false, or the text "auto"
                ok = ok or (_arrow_ok(str, leaf) and depth <= 1)
            want = (
                f"list of {kind} (or a list of such lists for a grid)"
                if p.is_seq
                else f"{kind} (or a list of {kind} for a grid)"
            )
        else:
            continue
        if not ok:
            raise ManifestError(f"column {name!r} has type {t}, expected {want}")


TEXT_FORMATS = (".csv", ".jsonl", ".ndjson")


def read_manifest(uri: str, storage_options: dict | None = None) -> pa.Table:
    """Parquet, or CSV / JSON lines by suffix (same columns, same checks)."""
    try:
        fs, path = storage.filesystem(uri, storage_options)
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {uri}") from None
    except OSError as e:
        raise ManifestError(f"manifest {uri} could not be read: {e}") from None
    suffix = os.path.splitext(uri.lower())[1]
    try:
        if suffix == ".csv":
            table = _from_rows(_csv_rows(data))
        elif suffix in (".jsonl", ".ndjson"):
            table = _from_rows([json.loads(line) for line in data.splitlines() if line.strip()])
        else:
            table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OSError) as e:
        kind = {".csv": "CSV", ".jsonl": "JSON lines", ".ndjson": "JSON lines"}.get(suffix)
        hint = (
            ""
            if kind
            else "; manifests are Parquet, or CSV / JSON lines named .csv / .jsonl (see README)"
        )
        msg = f"manifest {uri} is not a readable {kind or 'Parquet'} file: {e}{hint}"
        raise ManifestError(msg) from None
    check_schema(table.schema)
    return resolve_paths(table, uri)


def _csv_rows(data: bytes) -> list[dict[str, Any]]:
    """CSV cells: JSON arrays ('[1e6, 1e7]') or 'a|b' are lists (grid axes); for list
    parameters 'relu1_1,relu2_1|relu1_1' is two layer lists."""
    opts = pacsv.ConvertOptions(strings_can_be_null=True)
    rows = pacsv.read_csv(io.BytesIO(data), convert_options=opts).to_pylist()
    return [{k: _csv_cell(k, v) for k, v in r.items()} for r in rows]


def _csv_cell(name: str, v: Any) -> Any:
    if not isinstance(v, str):
        return v
    text = v.strip()
    if text.startswith("["):
        return json.loads(text)
    p = PARAMS.get(name)
    if p is None:
        return [s.strip() for s in text.split("|")] if "|" in text and name == "style_uri" else v
    if p.is_seq:
        parts = text.split("|")
        return [[x.strip() for x in part.split(",") if x.strip()] for part in parts]
    values = [_typed(p.kind, x.strip()) for x in text.split("|")]
    return values if len(values) > 1 else values[0]


def _typed(kind: type, text: str) -> Any:
    if kind in (int, float):
        number = float(text)
        return int(number) if kind is int and number == int(number) else number
    if kind is bool:
        return {"true": True, "false": False}.get(text.lower(), text)
    return text


def _depth(v: Any) -> int:
    return 1 + _depth(v[0]) if isinstance(v, list) and v else 0


def _from_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """One type per column: where some row gives a list (a grid axis), the others' single values
    become one-element lists, as a Parquet manifest would spell them."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for k in keys:
        p = PARAMS.get(k)
        depth = 2 if p is not None and p.is_seq else 1
        if p is not None and any(_depth(r.get(k)) >= depth for r in rows):
            for r in rows:
                v = r.get(k)
                if v is not None and _depth(v) < depth:
                    r[k] = [v]
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def _is_relative_path(value: str) -> bool:
    special = value == "imagenet" or value.startswith("random:")
    return not special and "://" not in value and not os.path.isabs(value)


PATH_COLUMNS = ("content_uri", "style_uri", "weights", "init")  # values that may be files


def _path_value(v: Any, fn: Callable[[str], str]) -> Any:
    """``fn`` applied to a relative local path (in a list, or after init's model:)."""
    if isinstance(v, str) and v in INITS:  # a named start (content, noise...), not a file
        return v
    if isinstance(v, list):
        return [_path_value(x, fn) for x in v]
    if isinstance(v, str) and v.startswith(MODEL_INIT):  # init=model:<path>: the path moves
        return MODEL_INIT + _path_value(v[len(MODEL_INIT) :], fn)
    return fn(v) if isinstance(v, str) and _is_relative_path(v) else v


def _map_paths(table: pa.Table, fn: Callable[[str], str]) -> pa.Table:
    for name in PATH_COLUMNS:
        if name not in table.column_names:
            continue
        col = table.column(name)
        values = [_path_value(v, fn) for v in col.to_pylist()]
        table = table.set_column(table.column_names.index(name), name, pa.array(values, col.type))
    return table


def absolute_params(params: dict[str, Any]) -> dict[str, Any]:
    """--set values that are relative local paths (weights, init) made absolute: relative to
    the folder the command was typed in, before they reach a Ray worker (Ray Train's run in
    Ray's session folder)."""
    return {
        k: _path_value(v, os.path.abspath) if k in PATH_COLUMNS else v for k, v in params.items()
    }


def resolve_paths(table: pa.Table, manifest_uri: str) -> pa.Table:
    """Relative local paths in a local manifest are relative to the manifest's folder."""
    if "://" in manifest_uri and not manifest_uri.startswith("file://"):
        return table
    base = os.path.dirname(os.path.abspath(manifest_uri.removeprefix("file://")))
    return _map_paths(table, lambda v: os.path.normpath(os.path.join(base, v)))


def rebase_paths(table: pa.Table, manifest_uri: str) -> pa.Table:
    """Relative paths given on the command line (relative to the cwd) -> relative to the manifest,
    so a manifest and its inputs can move together."""
    if "://" in manifest_uri and not manifest_uri.startswith("file://"):
        return _map_paths(table, os.path.abspath)
    base = os.path.dirname(os.path.abspath(manifest_uri.removeprefix("file://")))
    return _map_paths(table, lambda v: os.path.relpath(os.path.abspath(v), base))


def write_manifest(table: pa.Table, uri: str, storage_options: dict | None = None) -> None:
    check_schema(table.schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    fs, path = storage.filesystem(uri, storage_options)
    if "file" not in fs.protocol:
        fs.pipe_file(path, buf.getvalue())  # one PUT: an object store replaces it whole
        return
    fs.makedirs(fs._parent(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fs.pipe_file(tmp, buf.getvalue())
    os.replace(tmp, path)  # atomic: readers see the old manifest or the new one, never half


# an animated GIF is read as its first frame
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def list_images(pattern: str, storage_options: dict | None = None) -> list[str]:
    """A folder (its images), a glob, or a single file -> sorted URIs (local paths stay plain)."""
    fs, path = storage.filesystem(pattern, storage_options)
    if fs.isdir(path):
        found = [p for p in fs.ls(path, detail=False) if p.lower().endswith(IMAGE_SUFFIXES)]
    elif any(ch in path for ch in "*?["):
        found = fs.glob(path)
    else:
        found = [path] if fs.exists(path) else []
    if "file" not in fs.protocol:
        return sorted(fs.unstrip_protocol(p) for p in found)
    # keep the user's form: a relative pattern gives relative paths (rebased onto the manifest)
    return sorted(p if os.path.isabs(pattern) else os.path.relpath(p) for p in found)


def build_manifest(
    contents: list[str],
    styles: list[str],
    mode: str,
    params: dict,
    blend: bool = False,
    preset: str | None = None,
) -> pa.Table:
    """Every content x style pair (or each style/content alone for reconstructions) as a row,
    with the same parameter (grid) columns on each row."""
    if mode not in MODES:
        raise ManifestError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    row_mode = RowMode(mode)
    style_values: list[Any] = [styles] if blend else list(styles)
    pairs: list[tuple[str | None, Any]]
    if not row_mode.needs_style:
        pairs = [(c, None) for c in contents]
    elif not row_mode.needs_content:
        pairs = [(None, s) for s in style_values]
    else:
        pairs = [(c, s) for c in contents for s in style_values]
    if not pairs:
        raise ManifestError("no inputs: give content and/or style images that exist")
    meta = {"mode": mode, **({"preset": preset} if preset else {})}
    rows = [{"content_uri": c, "style_uri": s, **meta, **params} for c, s in pairs]
    table = pa.Table.from_pylist(rows)
    check_schema(table.schema)
    return table
