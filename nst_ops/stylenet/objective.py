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
    with ``spec`` would minimise for that photo at the output's size. The style is prepared as
    the job would prepare it for an output of that shape (``style_scale=content``: resized to
    it; ``own``: longer side at the output's, Grams rescaled per layer), once per shape: a
    network trained on crops of several aspects learns the target it is judged by for photos
    of any aspect, not only the square crop's."""

    def __init__(self, extractor: VGGFeatures, spec: JobSpec, styles: list[Tensor], crop: int):
        if spec.mode != Mode.TRANSFER:
            raise ValueError(f"a style network learns style transfer, not mode {spec.mode!r}")
        self.extractor, self.spec, self.styles = extractor, spec, styles
        self._style: dict[tuple[int, int], dict[str, Tensor]] = {}
        self.style_for((crop, crop))  # the square crop's Grams, before the first step

    def style_for(self, hw: tuple[int, int]) -> dict[str, Tensor]:
        """The style Grams for outputs of ``hw`` (computed once per shape)."""
        if hw not in self._style:
            device = self.extractor.mean.device
            own = self.spec.style_scale == "own"
            prepared = [(fit_longer_side(s, max(hw)) if own else resize(s, hw)).to(device)
                        for s in self.styles]  # fmt: skip
            style_only = dataclasses.replace(self.spec, mode=Mode.STYLE.value, init="noise")
            self._style[hw] = compute_targets(self.extractor, style_only, None, prepared, hw).style
        return self._style[hw]

    def __call__(
        self, output: Tensor, photos: Tensor, style_hw: tuple[int, int] | None = None
    ) -> Terms:
        """``style_hw``: the output shape whose style target applies (default the output's).
        A smaller crop cut at the same scale is judged as its part of that whole: its Grams
        against the whole's target rescaled to its own positions at each layer (a Gram sums
        over positions), and the style term weighted by its share of the pixels (the content
        and TV terms are sums over pixels already: without the share, each pixel of a quarter
        crop would feel four times the style pull it has in the whole picture)."""
        from ..transfer import make_objective, positions_ratio

        with torch.no_grad():
            content = self.extractor.features_at(photos, self.spec.content_layers)
        n, hw, spec = output.shape[0], (int(output.shape[-2]), int(output.shape[-1])), self.spec
        targets = self.style_for(style_hw or hw)
        if style_hw is not None and style_hw != hw:
            targets = {
                k: v * positions_ratio(spec.backbone, k, hw, style_hw) for k, v in targets.items()
            }
            share = hw[0] * hw[1] / (style_hw[0] * style_hw[1])
            spec = dataclasses.replace(spec, style_weight=spec.style_weight * share)
        style = {k: v.expand(n, *v.shape[1:]) for k, v in targets.items()}
        objective = make_objective(self.extractor, [spec] * n, Targets(content, style))
        return objective(output)
