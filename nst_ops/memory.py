"""How much memory one job needs, known before it runs (no torch: validate, plan and the
scheduler ask).

A job's peak is the optimiser's image-sized state plus one forward/backward through VGG up to
its deepest layer, over the whole image or, tiled, over one tile with its margins:

    peak = process + weights + ACTIVATION_FACTOR x floats(VGG outputs per pixel) x pass pixels
           + (IMAGE_VECTORS + the optimizer's state vectors) x 3 x image pixels   (x 4 bytes)
           + the content target + WORKSPACE    (tiled: the TILED_ factors and vectors)

``floats(VGG outputs per pixel)`` sums channels / stride^2 over every module up to the deepest
layer (611 for VGG19 to conv5_1): autograd keeps each module's output for the backward. The
constants were fitted to peak memory of fresh processes on CPU and then raised so that the
estimate stays above run-to-run and CPU-to-CPU spread (bench/prints.py and
tests/engine/test_memory.py: 1.26-1.31x the measured peak at 512-2048 px whole, 1.43-1.8x
tiled; docs/prints.md). The image is assumed square at ``size`` (the most a photo of that
longer side can need), and every multires level is no larger than the last.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from .layer_table import BACKBONE_CFG, CFGS, deepest, layer_names, layer_table
from .optimizers import OPTIMIZERS
from .optimizers import JobSpec as OptimizerSpec
from .tile_size import TiledSpec, pass_side, tiles_pay

FLOAT = 4  # bytes: the optimisation runs in fp32 (amp casts only the convolutions' inputs)
ACTIVATION_FACTOR = 1.15  # autograd's saved tensors per VGG module output (fit 1.02, + 13%)
# tiled: each tile's style-layer cores are copied for their Gram matrices (a slice is not
# contiguous), and tiles of different sizes fragment the allocator (fit at 1024 px with a
# moving grid: 1.43; the margins above the fits: peaks of one size vary by ~20% run to run,
# see bench.prints). A still grid (exact margins) peaks lower: the estimate is 1.4-1.8x there
TILED_ACTIVATION_FACTOR = 1.6
IMAGE_VECTORS = 6  # the image, its gradient, the best image, content, init, the clamp's copy
# convolution scratch and the allocator's slack: glibc keeps freed blocks under its 32 MiB
# mmap ceiling in its heap, so at 192-384 px, where every VGG output is under it, a peak is up
# to 145 MiB above the same job's with a fixed mmap threshold (163 -> 209-296 MiB at 256 px),
# and CPUs differ: a 320-px job peaked at 336-389 MiB on this AMD EPYC (8 runs) and at 454 and
# 468 MiB on the CI machine, where 144 MiB fell short; 256 leaves 85 MiB above the highest
WORKSPACE = 256 * 2**20
PROCESS = 700 * 2**20  # a worker's resident memory before its first job (torch, Ray), measured
# tiled: the tiles' copies of the image and of its gradient, the gradient buffer, the style
# image at the output's size (fit between 1024 and 1536 px, tile 512: +144 bytes per pixel)
TILED_IMAGE_VECTORS = 12
GIB = 2**30
# the smallest tile advice offers: conv5_1's 96-px margins cost 1.9x its area at 512 px, more
# below; above it the largest tile that fits is offered (fewer margins: faster, docs/prints.md)
ADVISED_TILE = 512
TILE_STEP = 128  # advice's tiles are multiples of this (any multiple of the stride works)


class MemorySpec(TiledSpec, OptimizerSpec, Protocol):
    @property
    def size(self) -> int: ...

    @property
    def optimizer(self) -> str: ...

    @property
    def content_layers(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes, by what holds them."""

    process: int
    weights: int
    activations: int
    image_state: int
    optimizer_state: int

    @property
    def total(self) -> int:
        return (
            self.process + self.weights + self.activations + self.image_state
            + self.optimizer_state
        )  # fmt: skip


def feature_floats(backbone: str, layer: str) -> float:
    """Floats per image pixel of every module's output up to ``layer`` (and the input)."""
    total = 3.0
    for name, _, channels, scale in layer_table(backbone):
        total += channels / scale**2
        if name == layer:
            return total
    raise ValueError(f"{layer!r} is not a layer of {backbone}")


def _content_floats(spec: MemorySpec) -> float:
    """The content target (the whole image's features at each content layer) per pixel."""
    rows = {name: (c, scale) for name, _, c, scale in layer_table(spec.backbone)}
    return sum(rows[n][0] / rows[n][1] ** 2 for n in spec.content_layers)


def weight_bytes(backbone: str, layer: str) -> int:
    """The convolutions' weights and biases up to ``layer`` (the only modules with any)."""
    n, c_in, count = 0, 3, layer_names(backbone).index(layer) + 1
    for v in CFGS[BACKBONE_CFG[backbone]]:
        count -= 1 if v == "M" else 2
        if v != "M":
            n += c_in * int(v) * 9 + int(v)
            c_in = int(v)
        if count <= 0:
            break
    return n * FLOAT


def estimate(spec: MemorySpec, size: int | None = None) -> MemoryEstimate:
    """The job's peak at ``size`` (default: the job's)."""
    size = size or spec.size
    layer = deepest(spec.backbone, spec.active_layers)
    pixels, piece = size * size, pass_side(spec, size) ** 2  # multires: the last level
    tiled = tiles_pay(spec, size)
    factor = TILED_ACTIVATION_FACTOR if tiled else ACTIVATION_FACTOR
    image_vectors = IMAGE_VECTORS + (TILED_IMAGE_VECTORS if tiled else 0)
    activations = factor * feature_floats(spec.backbone, layer) * piece * FLOAT
    vectors = OPTIMIZERS[spec.optimizer].state_vectors(spec)
    return MemoryEstimate(
        process=PROCESS,
        weights=weight_bytes(spec.backbone, layer),
        activations=int(activations) + WORKSPACE,
        image_state=int((image_vectors * 3 + _content_floats(spec)) * pixels * FLOAT),
        optimizer_state=int(vectors * 3 * pixels * FLOAT),
    )


def largest_size(spec: MemorySpec, budget: int) -> int:
    """The largest output side (a multiple of 16) this job fits in ``budget`` bytes; 0: none."""
    lo, hi = 0, 1 << 16
    while hi - lo > 16:
        mid = (lo + hi) // 2 // 16 * 16
        lo, hi = (mid, hi) if estimate(spec, mid).total <= budget else (lo, mid)
    return lo


def largest_tile(spec: MemorySpec, budget: int) -> int:
    """The largest tile (a multiple of TILE_STEP from ADVISED_TILE, smaller than the image)
    with which this job fits ``budget`` bytes; 0: not even ADVISED_TILE does."""
    base: Any = spec  # a JobSpec: a frozen dataclass
    fits = [t for t in range(ADVISED_TILE, spec.size, TILE_STEP)
            if estimate(replace(base, tile=t)).total <= budget]  # fmt: skip
    return max(fits, default=0)


def advice(spec: MemorySpec, budget: int) -> str:
    """What would make a job that does not fit ``budget`` fit: said in its own parameters."""
    need = estimate(spec)
    return (
        f"needs ~{need.total / GIB:.1f} GiB at size {spec.size} (activations "
        f"{need.activations / GIB:.1f}, image {need.image_state / GIB:.1f}, optimizer "
        f"{need.optimizer_state / GIB:.1f}), more than the {budget / GIB:.1f} GiB a worker has"
        + (f"; fits with {' or '.join(ways)}" if (ways := _ways_to_fit(spec, budget)) else "")
    )


def _ways_to_fit(spec: MemorySpec, budget: int) -> list[str]:
    """The largest size as it is; else the job's size with tiles, and with them L-BFGS's
    history in bfloat16, or the largest float32 history that fits."""
    ways = [f"size={n}"] if (n := largest_size(spec, budget)) else []
    base: Any = spec  # a JobSpec: a frozen dataclass
    tiled: Any = base if spec.tile else replace(base, tile=ADVISED_TILE)
    if estimate(tiled).total <= budget:
        return ways + ([] if spec.tile else [f"tile={largest_tile(spec, budget)}"])
    if spec.optimizer == "lbfgs":
        compact = replace(tiled, history_dtype="bfloat16")
        if spec.history_dtype == "float32" and estimate(compact).total <= budget:
            ways.append(_with_tile(compact, spec, budget, "history_dtype=bfloat16"))
        fits = [h for h in (50, 20, 10, 5, 2) if h < spec.history_size
                and estimate(replace(tiled, history_size=h)).total <= budget]  # fmt: skip
        if fits:
            shorter = replace(base, history_size=fits[0])
            ways.append(_with_tile(shorter, spec, budget, f"history_size={fits[0]}"))
    return ways


def _with_tile(changed: Any, spec: MemorySpec, budget: int, what: str) -> str:
    """``what``, after the largest tile that fits with it when the job has none."""
    return what if spec.tile else f"tile={largest_tile(changed, budget)} and {what}"
