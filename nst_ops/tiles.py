"""Tiled optimisation: one job's loss and gradient computed tile by tile, so that the memory of
the network's activations is set by the tile, not by the image (prints of 2,000-8,000 px).

What is exact: the style loss needs each layer's Gram matrix over the *whole* image, G = sum of
V V^T over positions, and positions split over tiles, so G is the sum of the tiles' Grams
(first pass, no gradients). Its gradient with respect to one tile's features is 2 C V with
C = dL/dG from the whole image's G (second pass, tile by tile with a backward each): the same
gradient the whole image gets. The content loss and TV are sums over positions: split too.

What is approximated, and when: a tile's features equal the whole image's in its core only if
the tile sees the core's receptive field (``layer_table.receptive_radius``: 85 px at conv5_1).
The default margin is that radius, so tiled equals untiled to float rounding, and the grid
stays put (its borders change nothing); a smaller ``tile_margin`` trades exactness at the
tiles' borders for speed, and then the grid moves every evaluation so that no border stays in
one place (at the price of one more tile per axis: a shifted grid cuts n / tile + 1 pieces).
Tiles and margins start on multiples of the deepest layer's stride so that their poolings pair
the pixels the whole image's do.

Cost: the first pass is a forward without autograd (0.45x a forward + backward on a CPU, where
no weight gradients are taken) of every tile but the largest, which is run with autograd last
and kept for the second pass; every tile computes its margin too: (tile + 2 margin)^2 /
tile^2 of the pixels. Measured: 1.25-1.6x the whole image's time per pixel (docs/performance.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from . import losses
from .layer_table import deepest, feature_hw, layer_stride
from .loop import Terms
from .spec import JobSpec
from .tile_size import margin_is_exact, margin_of, tile_side, tiles_pay
from .vgg import VGGFeatures

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 in pixels


@dataclass(frozen=True)
class Tile:
    core: Box  # the pixels whose features this tile stands for (the cores partition the image)
    box: Box  # what it reads: the core with its margin, clipped to the image


def _cuts(n: int, tile: int, offset: int) -> list[tuple[int, int]]:
    edges = sorted({0, n, *range(offset % tile or tile, n, tile)})
    return list(itertools.pairwise(edges))


def grid(
    hw: tuple[int, int], tile: int, margin: int, offset: tuple[int, int] = (0, 0)
) -> list[Tile]:
    """Tiles of ``tile`` px covering ``hw``, the grid shifted by ``offset`` (multiples of the
    stride, as ``tile`` and ``margin`` are)."""
    h, w = hw
    return [
        Tile(
            (y0, y1, x0, x1),
            (max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)),
        )  # fmt: skip
        for y0, y1 in _cuts(h, tile, offset[0])
        for x0, x1 in _cuts(w, tile, offset[1])
    ]


def _core(feature: Tensor, t: Tile, stride: int) -> Tensor:
    """The tile's core positions in the tile's feature map at a layer of ``stride``."""
    (y0, y1, x0, x1), (by, _, bx, _) = t.core, t.box
    top, left = (y0 - by) // stride, (x0 - bx) // stride
    rows, cols = y1 // stride - y0 // stride, x1 // stride - x0 // stride
    return feature[..., top : top + rows, left : left + cols]


def _in_image(target: Tensor, t: Tile, stride: int) -> Tensor:
    """The whole image's target features (content) at the tile's core positions."""
    y0, y1, x0, x1 = t.core
    return target[..., y0 // stride : y1 // stride, x0 // stride : x1 // stride]


# a tile's pixels (its box): cut from the whole image, or sent alone (halo exchange)
Crop = Callable[[Tile], Tensor]


def _area(t: Tile) -> int:
    y0, y1, x0, x1 = t.box
    return (y1 - y0) * (x1 - x0)


def from_image(x: Tensor) -> Crop:
    """Tiles' boxes cut from the whole image ``x``."""

    def crop(t: Tile) -> Tensor:
        y0, y1, x0, x1 = t.box
        return x[..., y0:y1, x0:x1]

    return crop


def boxes_of(x: Tensor, tiles: Sequence[Tile]) -> list[Tensor]:
    """The tiles' boxes as tensors of their own (a copy each: a slice would carry, and pickle,
    the whole image's storage): what a worker needs of the image for these tiles."""
    crop = from_image(x)
    return [crop(t).detach().cpu().clone() for t in tiles]


def add_into(grad: Tensor) -> Callable[[Tile, Tensor], None]:
    """``add(tile, g)``: a tile's gradient ``g`` (its box's) added into the image's ``grad``."""

    def add(t: Tile, g: Tensor) -> None:
        y0, y1, x0, x1 = t.box
        grad[..., y0:y1, x0:x1] += g.to(grad.device)

    return add


def grams_over(
    extractor: VGGFeatures, crop: Crop, tiles: Sequence[Tile], layers: Sequence[str]
) -> dict[str, Tensor]:
    """Each layer's Gram matrix of the whole image, summed over the tiles' cores (no grad)."""
    grams: dict[str, Tensor] = {}
    with torch.no_grad():
        for t in tiles:
            feats = extractor.features_at(crop(t), layers)
            for n in layers:
                g = losses.gram(_core(feats[n], t, layer_stride(extractor.backbone, n)))
                grams[n] = grams[n] + g if n in grams else g
    return grams


def features_over(extractor: VGGFeatures, x: Tensor, tiles: list[Tile], layer: str) -> Tensor:
    """A layer's feature map of the whole image, put together from the tiles' cores (no grad):
    the content target of an image too large for one forward."""
    stride = layer_stride(extractor.backbone, layer)
    h, w = feature_hw(extractor.backbone, layer, (x.shape[-2], x.shape[-1]))
    out: Tensor | None = None
    with torch.no_grad():
        for t in tiles:
            y0, y1, x0, x1 = t.box
            core = _core(extractor.features_at(x[..., y0:y1, x0:x1], [layer])[layer], t, stride)
            if out is None:
                out = core.new_zeros(*core.shape[:2], h, w)
            cy, cx = t.core[0] // stride, t.core[2] // stride
            out[..., cy : cy + core.shape[-2], cx : cx + core.shape[-1]] = core
    assert out is not None, "an image has at least one tile"
    return out


def tiled_targets(spec: JobSpec) -> Callable[[VGGFeatures, Tensor, str, bool], Tensor] | None:
    """For a tiled job, ``(extractor, image, layer, gram) -> target`` computed tile by tile
    (its inputs may be as large as its output); None for an untiled one."""
    if not spec.tile:
        return None
    size, margin = tile_side(spec), margin_of(spec)

    def target(extractor: VGGFeatures, x: Tensor, layer: str, gram: bool) -> Tensor:
        whole = not tiles_pay(spec, max(x.shape[-2:]))  # one tile: the image itself
        tiles = grid((x.shape[-2], x.shape[-1]), max(x.shape[-2:]) if whole else size, margin)
        if gram:
            return grams_over(extractor, from_image(x), tiles, [layer])[layer]
        return features_over(extractor, x, tiles, layer)

    return target


class _WithGradient(torch.autograd.Function):
    """The losses, with the gradient the tiles already computed as their backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, total: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return total.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return g.view(-1, 1, 1, 1) * grad, None, None


@dataclass(frozen=True)
class _Weights:
    alpha: Tensor  # (B,) per image
    beta: Tensor
    tv: Tensor
    layer: Tensor  # (style layers, B)


class TileRunner(Protocol):
    """Runs a tiled evaluation's two passes over ``tiles`` and returns their sums: in this
    process (LocalTiles), or spread over several workers (``workers_per_job``, whose runner
    adds up the partial sums its workers return)."""

    def grams(self, x: Tensor, tiles: list[Tile]) -> dict[str, Tensor]: ...

    def backward(
        self, x: Tensor, tiles: list[Tile], coef: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]: ...


class LocalTiles:
    """The tiles' passes on this process's extractor: pass 1 the style layers' Grams over the
    tiles' cores; pass 2 each tile's forward and backward against C_l = dL/dG_l, giving the
    gradient (image-sized, zero outside the tiles' boxes) and the content loss (B,). The
    ``*_of`` forms read the tiles' pixels through a Crop and hand each tile's gradient to
    ``add``: a helper of a workers_per_job job holds only its tiles' boxes."""

    def __init__(
        self, extractor: VGGFeatures, spec: JobSpec, content: Mapping[str, Tensor], alpha: Tensor
    ):
        self.extractor, self.spec, self.content, self.alpha = extractor, spec, content, alpha
        self.stride = {n: layer_stride(spec.backbone, n) for n in spec.active_layers}
        self._kept: _Kept | None = None

    def grams(self, x: Tensor, tiles: list[Tile]) -> dict[str, Tensor]:
        return self.grams_of(from_image(x), tiles)

    def backward(
        self, x: Tensor, tiles: list[Tile], coef: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        grad = torch.zeros_like(x)
        return grad, self.backward_of(from_image(x), tiles, coef, add_into(grad))

    def grams_of(self, crop: Crop, tiles: list[Tile]) -> dict[str, Tensor]:
        """Pass 1. Its largest tile runs last, with autograd, and is kept for pass 2, which
        starts with it: the largest tile's forward less per evaluation, and no more memory
        (pass 2 holds each tile's graph, one at a time, anyway)."""
        if not tiles:
            return {}
        last = max(tiles, key=_area)  # the first of the largest: the same one every time
        rest = [t for t in tiles if t is not last]
        layers = self.spec.style_layers
        grams = grams_over(self.extractor, crop, rest, layers) if rest else {}
        self._kept = _Kept(last, *self._forward(crop, last))
        for n in layers:
            g = losses.gram(_core(self._kept.feats[n].detach(), last, self.stride[n]))
            grams[n] = grams[n] + g if n in grams else g
        return grams

    def backward_of(
        self,
        crop: Crop,
        tiles: list[Tile],
        coef: Mapping[str, Tensor],
        add: Callable[[Tile, Tensor], None],
    ) -> Tensor:
        """Pass 2: each tile's gradient handed to ``add``; returns the content loss (B,)."""
        content = self.alpha.new_zeros(self.alpha.shape[0])
        kept, self._kept = self._kept, None
        if kept is not None and kept.tile in tiles:  # pass 1's kept tile: its forward is done
            tiles = [kept.tile] + [t for t in tiles if t != kept.tile]
        with torch.enable_grad():
            for t in tiles:
                if kept is not None and t == kept.tile:
                    forward, kept = (kept.xt, kept.feats), None
                else:
                    forward = self._forward(crop, t)
                content += self._tile_backward(t, coef, forward)
                add(t, _grad(forward[0]))
                del forward  # its features go before the next tile's forward: one at a time
        return content

    def _forward(self, crop: Crop, t: Tile) -> tuple[Tensor, dict[str, Tensor]]:
        """The tile's pixels as a leaf that takes a gradient, and its features with autograd."""
        with torch.enable_grad():
            xt = crop(t).detach().clone().requires_grad_(True)
            return xt, self.extractor.features_at(xt, self.spec.active_layers)

    def _tile_backward(
        self, t: Tile, coef: Mapping[str, Tensor], forward: tuple[Tensor, dict[str, Tensor]]
    ) -> Tensor:
        """One tile's backward from its ``forward`` (its gradient left in the leaf's .grad);
        returns its content loss (B,)."""
        xt, feats = forward
        surrogate = xt.new_zeros(())
        for n, c in coef.items():
            v = _core(feats[n], t, self.stride[n])
            surrogate = surrogate + (c * losses.gram(v)).sum()
        content = xt.new_zeros(xt.shape[0])
        for n, p in self.content.items():
            s = self.stride[n]
            content = content + losses.content_loss(_core(feats[n], t, s), _in_image(p, t, s))
        (surrogate + (self.alpha * content).sum()).backward()  # type: ignore[no-untyped-call]
        return content.detach()


@dataclass(frozen=True)
class _Kept:
    """Pass 1's largest tile, run last, with its autograd graph, for pass 2."""

    tile: Tile
    xt: Tensor
    feats: dict[str, Tensor]


# who runs a tiled evaluation's tiles, given this process's LocalTiles (workers_per_job)
RunnerFactory = Callable[[LocalTiles], TileRunner]


class TiledObjective:
    """``objective(x)`` -> Terms, as ``transfer.make_objective`` gives for the whole image,
    computed tile by tile (see the module's docstring)."""

    def __init__(
        self,
        extractor: VGGFeatures,
        specs: Sequence[JobSpec],
        content: Mapping[str, Tensor],
        style: Mapping[str, Tensor],
        tile_runner: RunnerFactory | None = None,
    ):
        spec = specs[0]
        self.extractor, self.spec, self.content, self.style_t = extractor, spec, content, style
        self.tile, self.margin = tile_side(spec), margin_of(spec)
        self.step = layer_stride(spec.backbone, deepest(spec.backbone, spec.active_layers))
        dev = extractor.mean.device

        def per_image(values: Sequence[Any]) -> Tensor:
            return torch.tensor(values, dtype=torch.float32, device=dev)

        self.w = _Weights(
            per_image([s.content_weight if s.uses_content else 0.0 for s in specs]),
            per_image([s.style_weight if s.uses_style else 0.0 for s in specs]),
            per_image([s.tv_weight for s in specs]),
            per_image([list(s.layer_weights) for s in specs]).T,
        )
        self.calls = itertools.count()
        self.exact = margin_is_exact(spec)
        local = LocalTiles(extractor, spec, content, self.w.alpha)
        self.stride = local.stride
        self.runner: TileRunner = tile_runner(local) if tile_runner else local

    def offset(self) -> tuple[int, int]:
        """The grid's shift this evaluation: none with an exact margin; else a different one
        each time (golden-ratio steps), on the stride."""
        if self.exact:
            return 0, 0
        k, slots = next(self.calls), max(1, self.tile // self.step)
        dy, dx = int(k * 0.618 * slots) % slots, int(k * 0.382 * slots) % slots
        return dy * self.step, dx * self.step

    def __call__(self, x: Tensor) -> Terms:
        tiles = grid((x.shape[-2], x.shape[-1]), self.tile, self.margin, self.offset())
        grams = self.runner.grams(x, tiles) if self.spec.uses_style else {}
        per_layer, coef = self._style(grams, (x.shape[-2], x.shape[-1]))
        with torch.enable_grad():  # the loop evaluates its last image under no_grad
            grad, content = self.runner.backward(x, tiles, coef)
            tv = self._tv(x, grad)
        style = x.new_zeros(x.shape[0])
        for w, e in zip(self.w.layer, per_layer.values(), strict=True):
            style = style + w * e
        total = self.w.alpha * content + self.w.beta * style + self.w.tv * tv
        details = {f"style_{k}": v for k, v in per_layer.items()}
        out = _WithGradient.apply(x, total.detach(), grad)
        return Terms(out, {"content": content, "style": style, "tv": tv}, details)

    def _style(
        self, grams: dict[str, Tensor], hw: tuple[int, int]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per layer: E_l (B,) and C_l = dL/dG_l (B,N,N), the whole image's."""
        per_layer, coef = {}, {}
        for k, (n, g) in enumerate(grams.items()):
            a = self.style_t[n]
            c = g.shape[-1]
            m = (hw[0] // self.stride[n]) * (hw[1] // self.stride[n])
            per_layer[n] = losses.style_layer_loss(g, a, c, m)
            scale = self.w.beta * self.w.layer[k] / (2.0 * c * c * m * m)
            coef[n] = scale.view(-1, 1, 1) * (g - a)
        return per_layer, coef

    def _tv(self, x: Tensor, grad: Tensor) -> Tensor:
        if not bool((self.w.tv > 0).any()):
            return x.new_zeros(x.shape[0])
        xx = x.detach().clone().requires_grad_(True)
        tv = losses.tv_loss(xx)
        (self.w.tv * tv).sum().backward()  # type: ignore[no-untyped-call]
        grad += _grad(xx)
        return tv.detach()


def _grad(t: Tensor) -> Tensor:
    if t.grad is None:
        raise RuntimeError("a tile took no gradient")
    return t.grad
