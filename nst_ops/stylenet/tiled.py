"""A style network applied tile by tile, for photos too large for one pass (prints).

Instance norm makes every output pixel depend on the statistics of the whole feature map, so
tiles normalised on their own would not match at their borders. Here each instance norm uses the
whole image's mean and variance, found in order: pass k runs every tile up to norm k (the norms
before it already frozen at their whole-image statistics) and sums its input over the tiles'
cores; the last pass writes each tile's core. With a margin covering the network's receptive
field (54 px for the published architecture: ``receptive_radius``) each core's output is the one
the whole image would give, up to the order of floating-point sums. Memory is that of one tile
with its margins; time is about (norm layers + 1) / 2 forwards of the image (~8x one pass).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tiles import Box, grid
from .network import TransformerNet

ALIGN = 4  # tiles and margins on the network's coarsest grid


def receptive_radius(net: TransformerNet) -> int:
    """px an output pixel sees on each side: 9x9 (4) + two stride-2 3x3 (1 + 2) + each block's
    two 3x3 at 1/4 (8) + the up path (2 + 1) + 9x9 (4); 54 with 5 blocks (checked by a test:
    a margin of the radius rounded up to 4 gives the untiled output, 4 px less does not)."""
    return 14 + 8 * net.config.residual_blocks


class _StopForward(Exception):
    """Raised by the norm being measured: nothing after it is needed in that pass."""


class _WholeImageNorm(nn.Module):
    """An InstanceNorm2d that normalises with statistics summed over the tiles' cores."""

    def __init__(self, inner: nn.InstanceNorm2d):
        super().__init__()
        self.inner = inner
        self.mean: Tensor | None = None
        self.var: Tensor | None = None
        self.collecting = False
        self.sums: list[Tensor] = []
        self.core: tuple[float, float, float, float] = (0, 1, 0, 1)  # of the box, as fractions

    def forward(self, x: Tensor) -> Tensor:
        if self.collecting:
            h, w = x.shape[-2:]
            y0, y1, x0, x1 = self.core
            part = x[..., round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)].double()
            found = [
                part.sum((-2, -1)),
                part.pow(2).sum((-2, -1)),
                part.new_tensor(part[0, 0].numel()),
            ]
            self.sums = (
                found if not self.sums else [a + b for a, b in zip(self.sums, found, strict=True)]
            )
            raise _StopForward
        assert self.mean is not None and self.var is not None, "statistics not measured yet"
        y = (x - self.mean) / torch.sqrt(self.var + self.inner.eps)
        if self.inner.affine:
            y = y * self.inner.weight.view(1, -1, 1, 1) + self.inner.bias.view(1, -1, 1, 1)
        return y

    def freeze(self) -> None:
        total, squares, n = self.sums
        mean = total / n
        self.mean = mean.float().view(*mean.shape, 1, 1)
        self.var = (squares / n - mean.pow(2)).clamp_min(0).float().view(*mean.shape, 1, 1)
        self.collecting, self.sums = False, []


@contextmanager
def _whole_image_norms(net: TransformerNet) -> Iterator[list[_WholeImageNorm]]:
    """The network with each InstanceNorm2d swapped for a _WholeImageNorm (restored after),
    listed in the order the forward meets them (named_modules is that pre-order)."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    norms: list[_WholeImageNorm] = []
    for path, child in list(net.named_modules()):
        if isinstance(child, nn.InstanceNorm2d):
            parent_path, _, name = path.rpartition(".")
            parent = net.get_submodule(parent_path)
            wrapper = _WholeImageNorm(child)
            setattr(parent, name, wrapper)
            swapped.append((parent, name, child))
            norms.append(wrapper)
    try:
        yield norms
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def tiled_apply(
    net: TransformerNet, x: Tensor, tile: int = 512, margin: int | None = None
) -> Tensor:
    """``net(x)`` for (1,3,H,W) ``x``, computed ``tile`` px at a time (see the module); the
    margin defaults to the receptive field."""
    margin = receptive_radius(net) if margin is None else margin
    tile, margin = -(-tile // ALIGN) * ALIGN, -(-margin // ALIGN) * ALIGN
    h, w = x.shape[-2:]
    ph, pw = (-h) % ALIGN, (-w) % ALIGN
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    boxes = [(t.core, t.box) for t in grid((xp.shape[-2], xp.shape[-1]), tile, margin)]
    out = torch.empty_like(xp)
    with _whole_image_norms(net) as norms, torch.no_grad():
        for norm in norms:
            norm.collecting = True
            for core, box in boxes:
                norm.core = _fractions(core, box)
                try:
                    net(xp[..., box[0] : box[1], box[2] : box[3]])
                except _StopForward:
                    pass
            norm.freeze()
        for core, box in boxes:
            y = net(xp[..., box[0] : box[1], box[2] : box[3]])
            top, left = core[0] - box[0], core[2] - box[2]
            out[..., core[0] : core[1], core[2] : core[3]] = y[
                ..., top : top + core[1] - core[0], left : left + core[3] - core[2]
            ]
    return out[..., :h, :w]


def _fractions(core: Box, box: Box) -> tuple[float, float, float, float]:
    """The core's place in its box as fractions (the same at every resolution of the net)."""
    bh, bw = box[1] - box[0], box[3] - box[2]
    return ((core[0] - box[0]) / bh, (core[1] - box[0]) / bh, (core[2] - box[2]) / bw,
            (core[3] - box[2]) / bw)  # fmt: skip
