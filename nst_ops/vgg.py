"""VGG16/VGG19 feature extractor with literature layer names, truncation and pooling choice.

The layer structure comes from torchvision's own ``make_layers``/``cfgs`` so indices match
torchvision state dicts (``features.N.weight``). Weight *sources* (downloads, files, URLs) are the
pipeline's concern; this module only accepts an in-memory state dict or a seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torchvision.models.vgg import make_layers

from .layer_table import (  # noqa: F401  (re-exported: the network's names live with it)
    BACKBONE_CFG,
    CFGS,
    POOLINGS,
    WeightsError,
    check_layers,
    deepest,
    feature_hw,
    layer_names,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Frozen, truncated VGG ``features`` returning a dict of the requested layers' outputs.

    Input is RGB in [0, 1]; ImageNet normalisation happens inside so callers optimise pixels.
    ``amp`` autocasts only the network (bf16 convolutions, on CUDA or on CPUs with bf16 units);
    features are returned in fp32 so Gram matrices and losses stay fp32.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        backbone: str,
        layers: Iterable[str],
        pooling: str = "max",
        state_dict: Mapping[str, Tensor] | None = None,
        seed: int | None = None,
        amp: bool = False,
    ):
        super().__init__()
        layers = tuple(dict.fromkeys(layers))
        if not layers:
            raise ValueError("at least one layer is required")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        check_layers(backbone, layers)
        self.backbone, self.pooling, self.layers, self.amp = backbone, pooling, layers, amp
        names = layer_names(backbone)
        last = max(names.index(n) for n in layers)
        full = make_layers(CFGS[BACKBONE_CFG[backbone]])
        mods = list(full.children())[: last + 1]
        if pooling == "avg":
            mods = [
                nn.AvgPool2d(m.kernel_size, m.stride) if isinstance(m, nn.MaxPool2d) else m
                for m in mods
            ]
        self.features = nn.Sequential(*mods)
        self.names = names[: last + 1]
        if state_dict is not None:
            load_features(self.features, self.names, state_dict)
        else:
            _random_init(self.features, 0 if seed is None else seed)
        for m in self.features:
            if isinstance(m, nn.ReLU):
                m.inplace = False  # in-place ReLU would overwrite returned conv outputs
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()
        self.channels_last = False

    @staticmethod
    def prefers_channels_last(device: torch.device | str) -> bool:
        """channels_last where it is faster: on CUDA (tensor-core convolutions want NHWC). On
        CPU it was slower in most configurations measured by bench/run.py (oneDNN converts
        layouts around the non-convolution ops), so CPU keeps the default layout."""
        return torch.device(device).type == "cuda"

    def optimised_for(
        self, device: torch.device | str, channels_last: bool | None = None
    ) -> VGGFeatures:
        """Move to ``device`` in the layout that is faster there (or the one asked for). Only
        the layout changes: results equal the default layout's to float rounding."""
        self.to(device)
        if channels_last is None:
            channels_last = self.prefers_channels_last(device)
        self.channels_last = channels_last
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.features_at(x, self.layers)

    def features_at(self, x: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
        """Outputs of ``layers`` (any up to the truncation point); stops at the deepest one."""
        wanted = set(layers)
        unknown = wanted - set(self.names)
        if unknown:
            raise ValueError(
                f"layer(s) {', '.join(sorted(unknown))} are beyond this network's "
                f"last layer {self.names[-1]} or not in {self.backbone}"
            )
        h = (x - self.mean) / self.std
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        out: dict[str, Tensor] = {}
        cast = (
            torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
            if self.amp
            else nullcontext()
        )
        with cast:
            for name, module in zip(self.names, self.features, strict=True):
                h = module(h)
                if name in wanted:
                    out[name] = h.float()
                    if len(out) == len(wanted):
                        break
        return out


def use_cuda_precision() -> None:
    """The CUDA precision this project runs at: TF32 for the convolutions (cuDNN), true fp32
    for every matmul, so the Gram matrices and losses stay fp32 (nst_ops.losses)."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = False


def _random_init(features: nn.Sequential, seed: int) -> None:
    """torchvision's VGG init (kaiming fan_out, zero bias), seeded and device-independent."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in features:
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()


def load_features(
    features: nn.Sequential, names: list[str], state_dict: Mapping[str, Tensor]
) -> None:
    """Copy conv weights from a torchvision state dict (full model or ``features`` only).

    A partial dict is fine as long as it covers every conv the truncated network keeps.
    """
    sd = {k.removeprefix("features."): v for k, v in state_dict.items()}
    if not any(k.split(".")[0].isdigit() for k in sd):
        found = ", ".join(sorted(state_dict)[:4]) or "no keys"
        raise WeightsError(
            f"not a VGG16/VGG19 state dict (expected keys like features.0.weight; found {found})"
        )
    with torch.no_grad():
        for i, (name, m) in enumerate(zip(names, features, strict=True)):
            if not isinstance(m, nn.Conv2d):
                continue
            parts = [("weight", m.weight)] + ([("bias", m.bias)] if m.bias is not None else [])
            for part, param in parts:
                key = f"{i}.{part}"
                if key not in sd:
                    raise WeightsError(
                        f"weights lack layer {name} (tensor features.{key}); the file covers "
                        f"fewer layers than requested — choose layers up to the last one it has"
                    )
                t = sd[key]
                if not isinstance(t, Tensor) or tuple(t.shape) != tuple(param.shape):
                    shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise WeightsError(
                        f"weights tensor features.{key} ({name}) has shape {shape}, "
                        f"expected {tuple(param.shape)}"
                    )
                param.copy_(t.to(param.dtype))
