"""``init=model:<uri>``: an optimisation job starts from a trained network's output for its
content image, so a few dozen iterations refine a feed-forward result (a collection's hardest
photos, or a grid's best setting) instead of hundreds from the photo itself."""

from __future__ import annotations

import torch
from torch import Tensor

from nst_ops.image_ops import fit_longer_side
from pipeline.run.model_file import StyleModel, read_model
from pipeline.store import storage

_MODELS: dict[tuple[str, str | None], StyleModel] = {}


def load_model(uri: str, storage_options: dict | None = None) -> StyleModel:
    """A per-process cache keyed by URI and fingerprint: a long-lived worker reads each model
    once, and a model replaced at the same URI is read again."""
    key = (uri, storage.fingerprint_of(uri, storage_options))
    if key not in _MODELS:
        _MODELS[key] = read_model(uri, storage_options)
    return _MODELS[key]


def network_start(model: StyleModel, content: Tensor, size: int) -> Tensor:
    """The network's output (3,h,w) for ``content`` (3,H,W) at longer side ``size``."""
    with torch.no_grad():
        return model.net(fit_longer_side(content, size))[0].clamp(0, 1)
