"""VGG layer names and feature-map sizes, without torch (so light commands never import it).

The configurations are torchvision's own ``cfgs`` (a test checks they are equal), so layer
indices match torchvision state dicts (``features.N.weight``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

BACKBONE_CFG = {"vgg16": "D", "vgg19": "E"}
POOLINGS = ("max", "avg")
CFGS: dict[str, list[int | str]] = {
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512,
          512, 512, "M"],
}  # fmt: skip


def layer_table(backbone: str) -> list[tuple[str, str, int, int]]:
    """(name, kind, output channels, downsampling factor) for every module of ``features``."""
    rows: list[tuple[str, str, int, int]] = []
    channels, scale = 3, 1
    names = iter(layer_names(backbone))
    for v in CFGS[BACKBONE_CFG[backbone]]:
        if v == "M":
            scale *= 2
            rows.append((next(names), "pool", channels, scale))
        else:
            channels = int(v)
            rows.append((next(names), "conv", channels, scale))
            rows.append((next(names), "relu", channels, scale))
    return rows


class WeightsError(ValueError):
    """A state dict that does not fit the network it is loaded into."""


def layer_names(backbone: str) -> list[str]:
    """Names of every module in ``features`` in order: conv1_1, relu1_1, ..., pool5."""
    if backbone not in BACKBONE_CFG:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONE_CFG)}")
    names, block, idx = [], 1, 1
    for v in CFGS[BACKBONE_CFG[backbone]]:
        if v == "M":
            names.append(f"pool{block}")
            block, idx = block + 1, 1
        else:
            names += [f"conv{block}_{idx}", f"relu{block}_{idx}"]
            idx += 1
    return names


def check_layers(backbone: str, layers: Iterable[str]) -> None:
    """Raise a ValueError listing the valid names when a layer is not in the backbone."""
    valid = layer_names(backbone)
    bad = [name for name in layers if name not in valid]
    if bad:
        raise ValueError(
            f"layer(s) {', '.join(bad)} not in {backbone}; valid layers: {', '.join(valid)}"
        )


def deepest(backbone: str, layers: Iterable[str]) -> str:
    names = layer_names(backbone)
    return max(layers, key=names.index)


def feature_hw(backbone: str, layer: str, hw: tuple[int, int]) -> tuple[int, int]:
    """A layer's feature-map size for an input of size ``hw``: 3x3 convolutions keep it, each
    2x2 pooling before (or at) the layer floors it by half."""
    names = layer_names(backbone)
    pools = sum(n.startswith("pool") for n in names[: names.index(layer) + 1])
    return hw[0] >> pools, hw[1] >> pools


def layer_stride(backbone: str, layer: str) -> int:
    """Input pixels per feature position at ``layer`` (2 per pooling before or at it): tiles
    start on multiples of it so that their poolings pair the pixels the whole image's do."""
    names = layer_names(backbone)
    return 1 << sum(n.startswith("pool") for n in names[: names.index(layer) + 1])


def receptive_radius(backbone: str, layer: str) -> int:
    """How far (px) a feature at ``layer`` sees beyond its own position's pixels: a tile with
    this much context around it computes the whole image's features in its core exactly."""
    radius, stride = 0, 1
    for name, kind, _, _ in layer_table(backbone):
        if kind == "conv":
            radius += stride  # 3x3, padding 1: one position each way at this layer's stride
        elif kind == "pool":
            radius += stride  # a 2x2 window reaches one position further on one side
            stride *= 2
        if name == layer:
            return radius
    raise ValueError(f"layer {layer!r} not in {backbone}")


def fits(backbone: str, layer: str, hw: tuple[int, int]) -> bool:
    """Whether an input of ``hw`` still has a feature map at ``layer`` (each pooling before it
    needs at least 2 px on each side: torch refuses an empty map)."""
    return min(feature_hw(backbone, layer, hw)) >= 1


def smallest_size(backbone: str, layer: str, aspect: float = 1.0) -> int:
    """The smallest longer side that keeps a feature map at ``layer`` for an image whose
    shorter side is ``aspect`` (<= 1) times its longer side (rounded as the resizing does)."""
    need = 1 << sum(
        n.startswith("pool")
        for n in layer_names(backbone)[: layer_names(backbone).index(layer) + 1]
    )
    size = need
    while max(1, round(size * min(aspect, 1.0))) < need:
        size += 1
    return size


def size_problem(backbone: str, layer: str, size: int, hw: tuple[int, int]) -> str | None:
    """Why an output of longer side ``size`` for an image of ``hw`` has no map at ``layer``."""
    h, w = hw
    s = size / max(h, w)
    out = (max(1, round(h * s)), max(1, round(w * s)))
    if fits(backbone, layer, out):
        return None
    least = smallest_size(backbone, layer, min(h, w) / max(h, w))
    return (
        f"size {size} gives a {out[1]}x{out[0]} output for this {w}x{h} image, too small for "
        f"{layer} (its feature map would be empty); the smallest size that works is {least}"
    )  # fmt: skip


def sweep_layer_sets(style_layers: Sequence[str]) -> list[tuple[str, ...]]:
    """The study's growing subsets: (l1,), (l1, l2), ..., all layers."""
    return [tuple(style_layers[: k + 1]) for k in range(len(style_layers))]
