"""A job's sizes against its network: a feature map left at the deepest layer, tiles at least
twice that layer's stride, one iteration count per multires level. JobSpec runs these on
itself; they live apart so that its module stays the list of parameters."""

from __future__ import annotations

from typing import Protocol

from .layer_table import deepest, layer_stride, size_problem, smallest_size
from .param import SpecError


class SizedSpec(Protocol):
    """What these checks read of a JobSpec."""

    @property
    def size(self) -> int: ...

    @property
    def multires(self) -> int: ...

    @property
    def backbone(self) -> str: ...

    @property
    def tile(self) -> int: ...

    @property
    def tile_margin(self) -> int | None: ...

    @property
    def workers_per_job(self) -> int: ...

    @property
    def level_iterations(self) -> tuple[int, ...] | None: ...

    @property
    def active_layers(self) -> tuple[str, ...]: ...


def check_size_for_layers(spec: SizedSpec) -> None:
    """Even a square image must keep a feature map at the deepest layer, at every level;
    an image's own aspect is checked where it is known (nst validate, the worker)."""
    first = spec.size >> (spec.multires - 1)
    if not spec.active_layers:
        return
    layer = deepest(spec.backbone, spec.active_layers)
    problem = size_problem(spec.backbone, layer, first, (first, first))
    if problem:
        need = smallest_size(spec.backbone, layer) << (spec.multires - 1)
        raise SpecError(f"size {spec.size} is too small for {layer}: the smallest size "
                        f"that works is {need}")  # fmt: skip


def check_tiles(spec: SizedSpec) -> None:
    m = spec.tile_margin
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 0):
        raise SpecError(f"tile_margin must be an integer >= 0 (or unset), got {m!r}")
    if spec.tile and spec.active_layers:
        least = layer_stride(spec.backbone, deepest(spec.backbone, spec.active_layers))
        if spec.tile < 2 * least:
            raise SpecError(f"tile {spec.tile} is too small: at least {2 * least} px (twice "
                            "the deepest layer's stride)")  # fmt: skip
    if spec.workers_per_job > 1 and not spec.tile:
        raise SpecError(f"workers_per_job={spec.workers_per_job} spreads a tiled job's tiles "
                        "over workers: give tile= too")  # fmt: skip


def check_levels(spec: SizedSpec) -> None:
    levels = spec.level_iterations
    if levels is None:
        return
    if len(levels) != spec.multires:
        raise SpecError(
            f"level_iterations has {len(levels)} values for multires={spec.multires} levels"
        )
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in levels):
        raise SpecError(f"level_iterations must be integers >= 1, got {list(levels)}")
