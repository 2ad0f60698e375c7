"""Deciding from a grid: the Pareto front of (score_content, score_style), the top jobs by a
chosen trade-off, and the effect of each grid axis (median score per value).

Only jobs scored under one evaluator compare; the report passes those. Lower is better on both
scores. Plain Python over result rows: 10,000 jobs take milliseconds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from nst_ops.evaluator import SCORES


def value_key(value: Any) -> str:
    """An axis value as a hashable, comparable key (lists and numbers alike)."""
    return json.dumps(value, sort_keys=True, default=str)


class Rank(str, Enum):
    STYLE = "style"  # closest to the style
    CONTENT = "content"  # closest to the content
    PARETO = "pareto"  # non-dominated first, then balanced between the two


def _both(r: dict[str, Any]) -> bool:
    return all(isinstance(r.get(k), int | float) for k in SCORES)


def pareto_layers(rows: Sequence[dict[str, Any]], depth: int | None = None) -> list[list[dict]]:
    """Non-dominated sorting: layer 0 is the Pareto front, layer 1 the front of the rest, ...
    Each layer is sorted by score_content (so it draws as a staircase)."""
    left = sorted((r for r in rows if _both(r)), key=lambda r: (r[SCORES[0]], r[SCORES[1]]))
    layers: list[list[dict]] = []
    while left and (depth is None or len(layers) < depth):
        front: list[dict[str, Any]] = []
        rest: list[dict[str, Any]] = []
        best = float("inf")
        for r in left:  # sorted by content: on the front iff its style beats all before it
            (front if r[SCORES[1]] < best else rest).append(r)
            best = min(best, r[SCORES[1]])
        layers.append(front)
        left = rest
    return layers


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    layers = pareto_layers(rows, depth=1)
    return layers[0] if layers else []


def ranked(rows: Sequence[dict[str, Any]], by: Rank, n: int) -> list[dict[str, Any]]:
    """The best ``n`` jobs by ``by``. Pareto: front layers in order; within a layer the jobs
    nearest the middle of both score ranges (ranks summed) first."""
    if by is Rank.STYLE:
        return sorted((r for r in rows if r.get(SCORES[1]) is not None), key=_by(SCORES[1]))[:n]
    if by is Rank.CONTENT:
        return sorted((r for r in rows if r.get(SCORES[0]) is not None), key=_by(SCORES[0]))[:n]
    out: list[dict[str, Any]] = []
    for layer in pareto_layers(rows):
        pos = {id(r): i for i, r in enumerate(layer)}  # content rank; style rank is reversed
        out += sorted(layer, key=lambda r: abs(2 * pos[id(r)] - (len(layer) - 1)))
        if len(out) >= n:
            break
    return out[:n]


def _by(key: str) -> Any:
    return lambda r: (r[key], r["job_id"])


@dataclass
class Effect:
    """One axis: per value, how many scored jobs and their median scores; the best value per
    score (lowest median)."""

    axis: str
    values: list[tuple[Any, int, float | None, float | None]]  # value, n, med content, med style
    best: dict[str, Any]


def effects(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[Effect]:
    out = []
    for axis in axes:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            for v in members(r, axis):
                groups.setdefault(value_key(v), []).append(r)
        values = []
        for key, group in groups.items():
            meds = [_median(group, k) for k in SCORES]
            values.append((json.loads(key), len(group), meds[0], meds[1]))
        best = {}
        for i, k in enumerate(SCORES):
            scored: list[tuple[float, Any]] = []
            for value, _, med_content, med_style in values:
                med = (med_content, med_style)[i]
                if med is not None:
                    scored.append((med, value))
            if len(scored) > 1:
                best[k] = min(scored, key=lambda m: m[0])[1]
        out.append(Effect(axis, values, best))
    return out


def _median(group: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in group if isinstance(r.get(key), int | float)]
    return statistics.median(xs) if xs else None


def members(r: dict[str, Any], axis: str) -> list[Any]:
    """A tag shared by several manifest rows holds a list: the job counts under each value."""
    v = r.get(axis)
    return list(v) if axis.startswith("tag_") and isinstance(v, list) and v else [v]
