"""Scoring results under the run's evaluator (nst_ops.scores), in the worker right after a job
and again with `nst score`: the same function on the same saved PNG, so both give the same
numbers. Scoring never fails a job: a problem is recorded as ``score_error``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nst_ops.evaluator import SCORE_FIELDS, SCORES, Evaluator, score_key
from nst_ops.image_ops import fit_longer_side, hw_of, resize
from nst_ops.scores import scores
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures
from pipeline.errors import NstError
from pipeline.run import images, weights
from pipeline.store import earlier_runs, layout, record, storage

_NETS: dict[tuple[Evaluator, str], VGGFeatures] = {}


def network(
    ev: Evaluator, device: torch.device, storage_options: dict | None = None
) -> VGGFeatures:
    """One evaluator network per process and device, in the default memory layout (the same
    kernels in the worker and in `nst score`)."""
    key = (ev, str(device))
    if key not in _NETS:
        _, seed = weights.parse(ev.weights)
        sd = weights.cached_state_dict(ev.weights, ev.backbone, storage_options)
        net = VGGFeatures(ev.backbone, ev.layers, ev.pooling, state_dict=sd, seed=seed)
        _NETS[key] = net.to(device)
    return _NETS[key]


def score_image(
    ev: Evaluator,
    data: bytes,
    spec: JobSpec,
    content: torch.Tensor | None,
    styles: Sequence[torch.Tensor],
    device: torch.device,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Scores of a saved result (as stored: 8-bit, in its file format) against its decoded
    inputs (3,H,W): content at the result's size, styles prepared as the job prepared them
    (its ``style_scale``; see nst_ops.evaluator.score_key)."""
    key = score_key(ev, spec)
    try:
        x = images.decode(data, "result").unsqueeze(0).to(device)
        hw = hw_of(x)
        c = None
        if content is not None and spec.uses_content:
            c = resize(content, hw).to(device)
        own = spec.style_scale == "own" or not spec.uses_content
        s = [(fit_longer_side(t, max(hw)) if own else resize(t, hw)).to(device) for t in styles]
        net = network(ev, device, storage_options)
        found = scores(net, ev, x, c, s, spec.style_blend)
        return {**dict.fromkeys(SCORES), **found, "score_by": key, "score_error": None}
    except Exception as e:  # noqa: BLE001  (a score is extra information, never the job's fate)
        return {**dict.fromkeys(SCORES), "score_by": key, "score_error": f"{e}"}


def rescore(
    store: storage.Store,
    rows: list[dict[str, Any]],
    ev: Evaluator,
    device: torch.device,
    max_pixels: int,
) -> list[dict[str, Any]]:
    """`nst score`: score the committed ``rows`` again under ``ev`` without optimising; each
    job's record is rewritten whole with the new scores. Returns the updated rows."""
    decoded: dict[str, torch.Tensor] = {}

    def image(uri: str) -> torch.Tensor:
        if uri not in decoded:
            decoded[uri] = images.decode(storage.read_input(uri, store.options), uri, max_pixels)
        return decoded[uri]

    for row in rows:
        if not row.get("image_uri"):
            continue
        spec = spec_of(row)
        try:
            content = image(row["content_uri"]) if spec.uses_content else None
            styles = [image(u) for u in row.get("style_uris") or []]
            data = storage.read_bytes(store.resolve(row["image_uri"]), store.options)
        except (OSError, NstError) as e:
            row.update(dict.fromkeys(SCORES), score_error=f"could not read: {e}",
                       score_by=score_key(ev, spec))  # fmt: skip
            continue
        row.update(score_image(ev, data, spec, content, styles, device, store.options))
        _rewrite(store, row)
    return rows


def spec_of(row: dict[str, Any]) -> JobSpec:
    names = JobSpec.field_names()
    return JobSpec.from_dict({k: v for k, v in row.items() if k in names and v is not None})


def _rewrite(store: storage.Store, row: dict[str, Any]) -> None:
    """The record with the new scores, written whole: result.parquet (same trace), or for a
    job of an earlier run its job.json, then its marker (still last)."""
    scored = {k: row.get(k) for k in SCORE_FIELDS}
    result = layout.job_path(row["job_id"], layout.RESULT)
    try:
        data = store.get(result)
    except FileNotFoundError:
        _rewrite_v1(store, row, scored)
        return
    store.put(result, record.with_record(data, {**record.read_record(data), **scored}))


def _rewrite_v1(store: storage.Store, row: dict[str, Any], scored: dict[str, Any]) -> None:
    try:
        record_bytes: bytes | None = store.get(earlier_runs.record_path(row["job_id"]))
    except OSError:
        record_bytes = None
    for path, doc in earlier_runs.rescored(record_bytes, row, scored).items():
        store.put_json(path, doc)
