"""Running jobs as Ray tasks: GPU pinning (CPU fallback), resume, retries, progress, Ctrl-C.

Tasks use ``max_calls=0`` so a worker process lives on and keeps its VGG in memory between jobs
(Ray's default for GPU tasks is a fresh process per task). Only a bounded window of tasks is in
flight, so the driver's memory stays flat on very large grids, and results are collected in
completion order with ``ray.wait``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nst_ops.transfer import batch_key, batchable

from . import storage
from .jobs import Job
from .results import JOBS, RESULTS
from .worker import RunOptions, run_group


@dataclass(frozen=True)
class Resources:
    """What each task asks Ray for. ``gpus_per_job`` may be fractional to pack small jobs."""

    gpus_per_job: float = 1.0
    cpus_per_job: float = 1.0
    max_retries: int = 3
    max_in_flight: int | None = None
    batch_size: int = 8  # compatible Adam/SGD jobs per task, optimised as one batch


@dataclass
class Summary:
    total: int
    skipped: int
    counts: dict[str, int]
    rows: list[dict[str, Any]]
    interrupted: bool = False


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Embedded Ray by default; ``address`` ('auto', 'ray://host:10001') joins a cluster."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)


@ray.remote(max_calls=0)  # keep the worker (its VGG and target cache) alive between tasks
def _task(jobs: list[Job], opts: RunOptions, batch_size: int) -> list[dict[str, Any]]:
    """The Ray task body: the GPU Ray assigned (if any) decides the device."""
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    use_gpu = bool(gpu_ids) and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    placement = {"ray_gpu_ids": ",".join(gpu_ids)}
    return run_group(jobs, opts, device, placement, batch_size)


def group_jobs(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Tasks of up to ``batch_size`` jobs that can share a batch (same batch key, and inputs
    likely of one size: same content); unbatchable jobs (L-BFGS, multires) run one per task."""
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        together = batchable(j.spec) and batch_size > 1
        key = (batch_key(j.spec), j.content_uri) if together else (j.id,)
        groups.setdefault(key, []).append(j)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def task_options(res: Resources) -> dict[str, Any]:
    """Pin to a GPU when the cluster has one, else a CPU task."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    opts: dict[str, Any] = {
        "max_retries": res.max_retries,
        "retry_exceptions": False,
        "num_cpus": res.cpus_per_job,
    }
    if has_gpu and res.gpus_per_job > 0:
        opts["num_gpus"] = res.gpus_per_job
    return opts


def normalise(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows with differing keys (tags, per-layer losses) -> one table with the union of columns."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def pending_jobs(
    jobs: Sequence[Job], done: dict[str, dict], force: bool, retry_failed: bool
) -> list[Job]:
    if force:
        return list(jobs)
    redo = {"failed", "diverged"} if retry_failed else set()
    return [j for j in jobs if j.id not in done or done[j.id].get("status") in redo]


def run_jobs(
    jobs: Sequence[Job],
    opts: RunOptions,
    res: Resources = Resources(),
    force: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Run every job not already committed under ``opts.out``; write jobs and results tables."""
    store = storage.Store(opts.out, opts.storage_options, opts.storage_attempts)
    store.put_table(JOBS, normalise([j.to_record() for j in jobs]))
    done = store.committed()
    todo = pending_jobs(jobs, done, force, retry_failed)
    for j in todo:
        if j.id in done:
            store.delete_marker(j.id)
    remote = _task.options(**task_options(res))
    window = res.max_in_flight or max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
    fresh: dict[str, dict] = {}
    queue = list(reversed(group_jobs(todo, res.batch_size)))
    in_flight: dict[ray.ObjectRef, list[Job]] = {}
    counts = {"ok": 0, "failed": 0, "diverged": 0}
    started = time.time()
    interrupted = False
    bar = Progress(
        TextColumn("[bold]nst run"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "ok {task.fields[ok]} · failed {task.fields[failed]} · "
            "diverged {task.fields[diverged]} · running {task.fields[running]} · "
            "{task.fields[rate]:.1f} jobs/min"
        ),
        TimeRemainingColumn(),
        disable=not progress,
        transient=False,
    )
    with bar:
        t = bar.add_task("run", total=len(todo), ok=0, failed=0, diverged=0, running=0, rate=0.0)
        try:
            while queue or in_flight:
                while queue and len(in_flight) < window:
                    group = queue.pop()
                    in_flight[remote.remote(group, opts, res.batch_size)] = group
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in ready:
                    for row in _collect(ref, in_flight.pop(ref)):
                        fresh[row["job_id"]] = row
                        counts[row["status"]] = counts.get(row["status"], 0) + 1
                        if on_result:
                            on_result(row)
                        bar.advance(t)
                minutes = max(time.time() - started, 1e-6) / 60
                bar.update(
                    t,
                    running=len(in_flight),
                    rate=sum(counts.values()) / minutes,
                    **{k: counts.get(k, 0) for k in ("ok", "failed", "diverged")},
                )
        except KeyboardInterrupt:
            # Stop the workers first, then write results from the markers, so no job commits
            # after results.parquet. Not ray.cancel(force=True): cancelling a task that is
            # completing at that instant aborts Ray's core worker (seen with Ray 2.60).
            interrupted = True
            ray.shutdown()
    rows = write_results(store, jobs, fresh)
    return Summary(len(jobs), len(jobs) - len(todo), counts, rows, interrupted)


def _collect(ref: ray.ObjectRef, jobs: list[Job]) -> list[dict[str, Any]]:
    """A task's rows, or failed rows (uncommitted, so a rerun tries again) when Ray itself gave
    up on the task: its worker died more often than ``max_retries`` allows."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        error = f"{type(e).__name__}: {msg}"
        return [
            {**j.to_record(), "status": "failed", "committed": False, "error": error} for j in jobs
        ]


def write_results(store: storage.Store, jobs: Sequence[Job], fresh: dict[str, dict]) -> list[dict]:
    """results.parquet from the committed markers, plus this run's uncommitted failures."""
    committed = store.committed()
    rows = []
    for j in jobs:
        if j.id in committed:
            rows.append({**committed[j.id], "committed": True})
        elif j.id in fresh:
            rows.append(fresh[j.id])
        else:
            rows.append({**j.to_record(), "status": "pending", "committed": False})
    store.put_table(RESULTS, normalise(rows))
    return rows
