"""Style transfer, style reconstruction and content reconstruction, plus the layer sweep.

Inputs are RGB tensors (3,H,W) in [0,1] at any size; everything else (resizing, targets, init,
colour preservation, multi-resolution) happens here, on the extractor's device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Hashable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import losses, tiles
from .image_ops import (
    _fit,
    _need,
    fit_longer_side,
    hw_of,
    luminance,
    match_luminance,
    resize,
    rgb_to_yiq,
    yiq_to_rgb,
)
from .layer_table import deepest, feature_hw, size_problem, sweep_layer_sets  # noqa: F401
from .loop import Outcome, Terms, optimize
from .spec import BATCH_FIELDS, JobSpec, batch_key
from .tile_size import tiles_pay
from .tiles import RunnerFactory, TiledObjective
from .vgg import VGGFeatures
from .vocab import Mode, Status


@dataclass(frozen=True)
class Targets:
    """Content features P_l and (blended) style Grams A_l; the first dim is the batch."""

    content: dict[str, Tensor]
    style: dict[str, Tensor]


TargetCache = MutableMapping[tuple[Any, ...], Tensor]
InputKeys = tuple[Hashable, Sequence[Hashable]]  # an id for the content and each style image


def _cached(
    cache: TargetCache | None, key: tuple[Any, ...] | None, make: Callable[[], Tensor]
) -> Tensor:
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
    keys: InputKeys | None = None,
) -> Targets:
    """Targets for one image of size ``out_hw``; inputs are already (1,3,h,w) on the device.

    ``cache`` with ``keys`` (an id for the content and for each style image, e.g. their URIs)
    reuses features and Grams across jobs that share an image, size and network. With
    ``style_scale='own'`` a style's Gram sums over the style's M_a positions at each layer, the
    output's over M_x: it is rescaled by M_x/M_a *at that layer* (pooling floors odd sizes, so the
    image-level ratio is wrong after a pooling); with the default (style resized to the content's
    size) the factor is exactly 1.
    """
    net_id = (id(extractor.features), spec.preserve_color, spec.tile, spec.tile_margin)
    c_key, s_keys = keys if keys is not None else (None, [None] * len(styles))

    tiled = tiles.tiled_targets(spec)  # inputs as large as a print: tile by tile

    def feature(x: Tensor, layer: str) -> Tensor:
        if tiled is not None:
            return tiled(extractor, x, layer, False)
        return extractor.features_at(x, [layer])[layer]

    def gram_of(x: Tensor, layer: str) -> Tensor:
        if tiled is not None:
            return tiled(extractor, x, layer, True)
        return losses.gram(feature(x, layer))

    with torch.no_grad():
        content_t = {}
        if spec.uses_content:
            c = _need(content, "content")
            hw = hw_of(c)
            for name in spec.content_layers:
                k = None if c_key is None else ("content", c_key, hw, name, net_id)
                content_t[name] = _cached(cache, k, functools.partial(feature, c, name))
        style_t: dict[str, Tensor] = {}
        if spec.uses_style:
            blend = spec.style_blend or tuple(1.0 for _ in styles)
            if len(blend) != len(styles):
                raise ValueError(f"style_blend has {len(blend)} weights for {len(styles)} styles")
            total = sum(blend)
            for w, s, sk in zip(blend, styles, s_keys, strict=True):
                hw = hw_of(s)
                for name in spec.style_layers:
                    k = None if sk is None else ("gram", sk, hw, name, net_id)
                    g = _cached(cache, k, functools.partial(gram_of, s, name))
                    a = g * (w / total) * positions_ratio(spec.backbone, name, out_hw, hw)
                    style_t[name] = style_t[name] + a if name in style_t else a
    return Targets(content_t, style_t)


def positions_ratio(
    backbone: str, layer: str, out_hw: tuple[int, int], style_hw: tuple[int, int]
) -> float:
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


def make_objective(
    extractor: VGGFeatures, specs: Sequence[JobSpec], targets: Targets
) -> Callable[[Tensor], Terms]:
    """x (B,3,H,W) -> per-image Terms from the registered loss terms; every weight (alpha,
    beta, TV, w_l) may differ per image."""
    spec, dev = specs[0], extractor.mean.device

    def per_image(values: Sequence[Any]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=dev)

    given = {n: [t.weight(s) for s in specs] for n, t in losses.TERMS.items()}
    active = [n for n, ws in given.items() if any(w is not None for w in ws)]
    weights = {n: per_image([0.0 if w is None else w for w in given[n]]) for n in active}
    # (style layers, B): one w_l per layer and image
    layer_w = per_image([list(s.layer_weights) for s in specs]).T if spec.uses_style else None
    layers = spec.active_layers

    def objective(x: Tensor) -> Terms:
        inputs = losses.TermInputs(
            x, extractor.features_at(x, layers), targets.content, targets.style, layer_w
        )
        zero = x.new_zeros(x.shape[0])
        values, details = dict.fromkeys(losses.TERMS, zero), {}
        for name in active:
            values[name], parts = losses.TERMS[name].value(inputs)
            details.update(parts)
        total = losses.total_loss([values[n] for n in active], [weights[n] for n in active])
        return Terms(total, values, details)

    return objective


def _objective(
    extractor: VGGFeatures,
    specs: Sequence[JobSpec],
    targets: Targets,
    hw: tuple[int, int],
    tile_runner: RunnerFactory | None = None,
) -> Callable[[Tensor], Terms]:
    """Tile by tile where the job's tiles with their margins are smaller than its image."""
    if not tiles_pay(specs[0], max(hw)):
        return make_objective(extractor, specs, targets)
    return TiledObjective(extractor, specs, targets.content, targets.style, tile_runner)


def _levels(spec: JobSpec) -> list[int]:
    return [spec.size >> (spec.multires - 1 - k) for k in range(spec.multires)]


Prepared = tuple[Tensor | None, list[Tensor], tuple[int, int]]


def _prepare(
    spec: JobSpec,
    size: int,
    content: Tensor | None,
    styles: Sequence[Tensor],
    device: torch.device,
) -> Prepared:
    """Resize inputs for one resolution level; returns (content, styles, output hw). An image
    too small (or too elongated) for the deepest layer is refused here, in our words, before
    torch refuses an empty feature map in its own."""
    _check_fits(spec, size, content if spec.uses_content else None, styles)
    c: Tensor | None = None
    if spec.uses_content:
        c = fit_longer_side(_need(content, "content"), size).to(device)
        hw = hw_of(c)
    else:
        hw = hw_of(fit_longer_side(styles[0], size))
    s_list = []
    for s in styles if spec.needs_style_image else ():
        s = resize(s, hw) if spec.style_scale == "content" else fit_longer_side(s, size)
        s_list.append(s.to(device))
    if spec.preserve_color:
        c_y = luminance(_need(c, "content"))
        s_list = [match_luminance(luminance(s), c_y) for s in s_list]
        c = c_y
    return c, s_list, hw


def _check_fits(spec: JobSpec, size: int, content: Tensor | None, styles: Sequence[Tensor]) -> None:
    layer = deepest(spec.backbone, spec.active_layers)
    own = spec.style_scale == "own"
    images = [content] if content is not None else list(styles[:1])
    images += list(styles) if own and spec.uses_style else []
    for img in images:
        problem = size_problem(spec.backbone, layer, size, hw_of(img))
        if problem:
            raise ValueError(problem)


def output_hw(spec: JobSpec, content: Tensor | None, styles: Sequence[Tensor]) -> tuple[int, int]:
    """The output's (h, w): the content's shape (or the first style's) at ``spec.size``."""
    source = _need(content, "content") if spec.uses_content else styles[0]
    return _fit(hw_of(source), spec.size)


def _init(
    spec: JobSpec,
    c: Tensor | None,
    s_list: list[Tensor],
    hw: tuple[int, int],
    device: torch.device,
    image: Tensor | None = None,
) -> Tensor:
    if spec.external_init:
        return resize(_need(image, f"start ({spec.init})"), hw).to(device).clone()
    if spec.init == "content":
        return _need(c, "content").clone()
    if spec.init == "style":
        return resize(s_list[0], hw).clone()
    gen = torch.Generator().manual_seed(spec.seed)
    return torch.rand((1, 3, *hw), generator=gen).to(device)


def _check_batch(
    specs: Sequence[JobSpec], contents: Sequence[Tensor | None], styles: Sequence[Sequence[Tensor]]
) -> None:
    spec = specs[0]
    if any(batch_key(s) != batch_key(spec) for s in specs):
        raise ValueError(f"jobs in one batch must agree on {', '.join(BATCH_FIELDS)}")
    if len(specs) > 1 and spec.multires > 1:
        raise ValueError("multi-resolution jobs run one image at a time")
    for s, c, st in zip(specs, contents, styles, strict=True):
        if s.uses_content and c is None:
            raise ValueError(f"mode {s.mode!r} needs a content image")
        if s.needs_style_image and not st:
            raise ValueError(f"mode {s.mode!r} with init {s.init!r} needs a style image")


def _batch_targets(
    extractor: VGGFeatures,
    specs: Sequence[JobSpec],
    prepared: Sequence[Prepared],
    cache: TargetCache | None,
    keys: Sequence[InputKeys | None],
) -> tuple[Targets, tuple[int, int]]:
    hws = {hw for _, _, hw in prepared}
    if len(hws) != 1:
        raise ValueError(f"images in one batch must have one output size, got {sorted(hws)}")
    (hw,) = hws
    targets = [
        compute_targets(extractor, s, c, sl, hw, cache, k)
        for s, (c, sl, _), k in zip(specs, prepared, keys, strict=True)
    ]
    return stack_targets(targets), hw


def _restore_colour(out: Outcome, spec: JobSpec, content: Tensor | None) -> None:
    """Luminance-only transfer: put the content's YIQ chrominance back."""
    yiq = rgb_to_yiq(fit_longer_side(_need(content, "content"), spec.size).to(out.image))
    y_out = rgb_to_yiq(out.image.unsqueeze(0))[:, :1]
    out.image = yiq_to_rgb(torch.cat([y_out, yiq[:, 1:]], 1)).clamp(0, 1)[0]


@contextlib.contextmanager
def _fp32_after_restart(extractor: VGGFeatures) -> Iterator[Callable[[], None]]:
    """A restart after a blow-up leaves bf16 for the rest of this optimisation (the network
    is shared: its setting comes back afterwards)."""
    amp = extractor.amp

    def to_fp32() -> None:
        extractor.amp = False

    try:
        yield to_fp32
    finally:
        extractor.amp = amp


def stylize_batch(
    specs: Sequence[JobSpec],
    extractor: VGGFeatures,
    contents: Sequence[Tensor | None],
    styles: Sequence[Sequence[Tensor]],
    cache: TargetCache | None = None,
    keys: Sequence[InputKeys | None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    inits: Sequence[Tensor | None] | None = None,
    tile_runner: RunnerFactory | None = None,
) -> list[Outcome]:
    """Run several jobs as one batch (one forward/backward per step); exact per image (see
    nst_ops.loop). L-BFGS with line search runs alone. ``cache``/``keys``: see compute_targets.
    ``inits``: the decoded start image of each job whose ``init`` names one. ``tile_runner``:
    who runs a tiled level's tiles, given this process's LocalTiles (default: it alone)."""
    _check_batch(specs, contents, styles)
    spec, device, t0 = specs[0], extractor.mean.device, time.perf_counter()
    input_keys: Sequence[InputKeys | None] = keys or [None] * len(specs)
    x: Tensor | None = None
    results: list[Outcome] = []
    traces: list[list[dict[str, float]]] = [[] for _ in specs]
    snapshots: list[list[tuple[int, Tensor]]] = [[] for _ in specs]
    done = [0] * len(specs)
    for level, size in enumerate(_levels(spec)):
        prepared = [
            _prepare(s, size, c, st, device)
            for s, c, st in zip(specs, contents, styles, strict=True)
        ]
        targets, hw = _batch_targets(extractor, specs, prepared, cache, input_keys)
        if x is None:
            starts = inits or [None] * len(specs)
            pairs = zip(specs, prepared, starts, strict=True)
            x0 = torch.cat([_init(s, c, sl, hw, device, i) for s, (c, sl, _), i in pairs])
        else:
            x0 = resize(x, hw).to(device)
        objective = _objective(extractor, specs, targets, hw, tile_runner)
        at_level = [dataclasses.replace(s, iterations=s.iterations_at(level)) for s in specs]
        with _fp32_after_restart(extractor) as on_restart:
            results = optimize(objective, x0, at_level, max(done), t0, on_step, on_restart)
        for i, r in enumerate(results):
            traces[i] += [{**row, "level": level} for row in r.trace]
            snapshots[i] += r.snapshots
            done[i] += r.iterations
        x = torch.stack([r.image for r in results])
        if any(r.status != Status.OK for r in results):
            break  # a diverged image stops the schedule for its batch; the others keep their best
    for r, trace, n, s, c, snaps in zip(results, traces, done, specs, contents, snapshots,
                                        strict=True):  # fmt: skip
        r.trace, r.iterations, r.snapshots = trace, n, snaps
        if s.preserve_color:
            _restore_colour(r, s, c)
    return results


def stylize(
    spec: JobSpec,
    extractor: VGGFeatures,
    content: Tensor | None,
    styles: Sequence[Tensor],
    cache: TargetCache | None = None,
    keys: InputKeys | None = None,
    on_step: Callable[[int, float], None] | None = None,
    init: Tensor | None = None,
) -> Outcome:
    """Run one job in its mode; multi-resolution and colour preservation included. ``on_step``
    (iteration, loss) is called after every step, e.g. for a progress display. ``init``: the
    decoded start image when ``spec.init`` names one."""
    ks = [keys] if keys else None
    (out,) = stylize_batch([spec], extractor, [content], [styles], cache, ks, on_step, [init])
    return out


def layer_sweep(spec: JobSpec, extractor: VGGFeatures, style: Tensor) -> list[Outcome]:
    """Style reconstructions from noise for each growing subset of ``spec.style_layers``."""
    out = []
    for layers in sweep_layer_sets(spec.style_layers):
        sub = dataclasses.replace(
            spec, mode=Mode.STYLE.value, style_layers=layers, style_layer_weights=None
        )
        out.append(stylize(sub, extractor, None, [style]))
    return out
