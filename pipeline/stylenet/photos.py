"""Content photos for training: listed once on the driver (a folder, a glob, or a manifest of
URIs), read by each Ray Train worker through fsspec, and cut into random crops and flips that
depend only on (seed, worker rank, step): a resumed run draws exactly the batches it would
have drawn."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import NstError
from pipeline.jobs.manifest import list_images
from pipeline.run import images
from pipeline.run.tensor_lru import TensorLRU
from pipeline.store import input_policy, storage
from pipeline.store.input_policy import WEIGHTS_MAX_BYTES

URI_COLUMNS = ("uri", "content_uri")


def list_photos(sources: Sequence[str], storage_options: dict | None = None) -> list[str]:
    """Every photo the sources name: folders and globs are listed, a .parquet/.csv manifest
    gives its `uri` (or `content_uri`) column, a .txt one URI per line. Sorted, no repeats."""
    found: list[str] = []
    for src in sources:
        input_policy.check_source(src)  # before the listing's (or the list file's) first request
        low = src.lower()
        if low.endswith((".parquet", ".csv", ".txt")):
            found += _from_manifest(src, storage_options)
        else:
            found += list_images(src, storage_options)
    if not found:
        raise NstError(f"no content photos found in {', '.join(sources)}")
    return sorted(dict.fromkeys(found))


def _from_manifest(uri: str, storage_options: dict | None) -> list[str]:
    data = storage.read_input(uri, storage_options, limit=WEIGHTS_MAX_BYTES)
    if uri.lower().endswith(".txt"):
        lines = [line.strip() for line in data.decode().splitlines() if line.strip()]
        return [_beside(uri, line) for line in lines]
    reader = pq.read_table if uri.lower().endswith(".parquet") else pacsv.read_csv
    table = reader(io.BytesIO(data))
    column = next((c for c in URI_COLUMNS if c in table.column_names), None)
    if column is None:
        raise NstError(f"{uri}: a photo manifest needs a column named {' or '.join(URI_COLUMNS)}")
    return [u for u in table.column(column).to_pylist() if u]


def _beside(list_uri: str, entry: str) -> str:
    """A relative local path in a local list file is relative to the list's folder (as in a
    manifest), never to wherever a worker runs."""
    if "://" in entry or os.path.isabs(entry) or storage.protocol_of(list_uri) != "file":
        return entry
    folder = os.path.dirname(os.path.abspath(list_uri.split("://", 1)[-1]))
    return os.path.normpath(os.path.join(folder, entry))


def probe_photos(
    uris: Sequence[str], storage_options: dict | None, max_pixels: int
) -> tuple[list[str], list[str]]:
    """(readable photos, "uri: why" for each one that is not), every photo checked before step
    1: a bad file found at step 91 of 100 would fail the run, and every rerun after it."""

    def problem(uri: str) -> str | None:
        found = images.probe_input(uri, storage_options, max_pixels)
        return found if isinstance(found, str) else None

    with ThreadPoolExecutor(16) as pool:
        problems = list(pool.map(problem, uris))
    good = [u for u, p in zip(uris, problems, strict=True) if p is None]
    return good, [p for p in problems if p is not None]


def shorter_side_to(img: Tensor, side: int) -> Tensor:
    """(3,H,W) scaled so that its shorter side is ``side`` (antialiased), as (3,h,w)."""
    h, w = img.shape[-2:]
    s = side / min(h, w)
    hw = (max(side, round(h * s)), max(side, round(w * s)))
    return F.interpolate(img[None], size=hw, mode="bilinear", antialias=True)[0].clamp(0, 1)


class CropSampler:
    """Random crops of ``crop`` px from a worker's share of the photos. Each photo is decoded
    once and kept at a shorter side of ``crop`` (a bounded cache): the scale a photo has when
    `nst apply --size` gives it about that size, as Johnson et al. train (resize, then crop);
    crops come from a random scale between 1 and ``zoom`` of that, half of them flipped."""

    def __init__(
        self,
        uris: Sequence[str],
        crop: int,
        seed: int,
        rank: int = 0,
        storage_options: dict | None = None,
        max_pixels: int = images.DEFAULT_MAX_PIXELS,
        cache_bytes: int = 1 << 30,
        zoom: float = 1.0,
        aspects: Sequence[float] = (1.0,),
    ):
        if not uris:
            raise NstError("no photos to train on")
        self.uris, self.crop, self.seed, self.rank = list(uris), crop, seed, rank
        self.options, self.max_pixels, self.cache_bytes = storage_options, max_pixels, cache_bytes
        self.cache = TensorLRU(cache_bytes)
        self.zoom, self.aspects = zoom, list(aspects)

    def photo(self, uri: str) -> Tensor:
        if uri in self.cache:
            return self.cache[uri]
        data = storage.read_input(uri, self.options)
        img = shorter_side_to(
            images.decode(data, uri, self.max_pixels), round(self.crop * self.zoom)
        )
        self.cache[uri] = img
        return img

    def batch(self, step: int, size: int) -> Tensor:
        """``size`` crops of one shape (a step's aspect, drawn from ``aspects``: w/h)."""
        return self.batch_of(step, size, self.crop)[0]

    def batch_of(self, step: int, size: int, side: int) -> tuple[Tensor, tuple[int, int]]:
        """``size`` crops of shorter side ``side`` cut from the photos at ``crop``'s scale,
        and the (h, w) of the ``crop``-side crop of that aspect: the whole a smaller crop is
        judged as a part of (StyleObjective rescales that shape's style target to it)."""
        rng = np.random.default_rng([self.seed, self.rank, step])
        picks = rng.integers(0, len(self.uris), size)
        aspect = self.aspects[int(rng.integers(0, len(self.aspects)))]
        if len(self.aspects) == 1:  # the draws of square-only training stay as they were
            rng = np.random.default_rng([self.seed, self.rank, step])
            picks = rng.integers(0, len(self.uris), size)
        hw = self.shape(aspect, side)
        crops = torch.stack([self._crop(self.photo(self.uris[i]), rng, hw) for i in picks])
        return crops, self.shape(aspect)

    def shape(self, aspect: float, side: int | None = None) -> tuple[int, int]:
        """(h, w) of a crop of ``aspect`` (w/h) whose shorter side is ``side`` (default
        ``crop``; the longer a multiple of 4, as the network's two stride-2 convolutions like)."""
        side = side or self.crop
        long = 4 * round(side * max(aspect, 1 / aspect) / 4)
        return (side, long) if aspect >= 1 else (long, side)

    def _crop(self, img: Tensor, rng: np.random.Generator, hw: tuple[int, int]) -> Tensor:
        scale = rng.uniform(1.0, self.zoom)
        h, w = img.shape[-2:]
        ch, cw = int(hw[0] * scale), int(hw[1] * scale)
        if ch > h or cw > w:  # the largest crop of that shape the photo holds
            fit = min(h / hw[0], w / hw[1])
            ch, cw = min(h, max(1, round(hw[0] * fit))), min(w, max(1, round(hw[1] * fit)))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        patch = img[:, top : top + ch, left : left + cw]
        if (ch, cw) != hw:
            patch = F.interpolate(patch[None], size=hw, mode="bilinear",
                                  antialias=True)[0].clamp(0, 1)  # fmt: skip
        return patch.flip(-1) if rng.random() < 0.5 else patch
