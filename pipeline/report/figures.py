"""What the report draws, gathered for 10,000 jobs in seconds: thumbnails (cached under the run
root, made concurrently), loss traces (read concurrently), curves per group of an axis
(median and interquartile band, one figure per axis, not one per job), compact per-job curves
for the page to draw on click, and the score scatter's geometry."""

from __future__ import annotations

import base64
import io
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from PIL import Image

from pipeline.report.ranking import members
from pipeline.report.ranking import value_key as _key
from pipeline.run.images import upright
from pipeline.store import layout, storage


def _order(value: Any) -> tuple:
    """Sort key for axis values: numbers by value, lists by length (layer sweeps), then text."""
    if isinstance(value, bool) or value is None:
        return (3, 0, _key(value))
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    if isinstance(value, list):
        return (2, len(value), _key(value))
    return (1, 0, str(value))


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


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def thumbnail(uri: str, so: dict | None, px: int = 160) -> bytes | None:
    """JPEG bytes, or None when the image is gone or unreadable (the tile says so)."""
    try:
        img = upright(Image.open(io.BytesIO(storage.read_bytes(uri, so)))).convert("RGB")
    except (OSError, ValueError):
        return None
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def thumbnails(store: storage.Store, rows: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    """Data URIs of the rows' thumbnails: from the run's cache (one listing, one batched read)
    where the job has not been redone since, else made concurrently and cached."""
    cache = storage.join(store.root, layout.THUMBS)
    key = {r["job_id"]: f"{r['job_id']}-{int(r.get('_committed_at') or 0)}.jpg" for r in rows}
    try:
        have = {p.rsplit("/", 1)[-1]: p for p in store.fs.find(cache)}
    except FileNotFoundError:
        have = {}
    hit = {j: have[k] for j, k in key.items() if k in have}
    blobs = store.fs.cat(list(hit.values()), on_error="omit") if hit else {}
    found: dict[str, bytes | None] = {}
    for j, path in hit.items():
        if isinstance(blobs.get(path), bytes):
            found[j] = blobs[path]

    def make(r: dict[str, Any]) -> tuple[str, bytes | None]:
        data = thumbnail(r["image_uri"], store.options)
        if data is not None:
            try:
                store.put(f"{layout.THUMBS}/{key[r['job_id']]}", data)
            except OSError:
                pass  # a read-only run still gets its report page
        return r["job_id"], data

    with ThreadPoolExecutor(max_workers=16) as pool:
        found.update(pool.map(make, [r for r in rows if r["job_id"] not in found]))
    return {j: data_uri(d, "image/jpeg") if d else None for j, d in found.items()}


Trace = dict[str, list[Any]]


def read_traces(store: storage.Store, rows: Sequence[dict[str, Any]]) -> dict[str, Trace]:
    """The loss traces of ``rows``, read concurrently (unreadable ones left out)."""

    def read(r: dict[str, Any]) -> tuple[str, Trace | None]:
        try:
            data = storage.read_bytes(r["trace_uri"], store.options)
            return r["job_id"], pq.read_table(io.BytesIO(data)).to_pydict()
        except (OSError, ValueError, pa.ArrowException):
            return r["job_id"], None

    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(read, [r for r in rows if r.get("trace_uri")]))
    return {j: t for j, t in got if t is not None}


def _series(trace: Trace, key: str = "total") -> list[tuple[int, float]]:
    pairs = zip(trace.get("iteration", []), trace.get(key, []), strict=False)
    return [(int(i), float(v)) for i, v in pairs if v is not None and v > 0]


def group_curves(axis: str, rows: Sequence[dict[str, Any]], traces: dict[str, Trace]) -> str | None:
    """One figure per axis: per value, the median total loss over iterations with its
    interquartile band (loss over its own start, so jobs of other scales share a plot)."""
    groups: dict[str, list[list[tuple[int, float]]]] = {}
    for r in rows:
        series = _series(traces.get(r["job_id"], {}))
        if len(series) > 1:
            for v in members(r, axis):
                groups.setdefault(_key(v), []).append([(i, t / series[0][1]) for i, t in series])
    if not groups:
        return None
    fig = Figure(figsize=(4.2, 2.6), dpi=80)
    ax = fig.subplots()
    for k in sorted(groups, key=lambda k: _order(json.loads(k))):
        xs, med, lo, hi = _band(groups[k])
        line = ax.plot(xs, med, label=label(json.loads(k), axis))[0]
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("total / initial")
    ax.set_title(f"by {axis} (median, IQR)", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return data_uri(buf.getvalue(), "image/png")


Band = tuple[list[int], list[float], list[float], list[float]]


def _band(curves: list[list[tuple[int, float]]]) -> Band:
    """Median and quartiles at each iteration at least half the group's curves reached (a job
    that stopped early does not cut the others' curves short)."""
    at = [dict(c) for c in curves]
    counts = Counter(i for a in at for i in a)
    xs = sorted(i for i, n in counts.items() if n >= max(1, len(at) // 2))
    qs = [
        statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
        for v in ([a[i] for a in at if i in a] for i in xs)
    ]
    return xs, [q[1] for q in qs], [q[0] for q in qs], [q[2] for q in qs]


def compact_curve(trace: Trace, points: int = 48) -> list[list[float]]:
    """The total loss at up to ``points`` iterations, drawn on click in the page."""
    series = _series(trace)
    step = max(1, -(-len(series) // points))
    picked = series[::step]
    if series and picked[-1] != series[-1]:
        picked.append(series[-1])
    return [[i, float(f"{v:.4g}")] for i, v in picked]


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")  # fmt: skip
OTHER = "#bbbbbb"


@dataclass
class Scatter:
    """An SVG scatter of score_content (x) vs score_style (y), both log scale, lower-left best."""

    width: int
    height: int
    points: list[dict[str, Any]]  # x, y, color, job_id, title, pareto
    front: str  # the Pareto front as an SVG polyline
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    legend: list[tuple[str, str]]
    left_out: int  # scored jobs with no content score (style reconstructions)


def scatter(rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], color: str | None,
            width: int = 560, height: int = 380, pad: int = 48) -> Scatter | None:  # fmt: skip
    both = [r for r in rows if r.get("score_content") and r.get("score_style")]
    if not both:
        return None
    lx = [math.log10(r["score_content"]) for r in both]
    ly = [math.log10(r["score_style"]) for r in both]
    sx = _scale(min(lx), max(lx), pad, width - pad // 2)
    sy = _scale(min(ly), max(ly), height - pad, pad // 2)
    colors, legend = _colors(both, color)
    on_front = {r["job_id"] for r in front}
    points = [
        {
            "x": round(sx(a), 1),
            "y": round(sy(b), 1),
            "color": colors[r["job_id"]],
            "job_id": r["job_id"],
            "pareto": r["job_id"] in on_front,
            "title": f"{r['job_id'][:8]} content {r['score_content']:.3g} "
            f"style {r['score_style']:.3g}",
        }
        for r, a, b in zip(both, lx, ly, strict=True)
    ]
    line = " ".join(
        f"{p['x']},{p['y']}"
        for p in sorted((p for p in points if p["pareto"]), key=lambda p: p["x"])
    )
    return Scatter(width, height, points, line, _ticks(lx, sx), _ticks(ly, sy), legend,
                   len(rows) - len(both))  # fmt: skip


def _scale(lo: float, hi: float, a: float, b: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _ticks(logs: list[float], s: Any) -> list[tuple[float, str]]:
    """Decades where the range holds two or more; else 1-2-5 steps inside it; else its ends
    (scores from 10 to 19 hold no decade but must still be read off the axis)."""
    lo, hi = min(logs), max(logs)
    first, last = math.floor(lo), math.ceil(hi)
    step = max(1, (last - first) // 5)
    decades = [float(e) for e in range(first, last + 1, step) if lo <= e <= hi]
    if len(decades) >= 2:
        return [(round(s(e), 1), f"1e{int(e)}") for e in decades]
    nice = [math.log10(m) + e for e in range(first - 1, last + 1) for m in (1, 2, 5)]
    inside = [v for v in nice if lo - 1e-9 <= v <= hi + 1e-9]
    chosen = inside if len(inside) >= 2 else sorted({lo, hi})
    return [(round(s(v), 1), f"{10**v:.3g}") for v in chosen]


def _colors(rows: Sequence[dict[str, Any]], axis: str | None) -> tuple[dict[str, str], list]:
    """A colour per value of ``axis`` (the 9 most common; the rest grey), and the legend."""
    if not axis:
        return {r["job_id"]: PALETTE[0] for r in rows}, []
    counts = Counter(_key(members(r, axis)[0]) for r in rows)
    ordered = sorted(
        (k for k, _ in counts.most_common(len(PALETTE) - 1)), key=lambda k: _order(json.loads(k))
    )
    of = {k: PALETTE[i] for i, k in enumerate(ordered)}
    legend = [(f"{axis} = {label(json.loads(k), axis)}", of[k]) for k in ordered]
    if len(counts) > len(ordered):
        legend.append((f"{len(counts) - len(ordered)} other values", OTHER))
    return {r["job_id"]: of.get(_key(members(r, axis)[0]), OTHER) for r in rows}, legend
