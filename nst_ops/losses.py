"""The study's losses, each returning one value per image (shape ``(B,)``).

Per-image values keep a batch of jobs exactly separable: summing them gives every image the same
gradient it would get alone. Everything here runs in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def content_loss(F: Tensor, P: Tensor) -> Tensor:
    """L_content = 1/2 * sum_ij (F_ij - P_ij)^2."""
    return 0.5 * (F.float() - P.float()).pow(2).flatten(1).sum(1)


def gram(F: Tensor) -> Tensor:
    """G = V^T V per image, V's columns the N vectorised feature maps (batched with bmm)."""
    b, n = F.shape[:2]
    V = F.float().reshape(b, n, -1)
    return torch.bmm(V, V.transpose(1, 2))


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


def total_loss(
    content: Tensor,
    style: Tensor,
    tv: Tensor,
    alpha: Tensor | float,
    beta: Tensor | float,
    tv_weight: Tensor | float,
) -> Tensor:
    """L_total = alpha * L_content + beta * L_style (+ tv_weight * TV)."""
    return alpha * content + beta * style + tv_weight * tv
