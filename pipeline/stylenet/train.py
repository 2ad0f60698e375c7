"""`nst train`: a style network trained with a grid job's own objective on Ray Train.

The driver lists the photos, reads the style, holds the output root's lease and starts a
``TorchTrainer`` (DDP: gloo on CPUs, NCCL on GPUs). Rank 0 writes checkpoints, the trace and
samples through fsspec; every worker resumes from the newest checkpoint under --out, so a killed
run started again with the same command continues where its last checkpoint left it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Any

from nst_ops.spec import JobSpec
from pipeline.errors import NstError
from pipeline.run import lease
from pipeline.store import record, storage
from pipeline.stylenet import layout
from pipeline.stylenet.checkpoints import latest_checkpoint
from pipeline.stylenet.photos import list_photos
from pipeline.stylenet.train_settings import TrainSettings


def split_photos(photos: list[str], holdout: int) -> tuple[list[str], list[str]]:
    """(train, held aside): the last ``holdout`` photos in sorted order are never trained on."""
    if holdout < 0 or holdout >= len(photos):
        raise NstError(
            f"--holdout {holdout}: needs at least one photo left to train on ({len(photos)} found)"
        )
    return photos[: len(photos) - holdout], photos[len(photos) - holdout :]


def make_settings(
    out: str,
    spec: JobSpec,
    style_uris: list[str],
    content: list[str],
    holdout: int,
    storage_options: dict | None,
    **options: Any,
) -> TrainSettings:
    if spec.mode != "transfer":
        raise NstError(f"a style network learns style transfer; mode {spec.mode!r} is not that")
    photos = list_photos(content, storage_options)
    train, held = split_photos(photos, holdout)
    return TrainSettings(
        out, spec.to_dict(), style_uris, train, held, storage_options=storage_options, **options
    )


def check_rerun(store: storage.Store, settings: TrainSettings) -> None:
    """A second `nst train` into the same --out must be the same training (maybe longer)."""
    if not store.exists(layout.TRAIN_SETTINGS):
        return
    import json

    before = json.loads(store.get(layout.TRAIN_SETTINGS))
    now = json.loads(record.to_json(settings.identity()))
    if before.get("identity") != now:
        changed = sorted(
            k for k in set(before.get("identity", {})) | set(now)
            if before.get("identity", {}).get(k) != now.get(k)
        )  # fmt: skip
        raise NstError(
            f"{store.url('')} holds a training with other settings ({', '.join(changed)} "
            "differ); give a new --out, nothing there was changed"
        )


def train(settings: TrainSettings, address: str | None = None) -> dict[str, Any]:
    """Run (or continue) the training; returns the model's metadata."""
    from pipeline.run.scheduler import init_ray

    store = storage.Store(settings.out, settings.storage_options)
    check_rerun(store, settings)
    with lease.held(store):
        store.put_json(
            layout.TRAIN_SETTINGS,
            {"identity": settings.identity(), "steps": settings.steps, "out": settings.out},
        )
        done = _finished_model(store, settings)
        if done is not None:
            return done
        resume = latest_checkpoint(store)
        if resume:
            print(f"resuming from the checkpoint at step {resume}", file=sys.stderr, flush=True)
        init_ray(address)
        _fit(settings if settings.use_gpu is not None else replace(settings, use_gpu=_has_gpu()))
    from pipeline.run.model_file import from_bytes

    return from_bytes(store.get(layout.MODEL), store.url(layout.MODEL)).meta


def _finished_model(store: storage.Store, settings: TrainSettings) -> dict[str, Any] | None:
    """The model already trained to the asked steps (a rerun then has nothing to do)."""
    from pipeline.run.model_file import ModelError, from_bytes

    if not store.exists(layout.MODEL):
        return None
    try:
        meta = from_bytes(store.get(layout.MODEL), store.url(layout.MODEL)).meta
    except ModelError:
        return None
    return meta if meta.get("steps") == settings.steps else None


def _has_gpu() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _fit(settings: TrainSettings) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.stylenet.train_loop import train_loop

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"settings": settings},
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.workers,
            use_gpu=bool(settings.use_gpu),
            resources_per_worker={"CPU": settings.cpus_per_worker}
            | ({"GPU": 1} if settings.use_gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=f"nst-train-{int(time.time() * 1000)}",
            failure_config=ray.train.FailureConfig(max_failures=3),
        ),
    )
    try:
        trainer.fit()
    except Exception as e:  # Ray wraps the worker's error; its first line is the story
        raise NstError(f"training failed: {_first_cause(e)}") from None


def _first_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
