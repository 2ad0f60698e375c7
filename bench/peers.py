"""Real peers for bench/run.py, fed the same weights, layers and images as ours.

pystiche 1.0.1 (the maintained library for this; `pip install -e ".[bench]"`) is imported
with a shim for current torchvision, which no longer has the ``model_urls`` dicts it imports.
The shim lives here, in the benchmark, never in the project."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from nst_ops.vgg import layer_names

VGG_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")


def _shim_torchvision() -> None:
    for module, names in (("alexnet", ("alexnet",)), ("vgg", VGG_NAMES)):
        mod = importlib.import_module(f"torchvision.models.{module}")
        if not hasattr(mod, "model_urls"):
            mod.model_urls = {k: "" for k in names}  # type: ignore[attr-defined]


def pystiche_available() -> str | None:
    """pystiche's version, or None where it does not install/import."""
    try:
        _shim_torchvision()
        import pystiche
    except Exception:  # noqa: BLE001  (an optional peer: absent is a result, not an error)
        return None
    return str(pystiche.__version__)


def pystiche_step(
    state_dict: dict | None,
    content: torch.Tensor,
    style: torch.Tensor,
    content_layers: tuple[str, ...],
    style_layers: tuple[str, ...],
    beta: float = 1e6,
) -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
    """pystiche's Gatys setup (FeatureReconstructionLoss + per-layer GramLoss in a
    PerceptualLoss) on our weights; returns (one loss+gradient evaluation, its input)."""
    _shim_torchvision()
    from pystiche import enc, loss

    mle = enc.vgg19_multi_layer_encoder(pretrained=False, internal_preprocessing=True,
                                        allow_inplace=False)  # fmt: skip
    if state_dict is not None:
        names = layer_names("vgg19")
        for key, value in state_dict.items():
            idx, kind = key.removeprefix("features.").split(".")
            getattr(mle, names[int(idx)]).__getattr__(kind).data.copy_(value)
    mle.requires_grad_(False)
    content_loss = loss.FeatureReconstructionLoss(mle.extract_encoder(content_layers[0]))
    style_loss = loss.MultiLayerEncodingLoss(
        mle, style_layers, lambda encoder, w: loss.GramLoss(encoder, score_weight=w),
        score_weight=beta,
    )  # fmt: skip
    perceptual = loss.PerceptualLoss(content_loss, style_loss)
    perceptual.set_content_image(content)
    perceptual.set_style_image(style)
    x = content.clone().requires_grad_(True)

    def step() -> torch.Tensor:
        x.grad = None
        total = perceptual(x).aggregate(0)
        total.backward()
        return total

    return step, x
