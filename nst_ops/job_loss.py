"""The one honest measure of a stylised image: the job's own objective (alpha * content + beta *
style + TV, its layers, w_l and style preparation, at the job's size), which is what the
optimiser minimises and what a style network is trained for, with the unstyled photo as the
zero point.

A fixed evaluator (nst_ops.scores) compares jobs of different settings, but it cannot rank a
network against the optimiser of one setting: measured on two photos, it put the unstyled
photo within 2x of the optimiser, where the job's own objective puts it 4-5x away. So every
comparison of network, optimised and refined outputs of one job states:

    gap closure = (photo - output) / (photo - optimised)

1 is the optimiser's quality, 0 the photo's; the network-alone target ">= 75%" is "<= 2x
the optimiser's loss" wherever the photo is at least 5x (above 5x, 75% closure is the stricter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .image_ops import hw_of, luminance, resize
from .spec import JobSpec
from .transfer import _prepare, compute_targets, make_objective
from .vgg import VGGFeatures

# What defines a job's objective (how it is reached: optimizer, lr, iterations, init... does not)
OBJECTIVE_FIELDS = (
    "mode", "backbone", "pooling", "weights", "content_layers", "style_layers",
    "style_layer_weights", "content_weight", "style_weight", "tv_weight", "size", "style_scale",
    "style_blend", "preserve_color",
)  # fmt: skip


def same_objective(a: JobSpec, b: JobSpec) -> bool:
    """Whether two jobs minimise the same function (so their losses compare)."""
    return all(getattr(a, f) == getattr(b, f) for f in OBJECTIVE_FIELDS)


@torch.no_grad()
def job_losses(
    extractor: VGGFeatures,
    spec: JobSpec,
    images: Sequence[Tensor],
    content: Tensor,
    styles: Sequence[Tensor],
) -> list[float]:
    """The job's total loss of each image ((3,H,W) or (1,3,H,W), any size: resized to the
    output size the job gives ``content``), for the content photo and style images (3,h,w)
    the job was given. The targets are computed once for all the images."""
    device = extractor.mean.device
    c, prepared, hw = _prepare(spec, spec.size, content, styles, device)
    targets = compute_targets(extractor, spec, c, prepared, hw)
    objective = make_objective(extractor, [spec], targets)
    found = []
    for image in images:
        x = image if image.dim() == 4 else image[None]
        x = x.to(device, torch.float32)
        x = x if hw_of(x) == hw else resize(x, hw)
        if spec.preserve_color:  # the optimiser works on luminance, so is it measured
            x = luminance(x)
        found.append(float(objective(x).total[0]))
    return found


def gap_closure(photo: float, output: float, optimised: float) -> float | None:
    """(photo - output) / (photo - optimised): the share of the way from the unstyled photo to
    the optimiser's result that ``output`` covers (None where the optimiser did not improve on
    the photo, so there is no way to cover)."""
    gap = photo - optimised
    return None if gap <= 0 else (photo - output) / gap
