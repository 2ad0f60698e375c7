"""`nst report`: one self-contained HTML page for a run (thumbnails and curves embedded).

Works on any fsspec output root and writes ``report.html`` beside the results. Every user string
is HTML-escaped: job names and tags are data, never markup.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console
from rich.table import Table

from nst_ops.spec import JobSpec
from nst_ops.vocab import Status

from . import storage
from .errors import NstError
from .results import collect

AXIS_KEYS = ("content_uri", "style_uris", *JobSpec.field_names())
STATUS_ORDER = Status.values()


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _order(value: Any) -> tuple:
    """Sort key for axis values: numbers by value, lists by length (layer sweeps), then text."""
    if isinstance(value, bool) or value is None:
        return (3, 0, _key(value))
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    if isinstance(value, list):
        return (2, len(value), _key(value))
    return (1, 0, str(value))


def varying_axes(rows: Sequence[dict]) -> list[str]:
    """Parameters (and tags) whose value differs between jobs, most distinct values last."""
    keys = [k for k in AXIS_KEYS if k != "mode"]
    keys += sorted({k for r in rows for k in r if k.startswith("tag_")})
    counts = {k: len({_key(r.get(k)) for r in rows}) for k in keys}
    return sorted((k for k, n in counts.items() if n > 1), key=lambda k: (counts[k], keys.index(k)))


URI_KEYS = ("content_uri", "style_uris", "weights")


def label(value: Any, key: str | None = None) -> str:
    """Short display text; URIs are shown by file name."""
    if isinstance(value, list):
        return ", ".join(label(v, key) for v in value)
    if key in URI_KEYS and isinstance(value, str):
        return value.rstrip("/").rsplit("/", 1)[-1]
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def thumbnail(uri: str, so: dict | None, px: int = 160) -> str | None:
    """A JPEG data URI, or None when the image is gone or unreadable (the tile says so)."""
    try:
        img = Image.open(io.BytesIO(storage.read_bytes(uri, so))).convert("RGB")
    except (OSError, ValueError):
        return None
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


def loss_curve(uri: str, so: dict | None, title: str) -> str | None:
    try:
        trace = pq.read_table(io.BytesIO(storage.read_bytes(uri, so))).to_pydict()
    except (OSError, ValueError):
        return None
    fig = Figure(figsize=(3.6, 2.4), dpi=80)
    ax = fig.subplots()
    for name, style in (("total", "-"), ("content", "--"), ("style", ":")):
        pairs = [
            (i, v)
            for i, v in zip(trace.get("iteration", []), trace.get(name, []), strict=True)
            if v is not None and v > 0
        ]
        if pairs:
            ax.plot(*zip(*pairs, strict=True), style, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _data_uri(buf.getvalue(), "image/png")


def _fmt(v: Any, key: str | None = None) -> str:
    """Display text (plain: the template escapes it)."""
    return f"{v:.4g}" if isinstance(v, float) else label(v, key)


@dataclass
class Tile:
    job_id: str
    status: str
    thumb: str | None
    missing: bool
    params: list[tuple[str, str]]
    losses: list[tuple[str, str]]
    error: str | None


@dataclass
class SheetRow:
    label: str
    cells: list[list[Tile]]


@dataclass
class Sheet:
    row_axis: str | None
    col_axis: str | None
    col_labels: list[str]
    rows: list[SheetRow]


def _tile(r: dict[str, Any], shown: Sequence[str], thumbs: dict[str, str | None]) -> Tile:
    """One result: thumbnail (linking to its row in the jobs table), parameters, losses."""
    losses = [
        (k, _fmt(r.get(f"final_{k}")))
        for k in ("total", "content", "style")
        if r.get(f"final_{k}") is not None
    ]
    return Tile(
        job_id=r["job_id"],
        status=r["status"],
        thumb=thumbs.get(r["job_id"]),
        missing=bool(r.get("image_uri")),
        params=[(k, _fmt(r.get(k), k)) for k in shown],
        losses=losses,
        error=str(r["error"]) if r.get("error") else None,
    )


def _axis_values(rows: list[dict[str, Any]], axis: str | None) -> list[str]:
    if not axis:
        return ["null"]
    found = {_key(v) for r in rows for v in _members(r, axis)}
    return sorted(found, key=lambda k: _order(json.loads(k)))


def _sheet(
    rows: list[dict[str, Any]],
    row_axis: str | None,
    col_axis: str | None,
    thumbs: dict[str, str | None],
) -> Sheet:
    """One row per value of ``row_axis``, one column per value of ``col_axis``; each tile lists
    the parameters that vary within its row (beyond the two axes)."""
    cvals = _axis_values(rows, col_axis)
    col_labels = (
        [f"{col_axis} = {label(json.loads(c), col_axis)}" for c in cvals] if col_axis else [""]
    )
    out = []
    for rv in _axis_values(rows, row_axis):
        group = [r for r in rows if not row_axis or rv in map(_key, _members(r, row_axis))]
        shown = [a for a in varying_axes(group) if a not in (row_axis, col_axis)]
        cells = []
        for cv in cvals:
            hits = [r for r in group if not col_axis or cv in map(_key, _members(r, col_axis))]
            hits.sort(key=lambda r: tuple(_order(r.get(a)) for a in shown))
            cells.append([_tile(r, shown, thumbs) for r in hits])
        name = f"{row_axis} = {label(json.loads(rv), row_axis)}" if row_axis else ""
        out.append(SheetRow(name, cells))
    return Sheet(row_axis, col_axis, col_labels, out)


def _members(r: dict[str, Any], axis: str) -> list[Any]:
    """A tag shared by several manifest rows holds a list: the job belongs under each value."""
    v = r.get(axis)
    return list(v) if axis.startswith("tag_") and isinstance(v, list) and v else [v]


def _job_line(r: dict[str, Any], grid_cols: Sequence[str]) -> dict[str, Any]:
    return {
        "job_id": r["job_id"],
        "name": _fmt(r.get("job_name")),
        "row": r.get("row"),
        "content": _fmt(r.get("content_uri"), "content_uri"),
        "style": _fmt(r.get("style_uris"), "style_uris"),
        "grid": [_fmt(r.get(a), a) for a in grid_cols],
        "status": r["status"],
        "missing": bool(r.get("outputs_missing")),
        "seconds": _fmt(r.get("seconds")),
        "final_total": _fmt(r.get("final_total")),
        "diverged_at": _fmt(r.get("diverged_at")),
        "error": str(r.get("error") or ""),
    }


TEMPLATES = Environment(
    loader=PackageLoader("pipeline", "templates"), autoescape=select_autoescape(["html"])
)


def _choose_axes(
    results: list[dict[str, Any]], axes: list[str], rows: str | None, cols: str | None
) -> tuple[str | None, str | None]:
    """The contact sheet's axes: as asked, else the grid axes the user varied, then inputs."""
    for name, chosen in (("--rows", rows), ("--cols", cols)):
        if chosen and chosen != "none" and chosen not in {k for r in results for k in r}:
            raise NstError(
                f"{name} {chosen!r} is not a result column; axes that vary: "
                f"{', '.join(axes) or 'none'}"
            )
    free = [a for a in reversed(axes) if a not in (rows, cols)]
    free.sort(key=lambda a: a in ("content_uri", "style_uris"))
    row_axis = rows or (free.pop(0) if free else None)
    col_axis = cols or (free.pop(0) if free else None)
    return (None if row_axis == "none" else row_axis), (None if col_axis == "none" else col_axis)


def _timing(results: list[dict[str, Any]]) -> str:
    secs = [r["seconds"] for r in results if r.get("seconds") is not None]
    if not secs:
        return ""
    return (
        f"durations: total {sum(secs):.1f}s, mean {statistics.mean(secs):.2f}s, "
        f"max {max(secs):.2f}s"
    )


def render(out: str, results: list[dict[str, Any]], total: int, so: dict[str, Any] | None,
           rows: str | None, cols: str | None) -> str:  # fmt: skip
    """The page: data gathered here, markup in templates/report.html (autoescaped)."""
    axes = varying_axes(results)
    row_axis, col_axis = _choose_axes(results, axes, rows, cols)
    thumbs = {r["job_id"]: thumbnail(r["image_uri"], so) for r in results if r.get("image_uri")}
    curves = [
        (r["job_id"], loss_curve(r["trace_uri"], so, f"{r['job_id'][:8]} {r['status']}"))
        for r in results
        if r.get("trace_uri")
    ]
    counts = _counts(results, total)
    grid_cols = [a for a in reversed(axes) if a not in ("content_uri", "style_uris")]
    return TEMPLATES.get_template("report.html").render(
        out=out,
        shown_jobs=len(results),
        total=total,
        summary=", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if v),
        timing=_timing(results),
        sheet=_sheet(results, row_axis, col_axis, thumbs),
        also_varying=", ".join(a for a in axes if a not in (row_axis, col_axis)),
        grid_cols=grid_cols,
        jobs=[_job_line(r, grid_cols) for r in results],
        curves=[(j, u) for j, u in curves if u],
    )


def _counts(results: list[dict[str, Any]], total: int) -> Counter[str]:
    counts = Counter(r["status"] for r in results)
    counts[Status.PENDING.value] = total - len(results)
    return counts


def write_report(
    out: str,
    so: dict[str, Any] | None = None,
    rows: str | None = None,
    cols: str | None = None,
    console: Console | None = None,
) -> str:
    """Render ``OUT/report.html`` and print a compact terminal summary; returns the page URL."""
    store = storage.Store(out, so)
    results, total = collect(store)
    if not results:
        raise NstError(f"{out}: no results to report (run `nst run` first)")
    results.sort(key=lambda r: (r.get("row") or 0, r["job_id"]))
    store.put("report.html", render(out, results, total, so, rows, cols).encode())
    if console is not None:
        console.print(_summary_table(out, results, total))
    return store.url("report.html")


def _summary_table(out: str, results: list[dict[str, Any]], total: int) -> Table:
    counts = _counts(results, total)
    t = Table(title=f"{out}: {len(results)} of {total} jobs")
    for col in ("status", "jobs", "mean seconds", "best final total"):
        t.add_column(col)
    for status in sorted(counts, key=lambda s: (s not in STATUS_ORDER, s)):
        group = [r for r in results if r["status"] == status]
        if not counts[status]:
            continue
        mean = statistics.mean(r["seconds"] for r in group) if group else None
        best = min(
            (r["final_total"] for r in group if r.get("final_total") is not None), default=None
        )
        t.add_row(status, str(counts[status]), _fmt(mean), _fmt(best))
    return t
