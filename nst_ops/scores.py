"""Scores under one fixed evaluator: numbers that compare across every job of a run.

A job's own losses are weighted by its own alpha, beta, layers and w_l, so they say nothing
across the very axes a grid varies. The evaluator is one network and one set of layers for the
whole run; every result is measured by it against its own inputs:

- ``score_content`` = mean over positions and channels of (F_x - F_c)^2 at the content layer
  (the study's content loss without the 1/2, normalised by the feature size N*M);
- ``score_style`` = mean over the style layers of 1/(4 N^2) * sum (G_x/M_x - A/M_a)^2, the
  study's E_l with each Gram divided by its own number of positions, so a style image of another
  size than the result is measured fairly; ``A`` blends several styles with the job's weights.

Lower is closer. Pure tensors in, numbers out: the pipeline decides which images and network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .evaluator import Evaluator
from .losses import gram
from .vgg import VGGFeatures


def _normalised_gram(f: Tensor) -> Tensor:
    return gram(f) / (f.shape[-2] * f.shape[-1])


@torch.no_grad()
def scores(
    net: VGGFeatures,
    ev: Evaluator,
    result: Tensor,
    content: Tensor | None,
    styles: Sequence[Tensor],
    blend: Sequence[float] | None = None,
) -> dict[str, float]:
    """Scores of one result (1,3,H,W); ``content`` already at the result's size. No content
    (style reconstruction, layer sweeps): ``score_style`` only."""
    fx = net.features_at(result, ev.layers)
    out: dict[str, float] = {}
    if content is not None:
        fc = net.features_at(content, (ev.content_layer,))[ev.content_layer]
        out["score_content"] = (fx[ev.content_layer] - fc).pow(2).mean().item()
    if styles:
        w = list(blend) if blend is not None else [1.0] * len(styles)
        total = sum(w)
        feats = [net.features_at(s, ev.style_layers) for s in styles]
        per_layer = []
        for layer in ev.style_layers:
            grams = [_normalised_gram(f[layer]) for f in feats]
            target = sum(wi / total * g for wi, g in zip(w, grams, strict=True))
            gx = _normalised_gram(fx[layer])
            n = gx.shape[-1]
            per_layer.append(((gx - target).pow(2).sum() / (4.0 * n * n)).item())
        out["score_style"] = sum(per_layer) / len(per_layer)
    return out
