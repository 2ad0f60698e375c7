"""Style transfer, style reconstruction and content reconstruction, plus the layer sweep.

Inputs are RGB tensors (3,H,W) in [0,1] at any size; everything else (resizing, targets, init,
colour preservation, multi-resolution) happens here, on the extractor's device.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, MutableMapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses
from .layers import feature_hw, sweep_layer_sets  # noqa: F401  (sweep: re-exported)
from .optim import LOOP_FIELDS, Outcome, Terms, optimize
from .spec import JobSpec
from .vgg import VGGFeatures


def _fit(h: int, w: int, size: int) -> tuple[int, int]:
    s = size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def fit_longer_side(img: Tensor, size: int) -> Tensor:
    """(3,H,W) -> (1,3,h,w) with max(h,w) == size, aspect ratio kept (antialiased)."""
    return resize(img, _fit(*img.shape[-2:], size))


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
    """Content features P_l and (blended) style Grams A_l; the first dim is the batch."""

    content: dict[str, Tensor]
    style: dict[str, Tensor]


TargetCache = MutableMapping[tuple, Tensor]


def _cached(cache: TargetCache | None, key: tuple | None, make: Callable[[], Tensor]) -> Tensor:
    if cache is None or key is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def compute_targets(
    extractor: VGGFeatures,
    spec: JobSpec,
    content: Tensor | None,
    styles: Sequence[Tensor],
    out_hw: tuple[int, int],
    cache: TargetCache | None = None,
    keys: tuple[Hashable, Sequence[Hashable]] | None = None,
) -> Targets:
    """Targets for one image of size ``out_hw``; inputs are already (1,3,h,w) on the device.

    ``cache`` with ``keys`` (an id for the content and for each style image, e.g. their URIs)
    reuses features and Grams across jobs that share an image, size and network. With
    ``style_scale='own'`` a style's Gram sums over the style's M_a positions at each layer, the
    output's over M_x: it is rescaled by M_x/M_a *at that layer* (pooling floors odd sizes, so the
    image-level ratio is wrong after a pooling); with the default (style resized to the content's
    size) the factor is exactly 1.
    """
    net_id = (id(extractor.features), spec.preserve_color)
    c_key, s_keys = keys if keys is not None else (None, [None] * len(styles))

    with torch.no_grad():
        content_t = {}
        if spec.uses_content:
            hw = tuple(content.shape[-2:])
            for name in spec.content_layers:
                k = None if c_key is None else ("content", c_key, hw, name, net_id)
                content_t[name] = _cached(
                    cache, k, lambda n=name: extractor.features_at(content, [n])[n]
                )
        style_t: dict[str, Tensor] = {}
        if spec.uses_style:
            blend = spec.style_blend or tuple(1.0 for _ in styles)
            if len(blend) != len(styles):
                raise ValueError(f"style_blend has {len(blend)} weights for {len(styles)} styles")
            total = sum(blend)
            for w, s, sk in zip(blend, styles, s_keys, strict=True):
                hw = tuple(s.shape[-2:])
                for name in spec.style_layers:
                    k = None if sk is None else ("gram", sk, hw, name, net_id)
                    g = _cached(
                        cache, k, lambda n=name, s=s: losses.gram(extractor.features_at(s, [n])[n])
                    )
                    a = g * (w / total) * _positions_ratio(spec.backbone, name, out_hw, hw)
                    style_t[name] = style_t[name] + a if name in style_t else a
    return Targets(content_t, style_t)


def _positions_ratio(backbone: str, layer: str, out_hw: tuple, style_hw: tuple) -> float:
    """M_x / M_a at ``layer``: output positions over style positions (1 for equal sizes)."""
    (xh, xw), (ah, aw) = feature_hw(backbone, layer, out_hw), feature_hw(backbone, layer, style_hw)
    if ah * aw == 0:
        raise ValueError(f"style image of {style_hw[1]}x{style_hw[0]} px is too small for {layer}")
    return (xh * xw) / (ah * aw)


def stack_targets(targets: Sequence[Targets]) -> Targets:
    return Targets(
        {k: torch.cat([t.content[k] for t in targets]) for k in targets[0].content},
        {k: torch.cat([t.style[k] for t in targets]) for k in targets[0].style},
    )


def make_objective(extractor: VGGFeatures, specs: Sequence[JobSpec], targets: Targets):
    """x (B,3,H,W) -> per-image Terms; alpha, beta, TV and w_l may differ per image."""
    spec = specs[0]
    dev = extractor.mean.device

    def per_image(values: Sequence[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=dev)

    alpha = per_image([s.content_weight if s.uses_content else 0.0 for s in specs])
    beta = per_image([s.style_weight if s.uses_style else 0.0 for s in specs])
    tv_w = per_image([s.tv_weight for s in specs])
    layer_w = per_image([s.layer_weights for s in specs]).T if spec.uses_style else None
    use_tv = bool(tv_w.any())
    layers = spec.active_layers

    def objective(x: Tensor) -> Terms:
        feats = extractor.features_at(x, layers)
        zero = x.new_zeros(x.shape[0])
        content = zero
        for name, p in targets.content.items():
            content = content + losses.content_loss(feats[name], p)
        per_layer = losses.style_losses(feats, targets.style)
        style = losses.weighted_style(per_layer, list(layer_w)) if per_layer else zero
        tv = losses.tv_loss(x) if use_tv else zero
        total = losses.total_loss(content, style, tv, alpha, beta, tv_w)
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


def output_hw(spec: JobSpec, content: Tensor | None, styles: Sequence[Tensor]) -> tuple[int, int]:
    """The output's (h, w): the content's shape (or the first style's) at ``spec.size``."""
    return _fit(*(content if spec.uses_content else styles[0]).shape[-2:], spec.size)


def _init(spec: JobSpec, c: Tensor | None, s_list: list[Tensor], hw, device) -> Tensor:
    if spec.init == "content":
        return c.clone()
    if spec.init == "style":
        return resize(s_list[0], hw).clone()
    gen = torch.Generator().manual_seed(spec.seed)
    return torch.rand((1, 3, *hw), generator=gen).to(device)


# What every image of one batch must share (the rest, e.g. weights, lr, seed, inputs, may vary).
BATCH_FIELDS = (
    "mode",
    "backbone",
    "pooling",
    "weights",
    "amp",
    "content_layers",
    "style_layers",
    "size",
    "multires",
    "style_scale",
    "preserve_color",
    *LOOP_FIELDS,
)


def batchable(spec: JobSpec) -> bool:
    """Adam/SGD at one resolution: L-BFGS couples its parameters, and in a multi-resolution
    schedule one diverging image would stop its batch-mates at a lower level."""
    return spec.optimizer != "lbfgs" and spec.multires == 1


def batch_key(spec: JobSpec) -> tuple:
    """Jobs with equal keys (and equal output sizes) can share one forward/backward."""
    return tuple(getattr(spec, f) for f in BATCH_FIELDS)


def stylize_batch(
    specs: Sequence[JobSpec],
    extractor: VGGFeatures,
    contents: Sequence[Tensor | None],
    styles: Sequence[Sequence[Tensor]],
    cache: TargetCache | None = None,
    keys: Sequence[tuple[Hashable, Sequence[Hashable]]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[Outcome]:
    """Run several jobs as one batch (one forward/backward per step); exact per image for Adam
    and SGD. L-BFGS batches must have one image. ``cache``/``keys``: see compute_targets."""
    spec = specs[0]
    if any(batch_key(s) != batch_key(spec) for s in specs):
        raise ValueError(f"jobs in one batch must agree on {', '.join(BATCH_FIELDS)}")
    if len(specs) > 1 and spec.multires > 1:
        raise ValueError("multi-resolution jobs run one image at a time")
    for s, c, st in zip(specs, contents, styles, strict=True):
        if s.uses_content and c is None:
            raise ValueError(f"mode {s.mode!r} needs a content image")
        if (s.uses_style or s.init == "style") and not st:
            raise ValueError(f"mode {s.mode!r} with init {s.init!r} needs a style image")
    device = extractor.mean.device
    t0 = time.perf_counter()
    keys = keys or [None] * len(specs)
    x, results, traces, done = None, None, [[] for _ in specs], [0] * len(specs)
    for level, size in enumerate(_levels(spec)):
        prepared = [
            _prepare(s, size, c, st, device)
            for s, c, st in zip(specs, contents, styles, strict=True)
        ]
        hws = {hw for _, _, hw in prepared}
        if len(hws) != 1:
            raise ValueError(f"images in one batch must have one output size, got {sorted(hws)}")
        (hw,) = hws
        targets = stack_targets(
            [
                compute_targets(extractor, s, c, sl, hw, cache, k)
                for s, (c, sl, _), k in zip(specs, prepared, keys, strict=True)
            ]
        )
        if x is None:
            x0 = torch.cat(
                [_init(s, c, sl, hw, device) for s, (c, sl, _) in zip(specs, prepared, strict=True)]
            )
        else:
            x0 = resize(x, hw).to(device)
        objective = make_objective(extractor, specs, targets)
        results = optimize(objective, x0, specs, max(done), t0, on_step)
        for i, r in enumerate(results):
            traces[i] += [{**row, "level": level} for row in r.trace]
            done[i] += r.iterations
        x = torch.stack([r.image for r in results])
        if any(r.status != "ok" for r in results):
            break  # a diverged image stops the schedule for its batch; the others keep their best
    for r, trace, n, s, c in zip(results, traces, done, specs, contents, strict=True):
        r.trace, r.iterations = trace, n
        if s.preserve_color:
            yiq = rgb_to_yiq(fit_longer_side(c, s.size).to(r.image))
            y_out = rgb_to_yiq(r.image.unsqueeze(0))[:, :1]
            r.image = yiq_to_rgb(torch.cat([y_out, yiq[:, 1:]], 1)).clamp(0, 1)[0]
    return results


def stylize(
    spec: JobSpec,
    extractor: VGGFeatures,
    content: Tensor | None,
    styles: Sequence[Tensor],
    cache: TargetCache | None = None,
    keys: tuple[Hashable, Sequence[Hashable]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Outcome:
    """Run one job in its mode; multi-resolution and colour preservation included. ``on_step``
    (iteration, loss) is called after every step, e.g. for a progress display."""
    ks = [keys] if keys else None
    (out,) = stylize_batch([spec], extractor, [content], [styles], cache, ks, on_step)
    return out


def layer_sweep(spec: JobSpec, extractor: VGGFeatures, style: Tensor) -> list[Outcome]:
    """Style reconstructions from noise for each growing subset of ``spec.style_layers``."""
    out = []
    for layers in sweep_layer_sets(spec.style_layers):
        sub = dataclasses.replace(spec, mode="style", style_layers=layers, style_layer_weights=None)
        out.append(stylize(sub, extractor, None, [style]))
    return out
