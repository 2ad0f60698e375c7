"""The study's losses, each returning one value per image (shape ``(B,)``).

Per-image values keep a batch of jobs exactly separable: summing them gives every image the same
gradient it would get alone. Everything here runs in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .spec import JobSpec


def content_loss(F: Tensor, P: Tensor) -> Tensor:
    """L_content = 1/2 * sum_ij (F_ij - P_ij)^2."""
    return 0.5 * (F.float() - P.float()).pow(2).flatten(1).sum(1)


class _Gram(torch.autograd.Function):
    """G = V V^T with a one-matmul backward, dV = (dG + dG^T) V. Autograd's own backward of
    ``bmm(V, V^T)`` does one matmul per use of V (one through a transposed operand) and adds
    them: 2.1-2.7x slower at relu1_1 of a 256 px image, 7-15% of a whole iteration there
    (bench/gram.py)."""

    @staticmethod
    def forward(ctx: Any, V: Tensor) -> Tensor:
        ctx.save_for_backward(V)
        return torch.bmm(V, V.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, dG: Tensor) -> Tensor:
        (V,) = ctx.saved_tensors
        return torch.bmm(dG + dG.transpose(1, 2), V)


def gram(F: Tensor) -> Tensor:
    """G = V^T V per image, V's columns the N vectorised feature maps (batched with bmm)."""
    b, n = F.shape[:2]
    G: Tensor = _Gram.apply(F.float().reshape(b, n, -1))
    return G


def style_layer_loss(G: Tensor, A: Tensor, n: int, m: int) -> Tensor:
    """E_l = 1 / (4 N_l^2 M_l^2) * sum_ij (G_ij - A_ij)^2."""
    return (G - A).pow(2).flatten(1).sum(1) / (4.0 * n * n * m * m)


def tv_loss(x: Tensor) -> Tensor:
    """Squared total variation: sum of squared differences between neighbouring pixels."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).sum(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).sum(1)
    return dh + dw


def style_losses(feats: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """E_l for every layer in ``targets`` (Gram targets, shape (B or 1, N, N))."""
    out = {}
    for name, A in targets.items():
        F = feats[name]
        n, m = F.shape[1], F.shape[2] * F.shape[3]
        out[name] = style_layer_loss(gram(F), A, n, m)
    return out


def weighted_style(per_layer: Mapping[str, Tensor], weights: Sequence[float]) -> Tensor:
    """L_style = sum_l w_l E_l."""
    terms = [w * e for w, e in zip(weights, per_layer.values(), strict=True)]
    return torch.stack(terms).sum(0)


def total_loss(values: Sequence[Tensor], weights: Sequence[Tensor | float]) -> Tensor:
    """L_total = alpha * L_content + beta * L_style (+ tv_weight * TV): each term times its
    weight, summed in registry order."""
    total = weights[0] * values[0]
    for w, v in zip(weights[1:], values[1:], strict=True):
        total = total + w * v
    return total


@dataclass(frozen=True)
class TermInputs:
    """What a loss term may look at: the images, their features, the targets, w_l."""

    x: Tensor  # (B,3,H,W) the images being optimised
    feats: Mapping[str, Tensor]  # their features at the job's active layers
    content: Mapping[str, Tensor]  # content targets P_l
    style: Mapping[str, Tensor]  # style Gram targets A_l
    layer_weights: Tensor | None  # (style layers, B): w_l per image


@dataclass(frozen=True)
class LossTerm:
    """A named term of L_total. ``value`` gives its per-image value and named details for the
    trace; ``weight`` gives a job's weight for it, or None where the term does not apply (then
    it is not computed and traces as 0)."""

    value: Callable[[TermInputs], tuple[Tensor, dict[str, Tensor]]]
    weight: Callable[[JobSpec], float | None]


def _content_term(i: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
    total = i.x.new_zeros(i.x.shape[0])
    for name, p in i.content.items():
        total = total + content_loss(i.feats[name], p)
    return total, {}


def _style_term(i: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
    per_layer = style_losses(i.feats, i.style)
    if not per_layer or i.layer_weights is None:
        return i.x.new_zeros(i.x.shape[0]), {}
    value = weighted_style(per_layer, list(i.layer_weights))
    return value, {f"style_{k}": v for k, v in per_layer.items()}


def _tv_term(i: TermInputs) -> tuple[Tensor, dict[str, Tensor]]:
    return tv_loss(i.x), {}


# The terms of L_total, in the order they are summed and traced. Adding one is one entry (its
# value and the job parameter that weighs it); traces, results and reports pick it up by name.
TERMS: dict[str, LossTerm] = {
    "content": LossTerm(_content_term, lambda s: s.content_weight if s.uses_content else None),
    "style": LossTerm(_style_term, lambda s: s.style_weight if s.uses_style else None),
    "tv": LossTerm(_tv_term, lambda s: s.tv_weight or None),
}
