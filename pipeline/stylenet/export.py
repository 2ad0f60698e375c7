"""`nst export`: a trained network as a file other runtimes load, for any image size.

- ONNX (onnxruntime, TensorRT, browsers): height and width are dynamic axes, so one file takes
  any photo (exported models fixed to one resolution are a common complaint). The model's
  metadata travels as ``metadata_props`` (``nst_model``: the JSON record; ``fingerprint``).
- TorchScript (C++ / mobile PyTorch): ``torch.jit.script`` keeps the network's padding logic
  exact for every size; the record travels as the extra file ``nst_model.json``.

Either takes a float32 NCHW batch of RGB images in [0, 1] and returns the same, as `nst apply`'s
network does (sides of at least MIN_SIDE px).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from enum import Enum
from typing import TYPE_CHECKING, Any

from pipeline.errors import NstError

if TYPE_CHECKING:  # torch loads only when a model is exported (`nst --help` stays light)
    import torch

    from pipeline.run.model_file import StyleModel

META_KEY = "nst_model"
TRACE_SHAPE = (1, 3, 37, 50)  # sides that need the network's padding: the general path


class ExportFormat(str, Enum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


SUFFIXES = {".onnx": ExportFormat.ONNX, ".pt": ExportFormat.TORCHSCRIPT,
            ".ts": ExportFormat.TORCHSCRIPT}  # fmt: skip


def format_for(path: str, given: ExportFormat | None) -> ExportFormat:
    if given is not None:
        return given
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: give --format onnx or torchscript (or a .onnx / .pt name)")
    return SUFFIXES[suffix]


def record(model: StyleModel) -> dict[str, Any]:
    """What travels with the exported file: the model's metadata and how to call it."""
    from nst_ops.stylenet.network import MIN_SIDE

    return {
        "fingerprint": model.fingerprint,
        "input": f"float32 NCHW RGB in [0, 1], any height and width >= {MIN_SIDE}",
        "output": "float32 NCHW RGB in [0, 1], the input's size",
        **model.meta,
    }


def export_bytes(model: StyleModel, fmt: ExportFormat) -> bytes:
    net = model.net.eval()
    with warnings.catch_warnings():  # the exporters' notes are not the user's business
        warnings.simplefilter("ignore")
        if fmt is ExportFormat.TORCHSCRIPT:
            return _torchscript(net, record(model))
        return _onnx(net, record(model))


def _torchscript(net: torch.nn.Module, meta: dict[str, Any]) -> bytes:
    import torch

    buf = io.BytesIO()
    extra = {f"{META_KEY}.json": json.dumps(meta, default=str)}
    torch.jit.save(torch.jit.script(net), buf, _extra_files=extra)
    return buf.getvalue()


def _onnx(net: torch.nn.Module, meta: dict[str, Any]) -> bytes:
    import torch

    try:
        import onnx
    except ImportError:
        raise NstError(
            "ONNX export needs the onnx package: pip install 'nst-pipeline[export]'"
        ) from None

    axes = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            net, (torch.rand(*TRACE_SHAPE),), path, input_names=["image"],
            output_names=["styled"], dynamic_axes={"image": axes, "styled": axes},
            opset_version=17, dynamo=False,
        )  # fmt: skip
        proto = onnx.load(path)
    for key, value in (
        (META_KEY, json.dumps(meta, default=str)),
        ("fingerprint", meta["fingerprint"]),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return bytes(proto.SerializeToString())
