"""`nst models`: the registry is just files. Every model.pt below a root (one recursive
listing), with the parameters it was trained under, its fingerprint and held-aside scores."""

from __future__ import annotations

from typing import Any

from pipeline.run.model_file import ModelError, from_bytes
from pipeline.store import storage
from pipeline.stylenet import layout


def find_models(root: str, so: dict | None = None) -> list[dict[str, Any]]:
    """One row per model file under ``root`` (a model.pt URL works too); unreadable files are
    listed with their error rather than hidden."""
    fs, path = storage.filesystem(root, so)
    if fs.isfile(path):
        paths = [path]
    else:
        paths = sorted(p for p in fs.find(path) if p.rsplit("/", 1)[-1] == layout.MODEL)
    return [_row(fs.unstrip_protocol(p), so) for p in paths]


def _row(uri: str, so: dict | None) -> dict[str, Any]:
    try:
        model = from_bytes(storage.read_bytes(uri, so), uri)
    except (ModelError, OSError) as e:  # listed as bad; the listing goes on
        return {"model": uri, "error": str(e)}
    m, spec = model.meta, model.meta["spec"]
    scores = m.get("holdout_scores") or {}
    loss = None
    if scores.get("score_content") is not None:
        loss = spec["content_weight"] * scores["score_content"]
        loss += spec["style_weight"] * scores["score_style"]
    return {
        "model": uri,
        "fingerprint": model.fingerprint,
        "style": ",".join(u.rsplit("/", 1)[-1] for u in m.get("style_uris", [])),
        "content_weight": spec["content_weight"],
        "style_weight": spec["style_weight"],
        "content_layers": ",".join(spec["content_layers"]),
        "style_layers": ",".join(spec["style_layers"]),
        "weights": spec["weights"],
        "width": model.net.config.width,
        "steps": m.get("steps"),
        "crop": m.get("crop"),
        "final_loss": m.get("final_loss"),
        "holdout_score": loss,
        "gap_closure": (m.get("holdout_gap") or {}).get("median_gap_closure"),
        "ratio_to_optimised": (m.get("holdout_gap") or {}).get("median_ratio_to_optimised"),
        "from_job": (m.get("from_job") or {}).get("job_id"),
        "error": None,
    }
