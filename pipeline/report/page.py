"""`nst report`: one self-contained HTML page for a run (thumbnails and curves embedded).

Works on any fsspec output root and writes ``report.html`` beside the results. Every user string
is HTML-escaped: job names and tags are data, never markup.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from rich.console import Console
from rich.table import Table

from nst_ops.vocab import Status
from pipeline.errors import NstError
from pipeline.report import figures
from pipeline.report.figures import _order, label
from pipeline.report.ranking import Effect, Rank, effects, members, pareto_front, ranked
from pipeline.report.ranking import value_key as _key
from pipeline.report.sheet import (
    INPUT_AXES,
    axis_values,
    build_sheet,
    format_value,
    grid_cells,
    input_thumbs,
    make_tile,
    pick_tiles,
    tiles_per_cell,
    varying_axes,
)
from pipeline.run import lease
from pipeline.store import layout, storage
from pipeline.store.results import collect, evaluator_of

STATUS_ORDER = Status.values()


@dataclass(frozen=True)
class ReportOptions:
    rows: str | None = None  # contact-sheet axes (None: chosen from what varies)
    cols: str | None = None
    color: str | None = None  # the scatter's colour axis
    rank: Rank = Rank.PARETO
    top: int = 12
    max_tiles: int = 300  # above this the contact sheet shows the best tiles of each cell


def live_lease(store: storage.Store) -> str | None:
    """A line saying a run still writes here (its lease is fresh), else None."""
    held = lease.current(store)
    if held is None or lease.is_stale(held):
        return None
    age = time.time() - float(held.get("heartbeat", 0))
    return (
        f"A run is still writing to this output (host {held.get('host')}, pid "
        f"{held.get('pid')}, heartbeat {age:.0f}s ago): what this page shows will change."
    )


def _job_line(r: dict[str, Any], grid_cols: Sequence[str]) -> dict[str, Any]:
    return {
        "job_id": r["job_id"],
        "name": format_value(r.get("job_name")),
        "row": r.get("row"),
        "content": format_value(r.get("content_uri"), "content_uri"),
        "style": format_value(r.get("style_uris"), "style_uris"),
        "grid": [format_value(r.get(a), a) for a in grid_cols],
        "status": r["status"],
        "missing": bool(r.get("outputs_missing")),
        "seconds": format_value(r.get("seconds")),
        "final_total": format_value(r.get("final_total")),
        "score_content": format_value(r.get("score_content")),
        "score_style": format_value(r.get("score_style")),
        "diverged_at": format_value(r.get("diverged_at")),
        "error": str(r.get("error") or ""),
    }


TEMPLATES = Environment(
    loader=PackageLoader("pipeline.report", "templates"), autoescape=select_autoescape(["html"])
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
    free.sort(key=lambda a: a in INPUT_AXES)
    row_axis = rows or (free.pop(0) if free else None)
    if row_axis:  # an axis that groups the jobs exactly as the rows do (tag_style beside
        same = _grouping(results, row_axis)  # style_uris) would leave half the cells empty
        free = [a for a in free if _grouping(results, a) != same]
    col_axis = cols or (free.pop(0) if free else None)
    return (None if row_axis == "none" else row_axis), (None if col_axis == "none" else col_axis)


def _grouping(results: list[dict[str, Any]], axis: str) -> list[int]:
    """Which jobs share a value of ``axis``, as group numbers in order of first appearance."""
    seen: dict[str, int] = {}
    return [seen.setdefault(_key(r.get(axis)), len(seen)) for r in results]


def _timing(results: list[dict[str, Any]]) -> str:
    secs = [r["seconds"] for r in results if r.get("seconds") is not None]
    if not secs:
        return ""
    return (
        f"durations: total {sum(secs):.1f}s, mean {statistics.mean(secs):.2f}s, "
        f"max {max(secs):.2f}s"
    )


def _comparable(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Rows scored under the run's (most common) evaluator, and a note on any left out."""
    keys = Counter(r.get("score_by") for r in results if r.get("score_style") is not None)
    if not keys:
        return [], "no scores: run `nst score OUT` (runs before scores existed have none)"
    main = keys.most_common(1)[0][0]
    rows = [r for r in results if r.get("score_by") == main and r.get("score_style") is not None]
    other = sum(keys.values()) - len(rows)
    note = (
        f"{other} job(s) scored under another evaluator or style preparation (style_scale) "
        "are left out: `nst score OUT` rescores a run under one evaluator"
        if other
        else ""
    )
    return rows, note


def _decide(scored: list[dict[str, Any]], axes: list[str], o: ReportOptions) -> dict[str, Any]:
    """The scatter, the Pareto front, the top jobs and each axis's effect."""
    settings = [a for a in axes if a not in INPUT_AXES]
    choices = settings or axes  # default: the setting with the fewest values
    color = o.color or (choices[0] if choices else None)
    if color and axes and color not in axes and color not in {k for r in scored for k in r}:
        raise NstError(
            f"--color {color!r} is not a result column; axes that vary: {', '.join(axes)}"
        )
    front = pareto_front(scored)
    return {
        "scatter": figures.scatter(scored, front, color),
        "ranking": ranked(scored, o.rank, len(scored)),
        "effects": effects(scored, settings),
        "color": color,
    }


def render(
    store: storage.Store, results: list[dict[str, Any]], total: int, o: ReportOptions
) -> str:
    """The page: data gathered here, markup in templates/report.html (autoescaped)."""
    axes = varying_axes(results)
    row_axis, col_axis = _choose_axes(results, axes, o.rows, o.cols)
    scored, score_note = _comparable(results)
    d = _decide(scored, axes, o)
    position = {r["job_id"]: i for i, r in enumerate(d["ranking"])}
    cells = grid_cells(results, row_axis, col_axis)
    picked = pick_tiles(cells, (row_axis, col_axis), tiles_per_cell(cells, o.max_tiles), position)
    top = d["ranking"][: o.top]
    on_sheet = [r for _, _, chosen, _ in picked for cell in chosen for r in cell]
    pictured = {r["job_id"]: r for r in [*top, *on_sheet] if r.get("image_uri")}
    thumbs = figures.thumbnails(store, list(pictured.values()))
    curve_axes = [a for a in axes if a not in INPUT_AXES][-4:]
    sample = _curve_sample(results, curve_axes)
    traces = figures.read_traces(store, list({**sample, **pictured}.values()))
    grid_cols = [a for a in reversed(axes) if a not in INPUT_AXES]
    return TEMPLATES.get_template("report.html").render(
        out=store.url(""),
        shown_jobs=len(results),
        total=total,
        summary=", ".join(f"{k}: {v}" for k, v in sorted(_counts(results, total).items()) if v),
        timing=_timing(results),
        score_note=score_note,
        evaluator=_evaluator_line(store),
        scatter=d["scatter"],
        color=d["color"],
        effects=[_effect_view(e) for e in d["effects"]],
        rank=o.rank.value,
        top=[make_tile(r, grid_cols, thumbs) for r in top],
        sheet=build_sheet(
            picked,
            (row_axis, col_axis),
            axis_values(results, col_axis),
            thumbs,
            input_thumbs(store, results, (row_axis, col_axis)),
        ),  # fmt: skip
        live=live_lease(store),
        also_varying=", ".join(a for a in axes if a not in (row_axis, col_axis)),
        grid_cols=grid_cols,
        jobs=[_job_line(r, grid_cols) for r in results],
        group_curves=[
            (a, u)
            for a in curve_axes
            if (u := figures.group_curves(a, list(sample.values()), traces))
        ],
        curves={j: figures.compact_curve(t) for j, t in traces.items() if j in pictured},
    )


def _curve_sample(
    results: list[dict[str, Any]], axes: list[str], per_value: int = 24
) -> dict[str, dict[str, Any]]:
    """Up to ``per_value`` jobs per value of each axis (evenly spaced through the rows): the
    group curves' medians need a sample, not every trace of 10,000 jobs."""
    out: dict[str, dict[str, Any]] = {}
    with_trace = [r for r in results if r.get("trace_uri")]
    for axis in axes:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in with_trace:
            for v in members(r, axis):
                groups.setdefault(_key(v), []).append(r)
        for g in groups.values():
            step = max(1, len(g) // per_value)
            out.update((r["job_id"], r) for r in g[::step][:per_value])
    return out


def _effect_view(e: Effect) -> dict[str, Any]:
    """An axis's values with their median scores, as text and as bars (log scale across the
    axis's values; shorter is better), so the effect reads at a glance."""
    rows = sorted(e.values, key=lambda x: _order(x[0]))
    bars = [_bars([r[2 + i] for r in rows]) for i in range(2)]
    return {
        "axis": e.axis,
        "rows": [
            {
                "value": label(v, e.axis),
                "n": n,
                "content": format_value(mc),
                "style": format_value(ms),
                "content_bar": bars[0][k],
                "style_bar": bars[1][k],
                "best_content": e.best.get("score_content") == v and mc is not None,
                "best_style": e.best.get("score_style") == v and ms is not None,
            }
            for k, (v, n, mc, ms) in enumerate(rows)
        ],
    }


def _bars(values: list[float | None], short: int = 6, long: int = 80) -> list[int]:
    logs = [math.log10(v) if v and v > 0 else None for v in values]
    known = [x for x in logs if x is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 0.0)
    span = (hi - lo) or 1.0
    return [0 if x is None else round(short + (x - lo) / span * (long - short)) for x in logs]


def _evaluator_line(store: storage.Store) -> str:
    ev = evaluator_of(store)
    if not ev:
        return ""
    layers = ",".join(ev.get("style_layers", []))
    return (
        f"{ev.get('backbone')} · weights {label(ev.get('weights'), 'weights')} · "
        f"{ev.get('pooling')} pooling · content {ev.get('content_layer')} · style {layers}"
    )


def _counts(results: list[dict[str, Any]], total: int) -> Counter[str]:
    counts = Counter(r["status"] for r in results)
    counts[Status.PENDING.value] = total - len(results)
    return counts


def write_report(
    out: str,
    so: dict[str, Any] | None = None,
    options: ReportOptions = ReportOptions(),
    console: Console | None = None,
) -> str:
    """Render ``OUT/report.html`` and print a compact terminal summary; returns the page URL."""
    store = storage.Store(out, so)
    results, total = collect(store)
    if not results:
        raise NstError(f"{out}: no results to report (run `nst run` first)")
    results.sort(key=lambda r: (r.get("row") or 0, r["job_id"]))
    store.put(layout.REPORT, render(store, results, total, options).encode())
    if console is not None:
        console.print(_summary_table(out, results, total))
    return store.url(layout.REPORT)


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
        t.add_row(status, str(counts[status]), format_value(mean), format_value(best))
    return t
