"""Manifest rows -> jobs: the Cartesian product of each row's grid axes, validated per row."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa

from nst_ops.layer_table import sweep_layer_sets
from nst_ops.presets import FIRST_DEFAULTS
from nst_ops.spec import JobSpec, SpecError
from nst_ops.vocab import RowMode
from pipeline.errors import ManifestError
from pipeline.jobs.job import Job, job_id
from pipeline.jobs.manifest import MODES, PARAMS, TAG_PREFIX

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


def row_job_count(row: dict[str, Any]) -> int:
    """Jobs a row expands to, from its axes' sizes alone (a layer sweep counts one job per
    combination here: its layer subsets are known once its spec is): a 200k-job grid is
    refused before any job is built."""
    return math.prod(len(v) for v in row_axes(row).values())


def _row_inputs(where: str, row: dict[str, Any]) -> tuple[RowMode, str | None, tuple[str, ...]]:
    """The row's mode and the inputs it uses (the others are dropped, not refused)."""
    raw = row.get("mode") or RowMode.TRANSFER.value
    if raw not in MODES:
        raise ManifestError(f"{where}: unknown mode {raw!r}; choose one of {', '.join(MODES)}")
    mode = RowMode(raw)
    content = row.get("content_uri")
    style = row.get("style_uri")
    styles = tuple(style) if isinstance(style, list) else ((style,) if style else ())
    if mode.needs_content and not content:
        raise ManifestError(f"{where}: mode {mode.value!r} needs a content_uri")
    if mode.needs_style and not styles:
        raise ManifestError(f"{where}: mode {mode.value!r} needs a style_uri")
    return mode, content if mode.needs_content else None, styles if mode.needs_style else ()


def expand_row(i: int, row: dict[str, Any], defaults: int = FIRST_DEFAULTS) -> Iterator[Job]:
    where = f"row {i}"
    mode, content, styles = _row_inputs(where, row)
    fixed = {k: v for k, v in row.items() if k in PARAMS and v is not None}
    axes = row_axes(row)
    for k, v in axes.items():
        if not v:
            raise ManifestError(f"{where}: grid axis {k!r} is empty")
        fixed.pop(k)
    tags = tuple(sorted((k, v) for k, v in row.items() if k.startswith(TAG_PREFIX)))
    name, preset = row.get("job_name"), row.get("preset")
    for column, value in (("job_name", name), *tags):
        _check_text(where, column, value)
    for combo in itertools.product(*axes.values()):
        params = {**fixed, **dict(zip(axes, combo, strict=True))}
        params = {k: _coerce(k, v, where) for k, v in params.items()}
        if mode is not RowMode.LAYER_SWEEP:
            spec = _spec(where, {**params, "mode": mode.value}, preset, defaults)
            yield Job(spec, content, styles, i, name, tags, preset=preset)
            continue
        base = _spec(where, {**params, "mode": RowMode.STYLE.value}, preset, defaults)
        sweep = job_id(base, None, styles)
        for layers in sweep_layer_sets(base.style_layers):
            sub = replace(base, style_layers=layers, style_layer_weights=None)
            yield Job(sub, None, styles, i, name, tags, sweep_of=sweep, preset=preset)


def _check_text(where: str, column: str, value: Any) -> None:
    """Names and tags are shown in terminals, reports and CSV exports: no NUL, newline or
    other control character may ride along in them."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
            bad = next(ch for ch in v if ord(ch) < 32 or ord(ch) == 127)
            raise ManifestError(
                f"{where}: {column} {v!r} contains a control character ({bad!r}); names and "
                "tags must be plain text"
            )


def _spec(where: str, params: dict[str, Any], preset: str | None, defaults: int) -> JobSpec:
    try:
        return JobSpec.from_dict(params, preset, defaults)
    except (SpecError, TypeError) as e:
        raise ManifestError(f"{where}: {e}") from None


def expand(
    table: pa.Table,
    max_jobs: int = DEFAULT_MAX_JOBS,
    warn: Callable[[str], None] | None = None,
    defaults: int = FIRST_DEFAULTS,
) -> list[Job]:
    """All jobs of a manifest, under the defaults edition ``defaults`` (the CLI picks the
    run's). Rows that give the same job (same id) run it once; their names and tags are all
    kept (a tag that differs becomes a list of its values), with a warning."""
    if table.num_rows == 0:
        raise ManifestError("manifest has no rows")
    rows = table.to_pylist()
    at_least = sum(row_job_count(row) for row in rows)
    if at_least > max_jobs:
        raise ManifestError(
            f"manifest expands to {at_least:,} jobs, more than --max-jobs {max_jobs:,}; raise "
            "--max-jobs if this is intended"
        )
    jobs: dict[str, Job] = {}
    merged: dict[str, list[int]] = {}
    count = 0
    for i, row in enumerate(rows):
        for job in expand_row(i, row, defaults):
            count += 1
            if count > max_jobs:  # a layer sweep's subsets are known only once expanded
                raise ManifestError(
                    f"manifest expands to more than --max-jobs {max_jobs:,} jobs (limit reached "
                    f"at row {i}); raise --max-jobs if this is intended"
                )
            first = jobs.setdefault(job.id, job)
            if first is not job and (first.job_name, first.tags) != (job.job_name, job.tags):
                jobs[job.id] = _merge(first, job)
                merged.setdefault(job.id, [first.row]).append(job.row)
    for job in jobs.values():
        blend = job.spec.style_blend
        if blend is not None and len(blend) != len(job.style_uris):
            raise ManifestError(
                f"row {job.row}: style_blend has {len(blend)} weights for "
                f"{len(job.style_uris)} style images"
            )
    if merged and warn:
        some = ", ".join(f"{k[:8]} (rows {sorted(set(v))})" for k, v in list(merged.items())[:3])
        warn(
            f"{len(merged)} job(s) come from several rows that differ only in job_name or tags: "
            f"each runs once, keeping every name and tag: {some}"
        )
    return _tags_as_lists(list(jobs.values()))


def _merge(a: Job, b: Job) -> Job:
    names = [n for n in dict.fromkeys((*(a.job_name or "").split(" | "), b.job_name)) if n]
    tags = dict(a.tags)
    for k, v in b.tags:
        have = tags.get(k)
        values = have if isinstance(have, list) else [have]
        tags[k] = values if v in values else [*values, v]
    return replace(a, job_name=" | ".join(names) or None, tags=tuple(sorted(tags.items())))


def _tags_as_lists(jobs: list[Job]) -> list[Job]:
    """One type per tag column: where any job holds a list of values, all hold lists."""
    listed = {k for j in jobs for k, v in j.tags if isinstance(v, list)}
    if not listed:
        return jobs

    def fix(j: Job) -> Job:
        tags = tuple((k, v if k not in listed or isinstance(v, list) else [v]) for k, v in j.tags)
        return replace(j, tags=tags)

    return [fix(j) for j in jobs]
