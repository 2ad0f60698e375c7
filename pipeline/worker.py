"""Run one job: read inputs through fsspec, optimise, write outputs, commit.

Application failures (bad image, divergence, bad weights) become a committed ``failed`` or
``diverged`` record and never raise, so one bad job cannot stop a run. Only the death of the
process itself escapes, which is what Ray's ``max_retries`` is for.
"""

from __future__ import annotations

import copy
import platform
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pyarrow as pa
import torch

from nst_ops.transfer import stylize
from nst_ops.vgg import VGGFeatures, deepest

from . import images, storage, weights
from .errors import NstError
from .jobs import Job

_EXTRACTORS: dict[tuple, VGGFeatures] = {}
# Exceptions whose message is the whole story for the user (no traceback in job.json).
EXPECTED = (NstError, ValueError)


@dataclass(frozen=True)
class RunOptions:
    """Per-run settings that are not job parameters (never part of a job id)."""

    out: str
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    storage_attempts: int = 4
    storage_options: dict | None = None  # credentials live here: never written anywhere


def pick_device(prefer_gpu: bool = True) -> torch.device:
    return torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")


def extractor_for(job: Job, device: torch.device) -> VGGFeatures:
    """A per-process cache: long-lived workers build each network once."""
    s = job.spec
    last = deepest(s.backbone, s.active_layers)
    key = (s.backbone, s.pooling, s.weights, last, str(device), s.amp)
    if key not in _EXTRACTORS:
        _, seed = weights.parse(s.weights)
        sd = weights.cached_state_dict(s.weights, s.backbone)
        net = VGGFeatures(s.backbone, [last], s.pooling, state_dict=sd, seed=seed, amp=s.amp)
        _EXTRACTORS[key] = net.to(device)
    net = copy.copy(_EXTRACTORS[key])  # shares the weights; only the returned layers differ
    net.layers = s.active_layers
    return net


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("nst-pipeline", "torch", "torchvision", "ray", "fsspec", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _trace_table(trace: list[dict]) -> pa.Table:
    return (
        pa.Table.from_pylist(trace) if trace else pa.table({"iteration": pa.array([], pa.int64())})
    )


def run_job(
    job: Job,
    opts: RunOptions,
    device: torch.device | None = None,
    placement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``job`` and return its result row (also written as the commit marker).

    ``placement`` (e.g. the GPU ids Ray assigned) is recorded in the row as given.
    """
    device = device or pick_device()
    store = storage.Store(opts.out, opts.storage_options, opts.storage_attempts)
    base = storage.job_dir("", job.id).lstrip("/")
    started = time.time()
    row: dict[str, Any] = {
        **job.to_record(),
        "status": "failed",
        "error": None,
        "device": str(device),
        "host": platform.node(),
        **(placement or {}),
    }
    outcome = None
    try:
        content = read_image(job.content_uri, opts) if job.spec.uses_content else None
        styles = [read_image(u, opts) for u in job.style_uris]
        net = extractor_for(job, device)
        outcome = stylize(job.spec, net, content, styles)
        row.update(
            status=outcome.status,
            error=outcome.reason,
            iterations_run=outcome.iterations,
            diverged_at=outcome.diverged_at,
            **{f"final_{k}": v for k, v in outcome.final.items() if k != "iteration"},
        )
    except EXPECTED as e:
        row.update(error=str(e))
    except Exception as e:  # noqa: BLE001  (any application bug is recorded, not fatal)
        row.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
    row["seconds"] = round(time.time() - started, 3)
    try:
        if outcome is not None:
            store.put(f"{base}/image.png", images.encode_png(outcome.image))
            store.put_table(f"{base}/trace.parquet", _trace_table(outcome.trace))
            row["image_uri"] = store.url(f"{base}/image.png")
            row["trace_uri"] = store.url(f"{base}/trace.parquet")
        record = {
            **row,
            "params": job.spec.to_dict(),
            "versions": _versions(),
            "started_at": started,
            "finished_at": time.time(),
        }
        store.put_json(f"{base}/job.json", record)
        store.put_json(f"{base}/{storage.MARKER}", row)  # last: the job now counts as done
        row["committed"] = True
    except OSError as e:
        row.update(status="failed", error=f"could not write outputs: {e}", committed=False)
    return row


def read_image(uri: str, opts: RunOptions) -> torch.Tensor:
    try:
        data = storage.read_bytes(uri, opts.storage_options, opts.storage_attempts)
    except FileNotFoundError:
        raise NstError(f"{uri}: input not found") from None
    except PermissionError as e:
        raise NstError(f"{uri}: access denied ({e})") from None
    except OSError as e:
        raise NstError(f"{uri}: could not read input ({e})") from None
    return images.decode(data, uri, opts.max_pixels)
