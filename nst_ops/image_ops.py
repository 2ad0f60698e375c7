"""Image tensors (3,H,W) or (1,3,H,W) in [0,1]: sizes, resizing and the colour space that
colour preservation works in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# YIQ (NTSC): luminance Y plus chrominance I, Q, as in Gatys et al., "Preserving colour".
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hw_of(img: Tensor) -> tuple[int, int]:
    return int(img.shape[-2]), int(img.shape[-1])


def _fit(hw: tuple[int, int], size: int) -> tuple[int, int]:
    h, w = hw
    s = size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _need(x: Tensor | None, what: str) -> Tensor:
    if x is None:
        raise ValueError(f"this job needs a {what} image")
    return x


def fit_longer_side(img: Tensor, size: int) -> Tensor:
    """(3,H,W) -> (1,3,h,w) with max(h,w) == size, aspect ratio kept (antialiased)."""
    return resize(img, _fit(hw_of(img), size))


def resize(img: Tensor, hw: tuple[int, int]) -> Tensor:
    x = img if img.dim() == 4 else img.unsqueeze(0)
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(
        0, 1
    )


def rgb_to_yiq(x: Tensor) -> Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB2YIQ.to(x), x)


def yiq_to_rgb(x: Tensor) -> Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2YIQ).to(x), x)


def luminance(x: Tensor) -> Tensor:
    """The Y channel repeated over RGB, so the network sees a grey image."""
    return rgb_to_yiq(x)[:, :1].repeat(1, 3, 1, 1)


def match_luminance(style_y: Tensor, content_y: Tensor) -> Tensor:
    """Shift/scale the style's luminance to the content's mean and std (luminance-only transfer)."""
    s_mu, s_sd = style_y.mean(), style_y.std().clamp_min(1e-6)
    c_mu, c_sd = content_y.mean(), content_y.std()
    return ((style_y - s_mu) / s_sd * c_sd + c_mu).clamp(0, 1)
