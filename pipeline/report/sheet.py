"""The report's contact sheet: result tiles laid out on a grid of two axes (rows and columns
of values), each tile a thumbnail with its job's varying parameters, inputs as thumbnails too."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nst_ops.spec import JobSpec
from pipeline.report import figures
from pipeline.report.figures import _order, label
from pipeline.report.ranking import members
from pipeline.report.ranking import value_key as _key
from pipeline.store import storage

INPUT_AXES = ("content_uri", "style_uris")


AXIS_KEYS = (*INPUT_AXES, *JobSpec.field_names())


def varying_axes(rows: Sequence[dict]) -> list[str]:
    """Parameters (and tags) whose value differs between jobs, most distinct values last."""
    keys = [k for k in AXIS_KEYS if k != "mode"]
    keys += sorted({k for r in rows for k in r if k.startswith("tag_")})
    counts = {k: len({_key(r.get(k)) for r in rows}) for k in keys}
    return sorted((k for k, n in counts.items() if n > 1), key=lambda k: (counts[k], keys.index(k)))


def format_value(v: Any, key: str | None = None) -> str:
    """Display text (plain: the template escapes it)."""
    return f"{v:.4g}" if isinstance(v, float) else label(v, key)


Picked = list[tuple[str, list[str], list[list[dict[str, Any]]], list[int]]]


@dataclass
class Tile:
    job_id: str
    name: str  # the row's job_name, else the id's first 8 characters
    status: str
    thumb: str | None
    missing: bool
    params: list[tuple[str, str]]
    losses: list[tuple[str, str]]
    error: str | None


@dataclass
class SheetRow:
    label: str
    thumb: str | None  # the content (or style) image itself, when the rows are inputs
    cells: list[list[Tile]]
    hidden: list[int]  # tiles per cell left out of a sampled sheet


@dataclass
class Sheet:
    row_axis: str | None
    col_axis: str | None
    col_labels: list[str]
    col_thumbs: list[str | None]
    rows: list[SheetRow]
    hidden: int = 0


def make_tile(r: dict[str, Any], shown: Sequence[str], thumbs: dict[str, str | None]) -> Tile:
    """One result: thumbnail (linking to its row in the jobs table), parameters, scores."""
    losses = [
        (k.replace("final_", ""), format_value(r.get(k)))
        for k in ("score_content", "score_style", "final_total")
        if r.get(k) is not None
    ]
    return Tile(
        job_id=r["job_id"],
        name=str(r.get("job_name") or r["job_id"][:8]),
        status=r["status"],
        thumb=thumbs.get(r["job_id"]),
        missing=bool(r.get("image_uri")),
        params=[(k, format_value(r.get(k), k)) for k in shown],
        losses=losses,
        error=str(r["error"]) if r.get("error") else None,
    )


def axis_values(rows: list[dict[str, Any]], axis: str | None) -> list[str]:
    if not axis:
        return ["null"]
    found = {_key(v) for r in rows for v in members(r, axis)}
    return sorted(found, key=lambda k: _order(json.loads(k)))


def grid_cells(
    rows: list[dict[str, Any]], row_axis: str | None, col_axis: str | None
) -> list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]]:
    """(row value, [(column value, jobs)]): a job shared by several values is in each."""
    cvals = axis_values(rows, col_axis)
    out = []
    for rv in axis_values(rows, row_axis):
        group = [r for r in rows if not row_axis or rv in map(_key, members(r, row_axis))]
        cells = [
            (cv, [r for r in group if not col_axis or cv in map(_key, members(r, col_axis))])
            for cv in cvals
        ]
        out.append((rv, cells))
    return out


def pick_tiles(
    layout_: list[tuple[str, list[tuple[str, list[dict[str, Any]]]]]],
    axes: tuple[str | None, str | None],
    per_cell: int,
    position: dict[str, int],
) -> Picked:
    """The tiles the sheet shows, chosen once (so exactly these get thumbnails): per row value,
    the parameters that vary within the row, at most ``per_cell`` jobs per cell (best by the
    report's ranking, then by those parameters) and how many each cell hides."""
    out: Picked = []
    for rv, cells in layout_:
        shown = [a for a in varying_axes([r for _, hits in cells for r in hits]) if a not in axes]
        chosen, hidden = [], []
        for _, hits in cells:
            hits = sorted(hits, key=lambda r: (position.get(r["job_id"], len(position)),
                                               tuple(_order(r.get(a)) for a in shown)))  # fmt: skip
            chosen.append(hits[:per_cell])
            hidden.append(max(0, len(hits) - per_cell))
        out.append((rv, shown, chosen, hidden))
    return out


def build_sheet(
    picked: Picked,
    axes: tuple[str | None, str | None],
    col_values: list[str],
    thumbs: dict[str, str | None],
    inputs: dict[str, str | None],
) -> Sheet:
    """One row per value of the row axis, one column per value of the column axis; where an
    axis is an input (content, style) its header shows the image itself."""
    row_axis, col_axis = axes
    col_labels = (
        [f"{col_axis} = {label(json.loads(c), col_axis)}" for c in col_values] if col_axis else [""]
    )
    col_thumbs: list[str | None] = [inputs.get(c) for c in col_values] if col_axis else [None]
    rows = [
        SheetRow(
            f"{row_axis} = {label(json.loads(rv), row_axis)}" if row_axis else "",
            inputs.get(rv) if row_axis else None,
            [[make_tile(r, shown, thumbs) for r in cell] for cell in chosen],
            hidden,
        )
        for rv, shown, chosen, hidden in picked
    ]
    return Sheet(row_axis, col_axis, col_labels, col_thumbs, rows,
                 sum(sum(h) for *_, h in picked))  # fmt: skip


def input_thumbs(
    store: storage.Store, results: list[dict[str, Any]], axes: tuple[str | None, str | None],
    most: int = 60,
) -> dict[str, str | None]:  # fmt: skip
    """Thumbnails of the content/style images that head the sheet's rows or columns."""
    keys = [k for a in axes if a in INPUT_AXES for k in axis_values(results, a)][:most]

    def one(key: str) -> tuple[str, str | None]:
        value = json.loads(key)
        uri = value[0] if isinstance(value, list) and value else value
        data = figures.thumbnail(store.resolve(uri), store.options, 96) if uri else None
        return key, figures.data_uri(data, "image/jpeg") if data else None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(pool.map(one, keys))


def tiles_per_cell(layout_: list, max_tiles: int) -> int:
    """Tiles per cell so the sheet stays near ``max_tiles`` (every cell shows at least one)."""
    sizes = [len(hits) for _, cells in layout_ for _, hits in cells]
    if sum(sizes) <= max_tiles:
        return max(sizes, default=0)
    filled = sum(1 for n in sizes if n) or 1
    return max(1, max_tiles // filled)
