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
    host_state: int = 0  # optimizer state kept in host memory whatever the job's device

    @property
    def total(self) -> int:
        """On a CPU, where everything is host memory."""
        return self.on_gpu + self.process + self.host_state

    @property
    def on_gpu(self) -> int:
        """What a GPU job holds on its GPU: not the host process, not the host-held state."""
        return self.weights + self.activations + self.image_state + self.optimizer_state

    def need(self, on_gpu: bool) -> int:
        """What the job needs of the memory it runs in: its GPU's, or the host's."""
        return self.on_gpu if on_gpu else self.total


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
    kind = OPTIMIZERS[spec.optimizer]
    vectors, host_vectors = kind.state_vectors(spec), kind.host_vectors(spec)
    return MemoryEstimate(
        process=PROCESS,
        weights=weight_bytes(spec.backbone, layer),
        activations=int(activations) + WORKSPACE,
        image_state=int((image_vectors * 3 + _content_floats(spec)) * pixels * FLOAT),
        optimizer_state=int(vectors * 3 * pixels * FLOAT),
        host_state=int(host_vectors * 3 * pixels * FLOAT),
    )


@dataclass(frozen=True)
class Budget:
    """The memory a job would get: a worker's host memory, or (``on_gpu``) its GPU's, which
    holds neither the host process nor host-held state."""

    bytes: int
    on_gpu: bool = False

    @staticmethod
    def of(budget: int | Budget) -> Budget:
        return budget if isinstance(budget, Budget) else Budget(budget)

    def holds(self, spec: MemorySpec, size: int | None = None) -> bool:
        return estimate(spec, size).need(self.on_gpu) <= self.bytes


def largest_size(spec: MemorySpec, budget: int | Budget) -> int:
    """The largest output side (a multiple of 16) this job fits in ``budget``; 0: none."""
    lo, hi, room = 0, 1 << 16, Budget.of(budget)
    while hi - lo > 16:
        mid = (lo + hi) // 2 // 16 * 16
        lo, hi = (mid, hi) if room.holds(spec, mid) else (lo, mid)
    return lo


def largest_tile(spec: MemorySpec, budget: int | Budget) -> int:
    """The largest tile (a multiple of TILE_STEP from ADVISED_TILE, smaller than the image)
    with which this job fits ``budget``; 0: not even ADVISED_TILE does."""
    base: Any = spec  # a JobSpec: a frozen dataclass
    room = Budget.of(budget)
    fits = [t for t in range(ADVISED_TILE, spec.size, TILE_STEP)
            if room.holds(replace(base, tile=t))]  # fmt: skip
    return max(fits, default=0)


def advice(spec: MemorySpec, budget: int, on_gpu: bool = False) -> str:
    """What would make a job that does not fit ``budget`` bytes (a GPU's with ``on_gpu``)
    fit: said in its own parameters."""
    room, est = Budget(budget, on_gpu), estimate(spec)
    where, optimizer = ("a GPU", 0) if on_gpu else ("a worker", est.host_state)
    optimizer += est.optimizer_state
    return (
        f"needs ~{est.need(on_gpu) / GIB:.1f} GiB at size {spec.size} (activations "
        f"{est.activations / GIB:.1f}, image {est.image_state / GIB:.1f}, optimizer "
        f"{optimizer / GIB:.1f}), more than the {budget / GIB:.1f} GiB {where} has"
        + (f"; fits with {' or '.join(ways)}" if (ways := _ways_to_fit(spec, room)) else "")
    )


def _ways_to_fit(spec: MemorySpec, room: Budget) -> list[str]:
    """The largest size as it is; else the job's size with tiles, and with them (on a GPU)
    L-BFGS's history in host memory, its history in bfloat16, or the largest float32 history
    that fits."""
    ways = [f"size={n}"] if (n := largest_size(spec, room)) else []
    base: Any = spec  # a JobSpec: a frozen dataclass
    tiled: Any = base if spec.tile else replace(base, tile=ADVISED_TILE)
    if room.holds(tiled):
        return ways + ([] if spec.tile else [f"tile={largest_tile(spec, room)}"])
    if spec.optimizer != "lbfgs":
        return ways
    changes = [("history_device", "host")] if room.on_gpu else []
    changes += [("history_dtype", "bfloat16")]
    for key, value in changes:
        if getattr(spec, key) != value and room.holds(replace(tiled, **{key: value})):
            ways.append(_with_tile(replace(base, **{key: value}), spec, room, f"{key}={value}"))
    fits = [h for h in (50, 20, 10, 5, 2)
            if h < spec.history_size and room.holds(replace(tiled, history_size=h))]  # fmt: skip
    if fits:
        shorter = replace(base, history_size=fits[0])
        ways.append(_with_tile(shorter, spec, room, f"history_size={fits[0]}"))
    return ways


def _with_tile(changed: Any, spec: MemorySpec, room: Budget, what: str) -> str:
    """``what``, after the largest tile that fits with it when the job has none."""
    return what if spec.tile else f"tile={largest_tile(changed, room)} and {what}"
