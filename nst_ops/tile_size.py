"""A tiled job's tile and margin in pixels, without torch: the memory estimate (validate, the
scheduler) needs them as much as the tiled objective does."""

from __future__ import annotations

from typing import Protocol

from .layer_table import deepest, layer_stride, receptive_radius

# `nst apply`: inputs with a longer side above this run tile by tile (nst_ops.stylenet.tiled);
# one pass of the published network holds ~1 GB of activations at 1024 px
NETWORK_TILE = 1024


class TiledSpec(Protocol):
    @property
    def backbone(self) -> str: ...

    @property
    def active_layers(self) -> tuple[str, ...]: ...

    @property
    def tile(self) -> int: ...

    @property
    def tile_margin(self) -> int | None: ...


def margin_of(spec: TiledSpec) -> int:
    """The context around each tile in px: ``tile_margin`` or the receptive field, rounded up
    to the deepest layer's stride."""
    layer = deepest(spec.backbone, spec.active_layers)
    stride = layer_stride(spec.backbone, layer)
    want = receptive_radius(spec.backbone, layer) if spec.tile_margin is None else spec.tile_margin
    return -(-want // stride) * stride


def margin_is_exact(spec: TiledSpec) -> bool:
    """Whether the margin covers the deepest layer's receptive field: tiled equals untiled,
    so the grid need not move (a moving grid cuts one tile more per axis)."""
    layer = deepest(spec.backbone, spec.active_layers)
    return margin_of(spec) >= receptive_radius(spec.backbone, layer)


def tile_side(spec: TiledSpec) -> int:
    """``tile`` rounded down to the deepest layer's stride."""
    stride = layer_stride(spec.backbone, deepest(spec.backbone, spec.active_layers))
    return max(stride, spec.tile // stride * stride)


def pass_side(spec: TiledSpec, size: int) -> int:
    """The side of the largest piece one forward/backward sees: a tile with its margins, or
    the whole image when it is untiled or no larger than a tile."""
    if not spec.tile or size <= spec.tile:
        return size
    return min(size, tile_side(spec) + 2 * margin_of(spec))


def tiles_pay(spec: TiledSpec, size: int) -> bool:
    """Whether tiles are smaller than the image they cut: a tile with its margins as large as
    the image would only repeat the whole image's work once per tile."""
    return pass_side(spec, size) < size
