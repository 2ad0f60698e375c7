"""Where VGG weights come from: torchvision's cache, a local path or fsspec URL, or a seed.

Files are only ever read with ``torch.load(weights_only=True)``: a pickle carrying code is refused.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from functools import lru_cache

import torch
from torch import Tensor

from nst_ops.layer_table import WeightsError
from pipeline.errors import NstError
from pipeline.store import storage
from pipeline.store.input_policy import WEIGHTS_MAX_BYTES


def parse(weights: str) -> tuple[str, int | None]:
    """'random:7' -> ('random', 7); 'imagenet' -> ('imagenet', None); else ('file', None)."""
    if weights.startswith("random:"):
        return "random", int(weights.split(":", 1)[1])
    if weights == "imagenet":
        return "imagenet", None
    return "file", None


def load_state_dict(uri: str, storage_options: dict | None = None) -> dict[str, Tensor]:
    """Read a torchvision state dict (full model or ``features`` only) from any fsspec URL."""
    try:
        data = storage.read_input(uri, storage_options, limit=WEIGHTS_MAX_BYTES)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {uri}") from None
    except (OSError, ValueError, TypeError, NstError) as e:
        raise WeightsError(f"weights file {uri}: could not be read ({e})") from None
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise WeightsError(
            f"weights file {uri} is not a plain tensor state dict: {refusal_reason(e)}"
        ) from None
    except Exception as e:  # noqa: BLE001  torch.load fails on non-checkpoints in many ways
        raise WeightsError(
            f"weights file {uri} is not a PyTorch state dict file ({type(e).__name__}: {e}); "
            f"expected a torchvision VGG16/VGG19 state dict saved with torch.save"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise WeightsError(f"weights file {uri} does not hold a dict of tensors")
    return sd


def refusal_reason(e: BaseException) -> str:
    """Why safe loading refused a file, without PyTorch's advice to load it unsafely (which
    this tool never does: a pickle can run code)."""
    text = str(e)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail or "Weights only load failed" in text:
        found = f" ({detail.group(1).strip()})" if detail else ""
        return f"it holds Python objects, not only tensors{found}; such files are never loaded"
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0] if lines else type(e).__name__


def imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    """torchvision's IMAGENET1K_V1 weights (downloaded once into the torch hub cache)."""
    from torchvision.models import get_weight

    w = get_weight(f"{backbone.upper()}_Weights.IMAGENET1K_V1")
    try:
        return w.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # network errors come in many types; the message is what matters
        raise WeightsError(
            f"could not fetch torchvision's {backbone} ImageNet weights ({e}); on machines without "
            f"internet, stage the file and pass its path or URL as weights"
        ) from None


def cached_state_dict(
    weights: str, backbone: str, storage_options: dict | None = None
) -> dict[str, Tensor] | None:
    """Per-process cache so a long-lived worker reads each weights file once; a file on an
    object store is read with the run's options for its protocol (e.g. a MinIO endpoint)."""
    options = json.dumps(storage.options_for(weights, storage_options), sort_keys=True)
    return _cached(weights, backbone, options)


@lru_cache(maxsize=4)
def _cached(weights: str, backbone: str, options: str) -> dict[str, Tensor] | None:
    kind, _ = parse(weights)
    if kind == "random":
        return None
    if kind == "imagenet":
        return imagenet_state_dict(backbone)
    return load_state_dict(weights, json.loads(options))


def check_covers(
    weights: str, backbone: str, layers: list[str], storage_options: dict | None = None
) -> None:
    """Load ``weights`` once and build the truncated network: raises WeightsError naming what is
    missing or wrong (the check `nst validate` runs before any compute)."""
    from nst_ops.layer_table import deepest
    from nst_ops.vgg import VGGFeatures

    sd = cached_state_dict(weights, backbone, storage_options)
    if sd is not None:
        VGGFeatures(backbone, [deepest(backbone, layers)], state_dict=sd)
