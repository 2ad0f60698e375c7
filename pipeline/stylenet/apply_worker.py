"""The Ray Data actor of `nst apply`: holds the network on its device (a GPU when Ray gave it
one), stylises a batch of inputs, writes each output whole, then the batch's part file, which
commits them. A photo that cannot be read or decoded is a failed row, never an exception."""

from __future__ import annotations

import hashlib
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from nst_ops.evaluator import Evaluator
from nst_ops.image_ops import fit_longer_side
from nst_ops.stylenet.network import MIN_SIDE
from nst_ops.stylenet.tiled import tiled_apply
from nst_ops.tile_size import NETWORK_TILE
from pipeline.errors import InputError, NstError
from pipeline.run import images, objective, scoring
from pipeline.run.devices import amp_enabled
from pipeline.run.model_file import read_model
from pipeline.store import storage
from pipeline.stylenet import apply_record, layout


@dataclass(frozen=True)
class ApplyOptions:
    out: str
    model_uri: str
    size: int = 0  # longer side of the output; 0 keeps each input's own size
    image_format: str = "png"
    image_quality: int = 95
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 where the device has bf16 units)
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    tile: int = NETWORK_TILE  # a larger input runs tile by tile (nst_ops.stylenet.tiled); 0: never
    evaluator: dict[str, Any] | None = None
    storage_options: dict | None = None  # credentials: never written anywhere


MIN_SIZE = 16  # --size: smaller outputs are not photos (and the network's padding needs >= 5 px)


def check_size(size: int) -> None:
    if size and size < MIN_SIZE:
        raise NstError(f"--size {size}: give 0 (each input's own size) or at least {MIN_SIZE}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if amp_enabled("auto", device) else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Stylizer:
    def __init__(self, opts: ApplyOptions):
        self.opts = opts
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.store = storage.Store(opts.out, opts.storage_options)
        model = read_model(opts.model_uri, opts.storage_options)
        self.model, self.net = model, model.net.to(self.device)
        self.dtype = autocast_dtype(opts.precision, self.device)
        self.evaluator = Evaluator.from_dict(opts.evaluator) if opts.evaluator else None
        self.ext = images.FORMATS[opts.image_format][1]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self._one(r) for r in batch.to_pylist()]
        part = apply_record.table(rows)
        key = "\n".join(r["input"] for r in rows) + str(time.time())
        name = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.store.put(layout.part(name), apply_record.to_bytes(part))  # commits the batch
        return part.select(["input", "status"])

    def _one(self, item: dict[str, Any]) -> dict[str, Any]:
        t0 = time.time()
        row: dict[str, Any] = {
            "input": item["input"], "input_uri": item["input_uri"],
            "input_fingerprint": item["input_fingerprint"], "status": "failed",
            "model_fingerprint": self.model.fingerprint, "device": str(self.device),
        }  # fmt: skip
        try:
            row |= self._stylise(item)
        except Exception as e:  # noqa: BLE001  (one photo's problem is its row, not the run's)
            row["error"] = str(e) if isinstance(e, NstError) else f"{type(e).__name__}: {e}"
            self._drop_old_output(item["input"])
        return row | {"seconds": round(time.time() - t0, 4), "finished_at": time.time()}

    def _drop_old_output(self, rel: str) -> None:
        """A failed redo must not leave an earlier run's output beside its failed row."""
        path = storage.join(self.store.root, layout.output_image(rel, self.ext))
        try:
            self.store.fs.rm(path)
        except OSError:
            pass

    def _stylise(self, item: dict[str, Any]) -> dict[str, Any]:
        o = self.opts
        data = storage.read_input(item["input_uri"], o.storage_options)
        photo = images.decode(data, item["input_uri"], o.max_pixels)
        x = fit_longer_side(photo, o.size) if o.size else photo[None]
        if min(x.shape[-2:]) < MIN_SIDE:
            h, w = x.shape[-2:]
            raise InputError(
                f"{item['input_uri']}: {w}x{h} px as the network would see it; its shorter side "
                f"must be at least {MIN_SIDE} px (a larger --size, or a less narrow image)"
            )
        with torch.no_grad(), self._autocast():
            y = self._forward(x.to(self.device)).float()[0].cpu()
        encoded = images.encode(y, o.image_format, o.image_quality)
        out = layout.output_image(item["input"], self.ext)
        self.store.put(out, encoded)
        found = {
            "output": out, "status": "ok", "error": None, "bytes": len(encoded),
            "width": photo.shape[-1], "height": photo.shape[-2],
            "out_width": y.shape[-1], "out_height": y.shape[-2],
        }  # fmt: skip
        if item.get("score") and self.evaluator is not None:
            spec, styles = self.model.spec, self.model.styles
            found |= scoring.score_image(
                self.evaluator, encoded, spec, photo, styles, self.device, o.storage_options
            )
            saved = images.decode(encoded, "output")  # measured as stored
            found |= objective.columns(spec, saved, photo, styles, self.device, o.storage_options)
        return found

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pass, or tile by tile with the whole image's instance-norm statistics."""
        if self.opts.tile and max(x.shape[-2:]) > self.opts.tile:
            return tiled_apply(self.net, x, self.opts.tile)
        return self.net(x)

    def _autocast(self) -> Any:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
