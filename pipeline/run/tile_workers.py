"""One image over several Ray workers (``workers_per_job``): a tiled job's tiles are dealt to
the job's own task and to helper actors, each with its own VGG on its own GPU (or CPUs).

Per evaluation of the loss (nst_ops.tiles.TiledObjective), every worker runs pass 1 over its
tiles and returns its partial Gram sums; the task adds them, computes C_l = dL/dG_l once, and
every worker runs pass 2 over the same tiles and returns its part of the gradient; the task
adds those and takes the optimizer step. What travels per evaluation (a halo exchange): to
each helper the boxes of its own tiles (core and margin, once, shared by both passes through
Ray's object store) and the C_l; back a Gram per style layer and the gradient of each of its
boxes. The level's content target goes to every helper once, whole.

The scheduler gang-schedules a job's workers with a placement group (one bundle each, bundle 0
for the task), so jobs never hold part of their workers while waiting for the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import ray
import torch
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import Tensor

from nst_ops.tiles import LocalTiles, RunnerFactory, Tile, TileRunner, add_into, boxes_of
from pipeline.jobs.job import Job


def _cpu(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in d.items()}


class TileWorker:
    """A helper of one job: its VGG, the level's content targets, and the two passes."""

    def __init__(self, job: Job, storage_options: dict | None, threads: int):
        from pipeline.run.devices import extractor_for

        use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.spec = job.spec
        self.extractor = extractor_for(job, self.device, storage_options)
        self.local: LocalTiles | None = None

    def ready(self) -> str:
        return str(self.device)

    def set_targets(self, content: dict[str, Tensor], alpha: Tensor) -> None:
        dev = self.device
        moved = {k: v.to(dev) for k, v in content.items()}
        self.local = LocalTiles(self.extractor, self.spec, moved, alpha.to(dev))

    def _crop(self, boxes: list[Tensor], tiles: list[Tile]) -> Any:
        by_tile = {t: b.to(self.device) for t, b in zip(tiles, boxes, strict=True)}
        return by_tile.__getitem__

    def grams(self, boxes: list[Tensor], tiles: list[Tile], amp: bool) -> dict[str, Tensor]:
        """Pass 1 over ``tiles``, given only their ``boxes`` of the image."""
        assert self.local is not None, "set_targets first"
        self.extractor.amp = amp  # as the task's (fp32 again after an L-BFGS restart)
        return _cpu(self.local.grams_of(self._crop(boxes, tiles), tiles))

    def backward(
        self, boxes: list[Tensor], tiles: list[Tile], coef: dict[str, Tensor], amp: bool
    ) -> tuple[list[Tensor], Tensor]:
        """Pass 2: each box's gradient (in ``tiles``' order) and the content loss."""
        assert self.local is not None, "set_targets first"
        self.extractor.amp = amp
        moved = {k: v.to(self.device) for k, v in coef.items()}
        grads: dict[Tile, Tensor] = {}

        def add(t: Tile, g: Tensor) -> None:
            grads[t] = g.cpu()

        content = self.local.backward_of(self._crop(boxes, tiles), tiles, moved, add)
        return [grads[t] for t in tiles], content.cpu()


REMOTE_WORKER: Any = ray.remote(max_restarts=0)(TileWorker)  # a helper dies with its job


class ShardedTiles:
    """A TileRunner over this process (shard 0) and the helpers (shards 1..): each shard's
    tiles are every W-th tile, so the grid's moving edges spread evenly."""

    def __init__(self, local: LocalTiles, helpers: list[Any]):
        self.local, self.helpers = local, helpers
        self._refs: list[Any] | None = None  # this evaluation's boxes per helper, for pass 2
        content = ray.put(_cpu(local.content))  # once for every helper: up to GBs at print size
        ray.get([h.set_targets.remote(content, local.alpha.cpu()) for h in helpers])

    def _shards(self, tiles: list[Tile]) -> list[list[Tile]]:
        n = len(self.helpers) + 1
        return [tiles[k::n] for k in range(n)]

    def _put(self, x: Tensor, shards: list[list[Tile]]) -> list[Any]:
        """Each helper's boxes in the object store (new each evaluation: the optimizer
        updates x in place)."""
        return [ray.put(boxes_of(x, s)) for s in shards]

    def grams(self, x: Tensor, tiles: list[Tile]) -> dict[str, Tensor]:
        mine, *theirs = self._shards(tiles)
        self._refs = refs = self._put(x, theirs)
        amp = bool(self.local.extractor.amp)
        pending = [h.grams.remote(ref, s, amp)
                   for h, ref, s in zip(self.helpers, refs, theirs, strict=True) if s]  # fmt: skip
        total = self.local.grams(x, mine)
        for part in ray.get(pending):
            for k, g in part.items():
                total[k] = total[k] + g.to(x.device) if k in total else g.to(x.device)
        return total

    def backward(
        self, x: Tensor, tiles: list[Tile], coef: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        mine, *theirs = self._shards(tiles)
        refs = self._refs if self._refs is not None else self._put(x, theirs)  # no style: no pass 1
        self._refs = None
        sent, amp = ray.put(_cpu(coef)), bool(self.local.extractor.amp)
        busy = [(h, ref, s) for h, ref, s in zip(self.helpers, refs, theirs, strict=True) if s]
        pending = [h.backward.remote(ref, s, sent, amp) for h, ref, s in busy]
        grad, content = self.local.backward(x, mine, coef)
        add = add_into(grad)
        for (_, _, shard), (grads, c) in zip(busy, ray.get(pending), strict=True):
            for t, g in zip(shard, grads, strict=True):
                add(t, g)
            content += c.to(x.device)
        return grad, content


@contextmanager
def helpers_for(job: Job, storage_options: dict | None) -> Iterator[list[Any]]:
    """The job's W - 1 helper actors, in bundles 1.. of the placement group its task runs in
    (outside one, as plain actors of the task's size); killed when the job ends."""
    pg = get_current_placement_group()
    threads = max(1, int(torch.get_num_threads()))
    helpers = []
    for k in range(1, job.spec.workers_per_job):
        opts: dict[str, Any] = {"num_cpus": threads}
        if pg is not None:
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=k)
            opts = {"scheduling_strategy": strategy, **_bundle(pg, k)}
        helpers.append(REMOTE_WORKER.options(**opts).remote(job, storage_options, threads))
    try:
        ray.get([h.ready.remote() for h in helpers])
        yield helpers
    finally:
        for h in helpers:
            ray.kill(h)


def _bundle(pg: Any, k: int) -> dict[str, Any]:
    """The actor's resources: its bundle's CPUs and GPUs (memory stays the bundle's)."""
    spec = pg.bundle_specs[k]
    return {"num_cpus": spec.get("CPU", 0), "num_gpus": spec.get("GPU", 0)}


def runner_factory(helpers: list[Any]) -> RunnerFactory:
    """What stylize_batch takes: this process's LocalTiles -> the sharded runner."""

    def wrap(local: LocalTiles) -> TileRunner:
        return ShardedTiles(local, helpers)

    return wrap
