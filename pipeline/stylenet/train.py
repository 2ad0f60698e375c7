"""`nst train`: a style network trained with a grid job's own objective on Ray Train.

The driver lists the photos, reads the style, holds the output root's lease and starts a
``TorchTrainer`` (DDP: gloo on CPUs, NCCL on GPUs). Rank 0 writes checkpoints, the trace and
samples through fsspec; every worker resumes from the newest checkpoint under --out, so a killed
run started again with the same command continues where its last checkpoint left it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace
from typing import Any

from nst_ops.spec import JobSpec
from pipeline.errors import NstError
from pipeline.run import images, lease
from pipeline.store import record, root_kind, storage
from pipeline.store.root_kind import RootKind
from pipeline.stylenet import layout
from pipeline.stylenet.checkpoints import latest_checkpoint
from pipeline.stylenet.photos import list_photos, probe_photos
from pipeline.stylenet.train_progress import TrainProgress
from pipeline.stylenet.train_settings import ADDED_LATER, TrainSettings


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
    """The training's settings, every input checked first: the style images decode, and each
    photo is probed (a bad one is skipped with a line saying why, and recorded in the model's
    metadata), so nothing fails late in training."""
    if spec.mode != "transfer":
        raise NstError(f"a style network learns style transfer; mode {spec.mode!r} is not that")
    TrainSettings(out, spec.to_dict(), style_uris, [], [], **options)  # its checks, before probing
    for uri in style_uris:
        images.probe(storage.read_input(uri, storage_options), uri, options["max_pixels"])
    listed = list_photos(content, storage_options)
    photos, skipped = probe_photos(listed, storage_options, options["max_pixels"])
    for why in skipped:
        print(f"skipped: {why}", file=sys.stderr, flush=True)
    if not photos:
        raise NstError(f"none of the {len(listed)} photos in {', '.join(content)} can be read")
    train, held = split_photos(photos, holdout)
    return TrainSettings(
        out, spec.to_dict(), style_uris, train, held, storage_options=storage_options,
        skipped_photos=skipped, **options,
    )  # fmt: skip


def check_rerun(store: storage.Store, settings: TrainSettings) -> None:
    """A second `nst train` into the same --out must be the same training (maybe longer);
    a start that never reached its first checkpoint binds nothing."""
    if not store.exists(layout.TRAIN_SETTINGS) or not _started(store):
        return
    import json

    before = ADDED_LATER | json.loads(store.get(layout.TRAIN_SETTINGS)).get("identity", {})
    now = json.loads(record.to_json(settings.identity()))
    if before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise NstError(
            f"{store.url('')} holds a training with other settings ({', '.join(changed)} "
            "differ); give a new --out, nothing there was changed"
        )


def _started(store: storage.Store) -> bool:
    return latest_checkpoint(store) > 0 or store.exists(layout.MODEL)


def check_steps(store: storage.Store, settings: TrainSettings) -> None:
    """Fewer --steps than the training already made would rewrite its model with false
    metadata (and every collection made with it would be redone): refused."""
    done = max(latest_checkpoint(store), int((_model_meta(store) or {}).get("steps") or 0))
    if done > settings.steps:
        raise NstError(
            f"{store.url('')} holds a training at step {done}; --steps {settings.steps} would "
            f"not train (give --steps {done} or more to continue it, or a new --out); nothing "
            "was changed"
        )


def train(
    settings: TrainSettings, address: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or continue) the training; returns the model's metadata."""
    from pipeline.run.scheduler import init_ray

    store = storage.Store(settings.out, settings.storage_options)
    root_kind.check(store, RootKind.TRAIN)
    check_rerun(store, settings)
    check_steps(store, settings)
    with lease.held(store):
        root_kind.claim(store, RootKind.TRAIN)
        done = _model_meta(store)
        if done is not None and done.get("steps") == settings.steps:
            return done
        store.put_json(
            layout.TRAIN_SETTINGS,
            {"identity": settings.identity(), "steps": settings.steps, "out": settings.out},
        )
        resume = latest_checkpoint(store)
        if resume:
            print(f"resuming from the checkpoint at step {resume}", file=sys.stderr, flush=True)
        init_ray(address)
        gpu = settings.use_gpu if settings.use_gpu is not None else _has_gpu()
        _fit(replace(settings, use_gpu=gpu), resume, progress)
    from pipeline.run.model_file import from_bytes

    return from_bytes(store.get(layout.MODEL), store.url(layout.MODEL)).meta


def _model_meta(store: storage.Store) -> dict[str, Any] | None:
    """The finished model's metadata (None: no model, or not one this version reads)."""
    from pipeline.run.model_file import ModelError, from_bytes

    if not store.exists(layout.MODEL):
        return None
    try:
        return from_bytes(store.get(layout.MODEL), store.url(layout.MODEL)).meta
    except ModelError:
        return None


def _has_gpu() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _fit(settings: TrainSettings, resume: int, progress: bool) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from pipeline.stylenet.train_loop import train_loop

    steps: Queue = Queue(maxsize=1000)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"settings": settings, "progress": steps if progress else None},
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
    failed: list[BaseException] = []

    def fit() -> None:  # off the main thread: Ray Train then leaves SIGINT to us
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001  handed to the main thread
            failed.append(e)

    worker = threading.Thread(target=fit, name="nst-train-fit", daemon=True)
    worker.start()
    with TrainProgress(settings.steps, resume, progress, steps, work=settings.work) as bar:
        try:
            while worker.is_alive():
                bar.follow(1.0)
        except KeyboardInterrupt:
            raise Interrupted() from None
    if failed:  # Ray wraps the worker's error; its first line is the story
        raise NstError(f"training failed: {_first_cause(failed[0])}") from None


class Interrupted(NstError):
    """Ctrl-C: the checkpoints written so far are kept."""

    exit_code = 130

    def __init__(self) -> None:
        super().__init__("interrupted: checkpoints are kept; run the same command to resume")


def _first_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
