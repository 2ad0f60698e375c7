"""Style transfer, style reconstruction and content reconstruction, plus the layer sweep.

Inputs are RGB tensors (3,H,W) in [0,1] at any size; everything else (resizing, targets, init,
colour preservation, multi-resolution) happens here, on the extractor's device.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses
from .optim import Outcome, Terms, optimize
from .spec import JobSpec
from .vgg import VGGFeatures


def fit_longer_side(img: Tensor, size: int) -> Tensor:
    """(3,H,W) -> (1,3,h,w) with max(h,w) == size, aspect ratio kept (antialiased)."""
    h, w = img.shape[-2:]
    s = size / max(h, w)
    return resize(img, (max(1, round(h * s)), max(1, round(w * s))))


def resize(img: Tensor, hw: tuple[int, int]) -> Tensor:
    x = img if img.dim() == 4 else img.unsqueeze(0)
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(
        0, 1
    )


# YIQ (NTSC): luminance Y plus chrominance I, Q, as in Gatys et al., "Preserving colour".
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


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


@dataclass(frozen=True)
class Targets:
    """Content features P_l and (blended) style Grams A_l, computed once per input set and size."""

    content: dict[str, Tensor]
    style: dict[str, Tensor]


def compute_targets(
    extractor: VGGFeatures,
    spec: JobSpec,
    content: Tensor | None,
    styles: Sequence[Tensor],
    out_hw: tuple[int, int],
) -> Targets:
    """Targets for an output of size ``out_hw``; inputs are already (1,3,h,w) on the device.

    With ``style_scale='own'`` a style's Gram is rescaled by M_x/M_a so E_l compares like with
    like; with the default (style resized to the content's size) the factor is exactly 1.
    """
    with torch.no_grad():
        content_t = {}
        if spec.uses_content:
            feats = extractor(content)
            content_t = {name: feats[name].detach() for name in spec.content_layers}
        style_t: dict[str, Tensor] = {}
        if spec.uses_style:
            blend = spec.style_blend or tuple(1.0 for _ in styles)
            if len(blend) != len(styles):
                raise ValueError(f"style_blend has {len(blend)} weights for {len(styles)} styles")
            total = sum(blend)
            m_x = out_hw[0] * out_hw[1]
            for w, s in zip(blend, styles, strict=True):
                feats = extractor(s)
                for name in spec.style_layers:
                    f = feats[name]
                    m_ratio = m_x / (s.shape[-2] * s.shape[-1])
                    a = losses.gram(f) * (w / total) * m_ratio
                    style_t[name] = style_t[name] + a if name in style_t else a
    return Targets(content_t, style_t)


def make_objective(extractor: VGGFeatures, spec: JobSpec, targets: Targets):
    """x -> per-image Terms for the spec's mode."""
    weights = spec.layer_weights if spec.uses_style else ()
    alpha = spec.content_weight if spec.uses_content else 0.0
    beta = spec.style_weight if spec.uses_style else 0.0

    def objective(x: Tensor) -> Terms:
        feats = extractor(x)
        zero = x.new_zeros(x.shape[0])
        content = zero
        for name, p in targets.content.items():
            content = content + losses.content_loss(feats[name], p)
        per_layer = losses.style_losses(feats, targets.style)
        style = losses.weighted_style(per_layer, weights) if per_layer else zero
        tv = losses.tv_loss(x) if spec.tv_weight else zero
        total = losses.total_loss(content, style, tv, alpha, beta, spec.tv_weight)
        return Terms(total, content, style, tv, per_layer)

    return objective


def _levels(spec: JobSpec) -> list[int]:
    return [spec.size >> (spec.multires - 1 - k) for k in range(spec.multires)]


def _prepare(spec: JobSpec, size: int, content: Tensor | None, styles: Sequence[Tensor], device):
    """Resize inputs for one resolution level; returns (content, styles, output hw)."""
    if spec.uses_content:
        c = fit_longer_side(content, size).to(device)
        hw = tuple(c.shape[-2:])
    else:
        c = None
        hw = tuple(fit_longer_side(styles[0], size).shape[-2:])
    s_list = []
    for s in styles if spec.uses_style or spec.init == "style" else ():
        s = resize(s, hw) if spec.style_scale == "content" else fit_longer_side(s, size)
        s_list.append(s.to(device))
    if spec.preserve_color:
        c_y = luminance(c)
        s_list = [match_luminance(luminance(s), c_y) for s in s_list]
        c = c_y
    return c, s_list, hw


def _init(spec: JobSpec, c: Tensor | None, s_list: list[Tensor], hw, device) -> Tensor:
    if spec.init == "content":
        return c.clone()
    if spec.init == "style":
        return resize(s_list[0], hw).clone()
    gen = torch.Generator().manual_seed(spec.seed)
    return torch.rand((1, 3, *hw), generator=gen).to(device)


def stylize(
    spec: JobSpec,
    extractor: VGGFeatures,
    content: Tensor | None,
    styles: Sequence[Tensor],
) -> Outcome:
    """Run one job in its mode; multi-resolution and colour preservation included."""
    if spec.uses_content and content is None:
        raise ValueError(f"mode {spec.mode!r} needs a content image")
    if (spec.uses_style or spec.init == "style") and not styles:
        raise ValueError(f"mode {spec.mode!r} with init {spec.init!r} needs a style image")
    device = extractor.mean.device
    t0 = time.perf_counter()
    x, result, trace, offset = None, None, [], 0
    for level, size in enumerate(_levels(spec)):
        c, s_list, hw = _prepare(spec, size, content, styles, device)
        targets = compute_targets(extractor, spec, c, s_list, hw)
        x0 = _init(spec, c, s_list, hw, device) if x is None else resize(x, hw).to(device)
        (result,) = optimize(make_objective(extractor, spec, targets), x0, spec, offset, t0)
        for row in result.trace:
            row["level"] = level
        trace += result.trace
        offset += result.iterations
        x = result.image.unsqueeze(0)
        if result.status != "ok":
            break
    result.trace, result.iterations = trace, offset
    if spec.preserve_color:
        yiq = rgb_to_yiq(fit_longer_side(content, spec.size).to(result.image))
        y_out = rgb_to_yiq(result.image.unsqueeze(0))[:, :1]
        result.image = yiq_to_rgb(torch.cat([y_out, yiq[:, 1:]], 1)).clamp(0, 1)[0]
    return result


def sweep_layer_sets(style_layers: Sequence[str]) -> list[tuple[str, ...]]:
    """The study's growing subsets: (l1,), (l1, l2), ..., all layers."""
    return [tuple(style_layers[: k + 1]) for k in range(len(style_layers))]


def layer_sweep(spec: JobSpec, extractor: VGGFeatures, style: Tensor) -> list[Outcome]:
    """Style reconstructions from noise for each growing subset of ``spec.style_layers``."""
    out = []
    for layers in sweep_layer_sets(spec.style_layers):
        sub = dataclasses.replace(spec, mode="style", style_layers=layers, style_layer_weights=None)
        out.append(stylize(sub, extractor, None, [style]))
    return out
