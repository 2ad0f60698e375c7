"""A trained style network as one file: its weights, its network shape and a metadata record
(the JobSpec it was trained under, the style's fingerprint, steps, versions) plus the style
image itself, so scoring and refinement need nothing else. Only plain tensors, numbers and
text: it loads with ``torch.load(weights_only=True)``, which refuses pickled code."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nst_ops.spec import JobSpec, SpecError
from nst_ops.stylenet import NetConfig, TransformerNet
from pipeline.errors import NstError
from pipeline.run.weights import refusal_reason
from pipeline.store import storage
from pipeline.store.input_policy import WEIGHTS_MAX_BYTES

FORMAT = "nst-stylenet/1"


class ModelError(NstError):
    """A file that is not a style network this version can load; the message names it."""


@dataclass
class StyleModel:
    net: TransformerNet
    meta: dict[str, Any]  # JSON-able: spec, net, style, steps, versions, ...
    styles: list[Tensor]  # (3,H,W) in [0,1]: the style image(s) the network was trained on
    fingerprint: str  # sha256 of the file's bytes (first 20 hex digits)

    @property
    def spec(self) -> JobSpec:
        return JobSpec.from_dict(self.meta["spec"])


def read_model(uri: str, storage_options: dict | None = None) -> StyleModel:
    """A model named by a user or a manifest: read under the input policy (weights' limit)."""
    return from_bytes(storage.read_input(uri, storage_options, limit=WEIGHTS_MAX_BYTES), uri)


def fingerprint_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def to_bytes(
    net: torch.nn.Module, config: NetConfig, meta: dict[str, Any], styles: list[Tensor]
) -> bytes:
    """The model file's bytes (written whole by the caller)."""
    state = {k: v.detach().cpu() for k, v in _plain(net).state_dict().items()}
    doc = {
        "format": FORMAT,
        "net": config.to_dict(),
        "meta": json.dumps(meta, default=str),
        "state_dict": state,
        "styles": [(s.detach().clamp(0, 1).cpu() * 255).round().to(torch.uint8) for s in styles],
    }
    buf = io.BytesIO()
    torch.save(doc, buf)
    return buf.getvalue()


def _plain(net: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (its keys carry no 'module.')."""
    inner = getattr(net, "module", net)
    assert isinstance(inner, torch.nn.Module)
    return inner


def from_bytes(data: bytes, name: str) -> StyleModel:
    """Load a model file; any other file (a VGG state dict, a pickle with code, a truncated
    download) is refused with a ModelError naming ``name``."""
    try:
        with warnings.catch_warnings():  # torch's warnings and advice are not our one line
            warnings.simplefilter("ignore")
            doc = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        msg = f"{name}: not a style network file ({refusal_reason(e)})"
        raise ModelError(msg) from None
    except Exception as e:  # noqa: BLE001  torch.load fails on non-checkpoints in many ways
        raise ModelError(f"{name}: not a style network file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(
            f"{name}: not a style network file (no {FORMAT!r} format marker; `nst train` "
            "writes model.pt)"
        )
    try:
        net = TransformerNet(NetConfig(**doc["net"]))
        net.load_state_dict(doc["state_dict"])
        meta = check_meta(json.loads(doc["meta"]))
        styles = [_style(s) for s in doc["styles"]]
    except (KeyError, TypeError, ValueError, RuntimeError, SpecError, AttributeError) as e:
        reason = f"{type(e).__name__}: {_first_line(e)}"
        raise ModelError(f"{name}: damaged style network file ({reason})") from None
    if not styles:
        raise ModelError(f"{name}: damaged style network file (no style image)")
    return StyleModel(net.eval().requires_grad_(False), meta, styles, fingerprint_bytes(data))


def check_meta(meta: Any) -> dict[str, Any]:
    """The whole metadata record as every reader uses it (apply, models, refinement), so a
    file with the right marker but wrong contents is refused on load, not midway."""
    if not isinstance(meta, dict):
        raise TypeError(f"metadata is a {type(meta).__name__}, not a record")
    if not isinstance(meta.get("spec"), dict):
        raise KeyError("metadata has no 'spec' record (the job the network was trained for)")
    if not isinstance(meta.get("style_uris", []), list):
        raise TypeError("metadata's 'style_uris' is not a list")
    if JobSpec.from_dict(meta["spec"]).mode != "transfer":
        raise ValueError("its job is not a style transfer")
    return meta


def _style(s: Any) -> Tensor:
    if not isinstance(s, Tensor) or s.dim() != 3 or s.shape[0] != 3:
        raise ValueError("a style image is not a (3, H, W) tensor")
    return s.float() / 255


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
