"""`nst report` on an `nst apply` run: which network, the score distribution, a contact sheet
(photo beside its stylised output), the failures, and with --compare RUN the same photos from
an `nst run`: network vs optimisation vs refinement (init=model:), in the job's own objective
with the unstyled photo as the zero point (nst_ops.job_loss).

One self-contained HTML page (jinja2, autoescaped: paths and names are data, never markup)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nst_ops.job_loss import gap_closure, same_objective
from nst_ops.spec import JobSpec
from pipeline.errors import NstError
from pipeline.report import figures
from pipeline.report.page import TEMPLATES
from pipeline.run import scoring
from pipeline.store import layout as run_layout
from pipeline.store import storage
from pipeline.store.results import collect
from pipeline.stylenet import apply_record, layout
from pipeline.stylenet.apply import kept_of_photo


def is_apply_run(store: storage.Store) -> bool:
    return store.exists(layout.APPLY_RECORD)


def loss(alpha: float, beta: float, row: dict[str, Any]) -> float | None:
    """The job's own objective under the evaluator: alpha * content + beta * style."""
    c, s = row.get("score_content"), row.get("score_style")
    return None if c is None or s is None else alpha * c + beta * s


def histogram(values: Sequence[float], bins: int = 24) -> list[dict[str, Any]]:
    """Bars over log10(loss): the distribution of a collection's scores."""
    logs = [math.log10(v) for v in values if v > 0]
    if not logs:
        return []
    lo, hi = min(logs), max(logs)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in logs:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    top = max(counts)
    return [{"from": 10 ** (lo + k * width), "to": 10 ** (lo + (k + 1) * width), "n": n,
             "h": round(100 * n / top)} for k, n in enumerate(counts)]  # fmt: skip


def _thumbs(uris: Sequence[str | None], so: dict | None) -> list[str | None]:
    def one(uri: str | None) -> str | None:
        data = figures.thumbnail(uri, so) if uri else None
        return figures.data_uri(data, "image/jpeg") if data else None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, uris))


def _comparison(
    rows: list[dict[str, Any]], run: str, so: dict | None, spec: JobSpec
) -> list[dict[str, Any]]:
    """Per photo present in both runs, in the job's own objective (nst_ops.job_loss): the
    unstyled photo's loss (the zero point), the network's, the best optimised job's and the
    best refined job's (their optimiser's own final loss), each with the share of the gap
    from the photo to the optimiser that it closes. Only jobs with the network's objective
    (same α, β, layers, size, style preparation) compare; others are left out."""
    store = storage.Store(run, so)
    jobs, _ = collect(store)
    by_photo: dict[str, dict[str, Any]] = {}
    for j in jobs:
        if j.get("status") != "ok" or not j.get("image_uri") or j.get("content_uri") is None:
            continue
        if j.get("final_total") is None or not same_objective(scoring.spec_of(j), spec):
            continue
        kind = "refined" if str(j.get("init", "")).startswith("model:") else "optimised"
        best = by_photo.setdefault(j["content_uri"], {}).get(kind)
        if best is None or j["final_total"] < best["loss"]:
            entry = {"loss": j["final_total"], "image": store.resolve(j["image_uri"])}
            by_photo[j["content_uri"]][kind] = entry
    out = []
    for r in rows:
        found = by_photo.get(r["input_uri"]) or by_photo.get(r["input_uri"].split("://")[-1])
        if found and r["status"] == "ok" and r.get("objective") is not None:
            c = {"input": r["input"], "photo": r["objective_photo"],
                 "network": {"loss": r["objective"], "image": r["_out"]}, **found}  # fmt: skip
            out.append(_closures(c))
    return out


def _closures(c: dict[str, Any]) -> dict[str, Any]:
    best = c.get("optimised", {}).get("loss")
    for kind in ("network", "optimised", "refined"):
        if kind in c and best is not None:
            c[kind]["closure"] = gap_closure(c["photo"], c[kind]["loss"], best)
    return c


def write_apply_report(
    out: str, so: dict | None, compare: str | None = None, max_tiles: int = 60
) -> tuple[str, dict[str, Any]]:
    """Render OUT/report.html for an apply run; returns its URL and the headline numbers."""
    store = storage.Store(out, so)
    record = json.loads(store.get(layout.APPLY_RECORD))
    rows = apply_record.read_all(store)[0].to_pylist()
    if not rows:
        raise NstError(f"{out}: no results to report (run `nst apply` first)")
    spec = record["model"]["spec"]
    ab = (spec["content_weight"], spec["style_weight"])
    for r in rows:
        r["loss"] = loss(*ab, r)
        r["_out"] = store.resolve(r["output"]) if r.get("output") else None
    ok = [r for r in rows if r["status"] == "ok"]
    sample = sorted(random.Random(0).sample(ok, min(max_tiles, len(ok))), key=lambda r: r["input"])
    thumbs = _thumbs([u for r in sample for u in (r["input_uri"], r["_out"])], so)
    tiles = [{"row": r, "photo": thumbs[2 * k], "output": thumbs[2 * k + 1]}
             for k, r in enumerate(sample)]  # fmt: skip
    compared = _comparison(rows, compare, so, JobSpec.from_dict(spec)) if compare else []
    for c in compared:
        kinds = [k for k in ("network", "optimised", "refined") if k in c]
        for k, t in zip(kinds, _thumbs([c[k]["image"] for k in kinds], so), strict=True):
            c[k]["thumb"] = t
    losses = sorted(r["loss"] for r in ok if r["loss"] is not None)
    kept = sorted(kept_of_photo(ok).values())
    closures = [
        c["network"]["closure"] for c in compared if c["network"].get("closure") is not None
    ]
    headline = {
        "images": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "scored": len(losses),
        "median_loss": losses[len(losses) // 2] if losses else None,
        "median_kept": kept[len(kept) // 2] if kept else None,
        "median_closure": sorted(closures)[len(closures) // 2] if closures else None,
    }  # fmt: skip
    page = TEMPLATES.get_template("apply_report.html").render(
        out=out, record=record, spec=spec, headline=headline, bars=histogram(losses),
        tiles=tiles, failed=[r for r in rows if r["status"] != "ok"], compared=compared,
        live=store.exists(run_layout.LEASE), model_gap=record["model"].get("holdout_gap"),
    )  # fmt: skip
    store.put(run_layout.REPORT, page.encode())
    return store.url(run_layout.REPORT), headline
