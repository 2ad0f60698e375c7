"""Where tasks can go: what the cluster has, and gang scheduling of ``workers_per_job`` jobs:
one Ray placement group per task, a bundle per worker (bundle 0 runs the task, the others its
helper actors: pipeline.run.tile_workers).

A placement group reserves all its bundles at once or none, so two jobs can never each hold
one GPU while waiting for the other's: without it, a cluster full of half-started jobs would
wait forever. On an autoscaling cluster a pending group is demand the autoscaler sees; on the
embedded Ray (this machine, which never grows) a group larger than the machine is refused
before it is submitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.jobs.job import Job


def largest_node_memory() -> float | None:
    """The largest live node's ``memory`` resource (None: Ray reports none)."""
    sizes = [n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")]
    return max(sizes) if sizes and max(sizes) > 0 else None


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def workers_of(group: Sequence[Job]) -> int:
    return group[0].spec.workers_per_job


def bundle(options: dict[str, Any], size: dict[str, Any]) -> dict[str, float]:
    """One worker's share: the task's CPUs and GPUs, and its memory request (if any)."""
    found = {"CPU": float(options.get("num_cpus", 1)), "GPU": float(options.get("num_gpus", 0))}
    found |= {"memory": float(size["memory"])} if "memory" in size else {}
    return {k: v for k, v in found.items() if v > 0}


def bundles(n: int, options: dict[str, Any], size: dict[str, Any]) -> list[dict[str, float]]:
    """The task's bundle, then its n - 1 helpers': on CPUs each holds a tile's activations in
    host memory as the task does; on GPUs only the task holds host memory (an L-BFGS history
    kept there), its helpers none."""
    helper = {} if options.get("num_gpus") else size
    return [bundle(options, size)] + [bundle(options, helper)] * (n - 1)


def too_large(group: Sequence[Job], options: dict[str, Any], size: dict[str, Any]) -> str | None:
    """Why the embedded Ray can never hold this group's workers (None: it can, or the job has
    one worker: a one-worker task waits for GPUs as ever, up to --gpu-wait)."""
    n = workers_of(group)
    if n == 1:
        return None
    need: dict[str, float] = {}
    for b in bundles(n, options, size):
        need = {k: need.get(k, 0) + b.get(k, 0) for k in need.keys() | b.keys()}
    have = ray.cluster_resources()
    short = [k for k, v in need.items() if v > have.get(k, 0)]
    if not short:
        return None
    what = ", ".join(_amount(need[k], k) for k in short)
    has = ", ".join(_amount(have.get(k, 0), k) for k in short)
    return (f"workers_per_job={n} needs {what} at once; this machine's Ray has {has}: lower "
            "workers_per_job (or --cpus-per-job), or run it on a cluster")  # fmt: skip


def _amount(value: float, resource: str) -> str:
    return f"{value / 2**30:.1f} GiB of memory" if resource == "memory" else f"{value:g} {resource}"


def submit(
    task: Any, group: list[Job], options: dict[str, Any], size: dict[str, Any], *args: Any
) -> tuple[ray.ObjectRef, PlacementGroup | None]:
    """The task's ref, and its placement group (None for a one-worker job)."""
    n = workers_of(group)
    if n == 1:
        return task.options(**options, **size).remote(group, *args), None
    pg = placement_group(bundles(n, options, size), strategy="PACK")
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    ref = task.options(**options, **size, scheduling_strategy=strategy).remote(group, *args)
    return ref, pg


def release(pg: PlacementGroup | None) -> None:
    if pg is not None:
        remove_placement_group(pg)
