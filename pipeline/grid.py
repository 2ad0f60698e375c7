"""Manifest rows -> jobs: the Cartesian product of each row's grid axes, validated per row."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa

from nst_ops.spec import JobSpec, SpecError
from nst_ops.transfer import sweep_layer_sets

from .errors import ManifestError
from .jobs import Job, job_id
from .manifest import MODES, PARAMS, TAG_PREFIX

DEFAULT_MAX_JOBS = 100_000


def _is_axis(name: str, value: Any) -> bool:
    if not isinstance(value, list):
        return False
    if PARAMS[name].is_seq:
        return any(isinstance(v, list) for v in value)
    return True


def _coerce(name: str, value: Any, where: str) -> Any:
    """Arrow gives floats for int columns written by pandas; accept only integral ones."""
    p = PARAMS[name]
    if p.kind is int and isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ManifestError(f"{where}: {name} must be an integer, got {value!r}")
        return int(value)
    if p.is_seq and isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if p.is_seq and isinstance(value, list):
        return tuple(_coerce_scalar(p.kind, v) for v in value)
    return _coerce_scalar(p.kind, value)


def _coerce_scalar(kind: type, v: Any) -> Any:
    """Ints given for float parameters become floats (so 1 and 1.0 give one job id)."""
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def row_axes(row: dict[str, Any]) -> dict[str, list]:
    """The grid axes of one row (parameter -> its values)."""
    return {k: v for k, v in row.items() if k in PARAMS and v is not None and _is_axis(k, v)}


def expand_row(i: int, row: dict[str, Any]) -> Iterator[Job]:
    where = f"row {i}"
    mode = row.get("mode") or "transfer"
    if mode not in MODES:
        raise ManifestError(f"{where}: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    content = row.get("content_uri")
    style = row.get("style_uri")
    styles = tuple(style) if isinstance(style, list) else ((style,) if style else ())
    if mode in ("transfer", "content") and not content:
        raise ManifestError(f"{where}: mode {mode!r} needs a content_uri")
    if mode != "content" and not styles:
        raise ManifestError(f"{where}: mode {mode!r} needs a style_uri")
    if mode in ("style", "layer_sweep"):
        content = None
    if mode == "content":
        styles = ()
    fixed = {k: v for k, v in row.items() if k in PARAMS and v is not None}
    axes = row_axes(row)
    for k, v in axes.items():
        if not v:
            raise ManifestError(f"{where}: grid axis {k!r} is empty")
        fixed.pop(k)
    tags = tuple(sorted((k, v) for k, v in row.items() if k.startswith(TAG_PREFIX)))
    name = row.get("job_name")
    for combo in itertools.product(*axes.values()):
        params = {**fixed, **dict(zip(axes, combo, strict=True))}
        params = {k: _coerce(k, v, where) for k, v in params.items()}
        if mode != "layer_sweep":
            yield Job(_spec(where, {**params, "mode": mode}), content, styles, i, name, tags)
            continue
        base = _spec(where, {**params, "mode": "style"})
        sweep = job_id(base, None, styles)
        for layers in sweep_layer_sets(base.style_layers):
            sub = replace(base, style_layers=layers, style_layer_weights=None)
            yield Job(sub, None, styles, i, name, tags, sweep_of=sweep)


def _spec(where: str, params: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.from_dict(params)
    except (SpecError, TypeError) as e:
        raise ManifestError(f"{where}: {e}") from None


def expand(table: pa.Table, max_jobs: int = DEFAULT_MAX_JOBS) -> list[Job]:
    """All jobs of a manifest, duplicates (same id) collapsed to their first row."""
    if table.num_rows == 0:
        raise ManifestError("manifest has no rows")
    jobs: dict[str, Job] = {}
    count = 0
    for i, row in enumerate(table.to_pylist()):
        for job in expand_row(i, row):
            count += 1
            if count > max_jobs:
                raise ManifestError(
                    f"manifest expands to more than {max_jobs} jobs (limit reached at row {i}); "
                    f"raise --max-jobs if this is intended"
                )
            jobs.setdefault(job.id, job)
    for job in jobs.values():
        blend = job.spec.style_blend
        if blend is not None and len(blend) != len(job.style_uris):
            raise ManifestError(
                f"row {job.row}: style_blend has {len(blend)} weights for "
                f"{len(job.style_uris)} style images"
            )
    return list(jobs.values())
