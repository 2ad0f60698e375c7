"""The output layouts of `nst train` and `nst apply`, relative to their --out root.

`nst train --out T`:

    train.json                   the training's settings (no credentials); a rerun must match
    checkpoints/step-NNNNNN.pt   network + optimizer state every --checkpoint-every steps
    trace.parquet                loss per step (rewritten with each checkpoint)
    samples/step-NNNNNN/<k>.png  the held-aside photos through the network
    model.pt                     the final network with its metadata; written last
    _LEASE                       the live training's lease (as `nst run`'s)
    _KIND                        {"kind": "train"} (pipeline.store.root_kind)

`nst apply MODEL --out A`:

    images/<input's path under the collection root, extension of --image-format>
    parts/<batch id>.parquet     one row per image of a batch, written after its images: the
                                 commit record of those images (input, fingerprint, status...)
    results.parquet              every image's latest row, rebuilt at the end of each run
    apply.json                   the model's fingerprint and metadata, the run's options
    report.html                  `nst report`
    _LEASE
    _KIND                        {"kind": "apply"}
"""

from __future__ import annotations

import posixpath

TRAIN_SETTINGS = "train.json"
CHECKPOINTS = "checkpoints"
TRACE = "trace.parquet"
SAMPLES = "samples"
MODEL = "model.pt"

IMAGES = "images"
PARTS = "parts"
APPLY_RECORD = "apply.json"


def checkpoint(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step:06d}.pt"


def step_of_checkpoint(name: str) -> int | None:
    stem = name.rsplit("/", 1)[-1]
    if stem.startswith("step-") and stem.endswith(".pt") and stem[5:-3].isdigit():
        return int(stem[5:-3])
    return None


def sample(step: int, k: int) -> str:
    return f"{SAMPLES}/step-{step:06d}/{k}.png"


def output_image(rel: str, ext: str) -> str:
    """An input's relative path as its output path: same folders and stem, new extension.
    ``rel`` never climbs out (it comes from listing below the root)."""
    stem, _ = posixpath.splitext(rel)
    if rel.startswith("/") or ".." in rel.split("/"):
        raise ValueError(f"invalid relative path {rel!r}")
    return f"{IMAGES}/{stem}.{ext}"


def part(batch_id: str) -> str:
    return f"{PARTS}/{batch_id}.parquet"
