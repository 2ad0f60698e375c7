"""The training objective of a style network: the grid job's own loss (alpha * content +
beta * style + TV, its layers and w_l) between the network's output and its input photo.
The style targets are computed once; the content targets are the input batch's features."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..image_ops import fit_longer_side, resize
from ..loop import Terms
from ..spec import JobSpec
from ..transfer import Targets, compute_targets
from ..vgg import VGGFeatures
from ..vocab import Mode


class StyleObjective:
    """``objective(output, photos)`` -> per-image Terms, exactly the loss an optimisation job
    with ``spec`` would minimise for that photo. ``crop`` is the training size: the style is
    prepared as the job would prepare it for a ``crop`` x ``crop`` output (resized to it with
    ``style_scale=content``; longer side ``crop`` with ``own``, Grams rescaled per layer)."""

    def __init__(self, extractor: VGGFeatures, spec: JobSpec, styles: list[Tensor], crop: int):
        if spec.mode != Mode.TRANSFER:
            raise ValueError(f"a style network learns style transfer, not mode {spec.mode!r}")
        self.extractor, self.spec = extractor, spec
        device = extractor.mean.device
        hw = (crop, crop)
        prepared = [
            (resize(s, hw) if spec.style_scale == "content" else fit_longer_side(s, crop)).to(
                device
            )
            for s in styles
        ]
        style_only = dataclasses.replace(spec, mode=Mode.STYLE.value, init="noise")
        self.style_targets = compute_targets(extractor, style_only, None, prepared, hw).style

    def __call__(self, output: Tensor, photos: Tensor) -> Terms:
        from ..transfer import make_objective

        with torch.no_grad():
            content = self.extractor.features_at(photos, self.spec.content_layers)
        n = output.shape[0]
        style = {k: v.expand(n, *v.shape[1:]) for k, v in self.style_targets.items()}
        objective = make_objective(self.extractor, [self.spec] * n, Targets(content, style))
        return objective(output)
