"""A job's memory, checked before it runs: against the device it would run on (a worker that
refuses in our words, never an out-of-memory kill) and as the scheduler's request on CPUs (Ray
then starts only as many jobs on a node as its memory holds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nst_ops import memory
from nst_ops.spec import JobSpec
from pipeline.errors import NstError
from pipeline.jobs.job import Job


class TooLarge(NstError):
    """A job whose estimated peak exceeds the memory it would get."""


def host_memory() -> int:
    """This machine's memory: its cgroup limit where one is set (containers), else its RAM."""
    import psutil

    total = int(psutil.virtual_memory().total)
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def device_memory(device: Any) -> int:
    """What one job can have on ``device`` (a torch.device): a GPU's memory, or the host's."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    return host_memory()


def need(spec: JobSpec, on_gpu: bool = False) -> int:
    """Bytes the job needs where it runs (on a GPU: without what the host holds)."""
    return memory.estimate(spec).need(on_gpu)


def largest(jobs: Sequence[Job], on_gpu: bool = False) -> tuple[Job, int] | None:
    """The job with the largest estimated peak, and that peak (None: no jobs)."""
    return max(((j, need(j.spec, on_gpu)) for j in jobs), key=lambda jn: jn[1], default=None)


def check_fits(spec: JobSpec, budget: int, on_gpu: bool = False, label: str = "") -> None:
    """Raised before a job runs: ``label`` and what would fit."""
    if need(spec, on_gpu) > budget:
        raise TooLarge(f"{label}{memory.advice(spec, budget, on_gpu)}")


def check_on_device(spec: JobSpec, device: Any) -> None:
    """Raised in the worker before optimising: a failed row saying what would fit; a GPU job
    whose host-held state the host cannot hold, too."""
    on_gpu = getattr(device, "type", "cpu") == "cuda"
    check_fits(spec, device_memory(device), on_gpu)
    if not on_gpu:  # the host's memory was the budget: the held state is in it
        return
    held, host = memory.estimate(spec).host_state, host_memory()
    if held > host:
        raise TooLarge(f"history_device=host needs ~{held / 2**30:.1f} GiB of host memory, more "
                       f"than the {host / 2**30:.1f} GiB here: history_device=same, or a "
                       "smaller history_size")  # fmt: skip


def task_memory(group: Sequence[Job], cap: float | None) -> dict[str, Any]:
    """Ray's ``memory`` request of a CPU task: one process, its jobs' working sets side by
    side (a batch shares one forward over all its images); at most ``cap`` (the largest
    node's memory resource), so a large job is refused by the worker, never left waiting on
    a node that cannot exist."""
    est = [memory.estimate(j.spec) for j in group]
    total = est[0].process + sum(e.total - e.process for e in est)
    return {"memory": int(min(total, cap) if cap else total)}


def gpu_task_memory(group: Sequence[Job]) -> dict[str, Any]:
    """Ray's ``memory`` request of a GPU task: the host memory its jobs keep there
    (history_device=host), so that Ray does not start more of them on a node than its host
    memory holds; nothing where they keep none (the GPU share bounds them)."""
    held = sum(memory.estimate(j.spec).host_state for j in group)
    return {"memory": held} if held else {}
