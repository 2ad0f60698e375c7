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
from html import escape
from typing import Any

import pyarrow.parquet as pq
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
    return f"{v:.4g}" if isinstance(v, float) else escape(label(v, key))


def _tile(r: dict[str, Any], shown: Sequence[str], thumbs: dict[str, str | None]) -> str:
    """One result: thumbnail (linking to its row in the jobs table), parameters, losses."""
    params = "".join(f"<div>{escape(k)}: {_fmt(r.get(k), k)}</div>" for k in shown)
    losses = "".join(
        f"<div>{k}: {_fmt(r.get(f'final_{k}'))}</div>"
        for k in ("total", "content", "style")
        if r.get(f"final_{k}") is not None
    )
    missing = '<div class="noimg">output missing</div>' if r.get("image_uri") else ""
    img = (
        f'<img src="{thumbs[r["job_id"]]}" alt="{escape(r["job_id"])}">'
        if thumbs.get(r["job_id"])
        else missing or '<div class="noimg">no image</div>'
    )
    err = f'<div class="err">{escape(str(r.get("error")))}</div>' if r.get("error") else ""
    return (
        f'<figure class="tile {escape(r["status"])}"><a href="#job-{escape(r["job_id"])}">'
        f"{img}</a><figcaption><b>{escape(r['job_id'][:8])}</b> {escape(r['status'])}"
        f"{params}{losses}{err}</figcaption></figure>"
    )


def _sheet(
    rows: list[dict[str, Any]],
    row_axis: str | None,
    col_axis: str | None,
    thumbs: dict[str, str | None],
) -> str:
    """A table: one row per value of ``row_axis``, one column per value of ``col_axis``; each
    tile lists the parameters that vary within its row (beyond the two axes)."""

    def values(axis: str | None) -> list[str]:
        if not axis:
            return ["null"]
        found = {_key(v) for r in rows for v in _members(r, axis)}
        return sorted(found, key=lambda k: _order(json.loads(k)))

    rvals, cvals = values(row_axis), values(col_axis)
    head = (
        "".join(
            f"<th>{escape(col_axis)} = {escape(label(json.loads(c), col_axis))}</th>" for c in cvals
        )
        if col_axis
        else "<th></th>"
    )
    body = []
    for rv in rvals:
        group = [r for r in rows if not row_axis or rv in map(_key, _members(r, row_axis))]
        shown = [a for a in varying_axes(group) if a not in (row_axis, col_axis)]
        cells = []
        for cv in cvals:
            hits = [r for r in group if not col_axis or cv in map(_key, _members(r, col_axis))]
            hits.sort(key=lambda r: tuple(_order(r.get(a)) for a in shown))
            cells.append("<td>" + "".join(_tile(r, shown, thumbs) for r in hits) + "</td>")
        name = f"{escape(row_axis)} = {escape(label(json.loads(rv), row_axis))}" if row_axis else ""
        body.append(f"<tr><th>{name}</th>{''.join(cells)}</tr>")
    return f'<table class="sheet"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def _members(r: dict, axis: str) -> list[Any]:
    """A tag shared by several manifest rows holds a list: the job belongs under each value."""
    v = r.get(axis)
    return list(v) if axis.startswith("tag_") and isinstance(v, list) and v else [v]


CSS = """
body{font:13px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px;vertical-align:top}
.sheet td{min-width:170px}.tile{display:inline-block;margin:3px;width:170px}
.tile img{width:160px;border:1px solid #999}.noimg{width:160px;height:60px;background:#eee}
.tile.diverged{background:#fff0d0}.tile.failed{background:#ffe0e0}
.err{color:#a00;font-size:11px;word-break:break-word}
tr.failed{background:#ffe0e0}tr.diverged{background:#fff0d0}
.curves figure{display:inline-block;margin:4px}
"""


def write_report(
    out: str,
    so: dict | None = None,
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
    axes = varying_axes(results)
    for name, chosen in (("--rows", rows), ("--cols", cols)):
        if chosen and chosen != "none" and chosen not in {k for r in results for k in r}:
            raise NstError(
                f"{name} {chosen!r} is not a result column; axes that vary: "
                f"{', '.join(axes) or 'none'}"
            )
    # the grid axes the user varied first, then the inputs
    free = [a for a in reversed(axes) if a not in (rows, cols)]
    free.sort(key=lambda a: a in ("content_uri", "style_uris"))
    row_axis = rows or (free.pop(0) if free else None)
    col_axis = cols or (free.pop(0) if free else None)
    row_axis, col_axis = (None if a == "none" else a for a in (row_axis, col_axis))
    shown = [a for a in axes if a not in (row_axis, col_axis)]
    thumbs = {r["job_id"]: thumbnail(r["image_uri"], so) for r in results if r.get("image_uri")}
    curves = {
        r["job_id"]: loss_curve(r["trace_uri"], so, f"{r['job_id'][:8]} {r['status']}")
        for r in results
        if r.get("trace_uri")
    }
    counts = Counter(r["status"] for r in results)
    counts[Status.PENDING.value] = total - len(results)
    secs = [r["seconds"] for r in results if r.get("seconds") is not None]
    summary = ", ".join(f"{escape(k)}: {v}" for k, v in sorted(counts.items()) if v)
    timing = (
        f"durations: total {sum(secs):.1f}s, mean {statistics.mean(secs):.2f}s, "
        f"max {max(secs):.2f}s"
        if secs
        else ""
    )
    grid_cols = [a for a in reversed(axes) if a not in ("content_uri", "style_uris")]
    job_rows = "".join(
        f'<tr class="{escape(r["status"])}" id="job-{escape(r["job_id"])}">'
        f"<td>{escape(r['job_id'])}</td><td>{_fmt(r.get('job_name'))}</td><td>{r.get('row')}</td>"
        f"<td>{_fmt(r.get('content_uri'), 'content_uri')}</td>"
        f"<td>{_fmt(r.get('style_uris'), 'style_uris')}</td>"
        + "".join(f"<td>{_fmt(r.get(a), a)}</td>" for a in grid_cols)
        + f"<td>{escape(r['status'])}{' (output missing)' if r.get('outputs_missing') else ''}"
        f"</td><td>{_fmt(r.get('seconds'))}</td>"
        f"<td>{_fmt(r.get('final_total'))}</td><td>{_fmt(r.get('diverged_at'))}</td>"
        f'<td class="err">{escape(str(r.get("error") or ""))}</td></tr>'
        for r in results
    )
    grid_head = "".join(f"<th>{escape(a)}</th>" for a in grid_cols)
    curve_html = "".join(
        f'<figure><img src="{u}" alt="loss curve {escape(j)}"></figure>'
        for j, u in curves.items()
        if u
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>nst report: {escape(out)}</title><style>{CSS}</style></head><body>
<h1>nst report</h1><p>{escape(out)} · {len(results)} of {total} jobs · {summary} · {timing}</p>
<h2>Contact sheet</h2><p>rows: {escape(row_axis or "—")} · columns: {escape(col_axis or "—")}
· also varying: {escape(", ".join(shown) or "nothing")}</p>
{_sheet(results, row_axis, col_axis, thumbs)}
<h2>Jobs</h2><table id="jobs"><thead><tr><th>job</th><th>name</th><th>row</th><th>content</th>
<th>style</th>{grid_head}<th>status</th>
<th>seconds</th><th>final total</th><th>diverged at</th><th>error</th></tr></thead>
<tbody>{job_rows}</tbody></table>
<h2>Loss curves (log scale)</h2><div class="curves">{curve_html}</div>
</body></html>"""
    store.put("report.html", page.encode())
    if console is not None:
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
        console.print(t)
    return store.url("report.html")
