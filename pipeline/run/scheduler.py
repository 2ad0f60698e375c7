"""Running jobs as Ray tasks: GPU pinning (CPU fallback), resume, retries, progress, Ctrl-C.

Tasks use ``max_calls=0`` so a worker process lives on and keeps its VGG in memory between jobs
(Ray's default for GPU tasks is a fresh process per task). Only a bounded window of tasks is in
flight, so the driver's memory stays flat on very large grids, and results are collected in
completion order with ``ray.wait``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nst_ops.presets import FIRST_DEFAULTS
from nst_ops.spec import batch_key
from nst_ops.vocab import Status
from pipeline.jobs.job import Job
from pipeline.jobs.plan import Plan, make_plan
from pipeline.run import placement, ray_watchdog
from pipeline.run.memory_check import gpu_task_memory, task_memory
from pipeline.run.options import RunOptions
from pipeline.store import input_policy, record, storage
from pipeline.store.results import normalise, put_jobs, put_results

DEFAULT_MAX_IN_FLIGHT = 2048  # tasks submitted ahead: the autoscaler sees the real demand


@dataclass(frozen=True)
class Resources:
    """What each task asks Ray for. ``gpus_per_job`` may be fractional to pack small jobs;
    None is the default rule: on a cluster (``on_cluster``) 1 GPU per task, whether or not a
    GPU is up yet (an autoscaler starts GPU nodes only for demand it sees); embedded, 1 GPU if
    this machine has one, else CPU."""

    gpus_per_job: float | None = None
    cpus_per_job: float = 1.0
    max_retries: int = 3
    max_in_flight: int | None = None  # default DEFAULT_MAX_IN_FLIGHT, never the cluster's size
    batch_size: int | None = None  # compatible jobs per task, optimised as one batch (see below)
    on_cluster: bool = False
    gpu_wait_s: float = 600.0  # give up when GPUs are asked for and none appears for this long


GPU_BATCH_SIZE = 8  # default jobs per GPU task; CPU tasks default to 1 (see task_batch_size)


def task_batch_size(res: Resources, gpus: float) -> int:
    """Jobs per task: as given, else 8 for GPU tasks and 1 for CPU tasks. On a CPU thread a
    batch is no cheaper per image (bench/batching.py: 0.77-1.17x of one-by-one from 64 to
    256 px), and one-job tasks spread a grid over every core; a GPU needs batches to fill it."""
    if res.batch_size is not None:
        return res.batch_size
    return GPU_BATCH_SIZE if gpus > 0 else 1


class GpuWaitExpired(RuntimeError):
    """GPUs were asked for and none joined the cluster in time."""


@dataclass
class Summary:
    total: int
    skipped: int
    counts: dict[str, int]
    rows: list[dict[str, Any]]
    interrupted: bool = False
    plan: Plan | None = None
    error: str | None = None  # why the run stopped early (e.g. no GPU ever came)


def init_ray(
    address: str | None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    quiet: bool = True,
) -> None:
    """Embedded Ray by default; ``address`` ('auto', 'ray://host:10001') joins a cluster.
    ``quiet`` keeps Ray's own start-up banners (token auth, dashboard) off the terminal."""
    if ray.is_initialized():
        return
    level = logging.ERROR if quiet else logging.INFO
    # Workers get OMP_NUM_THREADS = their num_cpus from Ray; passive OpenMP waits keep workers
    # that end up sharing cores (a user's OMP_NUM_THREADS, other processes) from spinning
    # against each other: bench/threads.py measured 56.7 s spinning vs 22.2 s passive.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # embedded workers inherit it
    if address:  # a cluster's workers do not inherit this process's environment
        policy = {k: os.environ.get(k, "") for k in input_policy.ENV_VARS}
        env = {"env_vars": {"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"], **policy}}
        ray.init(address=address, log_to_driver=False, logging_level=level, runtime_env=env)
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=level,
        )
        session = _session_dir()
        atexit.register(_remove_session, session)
        if session is not None:
            ray_watchdog.start(session)


def _session_dir() -> str | None:
    """The folder embedded Ray writes its logs and sockets into (/tmp/ray/session_*)."""
    try:
        node = ray._private.worker._global_node
        return str(node.get_session_dir_path()) if node is not None else None
    except AttributeError:  # a Ray without this (private) accessor: leave the folder
        return None


def _remove_session(path: str | None) -> None:
    """Embedded Ray's session folder goes with the command that started it (a day of runs
    left 57 of them); NST_KEEP_RAY_SESSION=1 keeps it, e.g. to read its logs."""
    if path is None or os.environ.get("NST_KEEP_RAY_SESSION") == "1":
        return
    if ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(path, ignore_errors=True)


@ray.remote(max_calls=0)  # keep the worker (its VGG and target cache) alive between tasks
def _task(jobs: list[Job], opts: RunOptions, batch_size: int) -> list[dict[str, Any]]:
    """The Ray task body: the GPU Ray assigned (if any) decides the device. torch is imported
    here, in the worker: the driver never needs it (a run with nothing to do stays small)."""
    import torch

    from pipeline.run.task import run_group

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    use_gpu = bool(gpu_ids) and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    placement = {
        "ray_gpu_ids": ",".join(gpu_ids),
        "ray_node_id": ray.get_runtime_context().get_node_id(),
    }
    try:
        return run_group(jobs, opts, device, placement, batch_size)
    finally:
        if use_gpu:  # hand cached blocks back: tasks sharing this GPU (fractions) may need them
            torch.cuda.empty_cache()


def group_jobs(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Tasks of up to ``batch_size`` jobs that can share a batch (same batch key, and inputs
    likely of one size: same content); unbatchable jobs (multires, L-BFGS line search) run one
    per task."""
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        together = j.spec.batchable and batch_size > 1
        key = (batch_key(j.spec), j.content_uri) if together else (j.id,)
        groups.setdefault(key, []).append(j)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def gpus_per_task(res: Resources) -> float:
    """GPUs each task asks for: as given, else the default rule (see Resources)."""
    if res.gpus_per_job is not None:
        return res.gpus_per_job
    if res.on_cluster:
        return 1.0
    return 1.0 if placement.cluster_gpus() > 0 else 0.0  # embedded: this machine, which never grows


def task_options(res: Resources) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "max_retries": res.max_retries,
        "retry_exceptions": False,
        "num_cpus": res.cpus_per_job,
    }
    gpus = gpus_per_task(res)
    if gpus > 0:
        opts["num_gpus"] = gpus
    return opts


class RunProgress:
    """A live bar on a terminal; elsewhere (cron, CI, `| tee`) a plain line every ``every``
    seconds and at the end: done/failed/diverged/running, jobs per minute, ETA."""

    def __init__(self, total: int, enabled: bool, every: float = 10.0, label: str = "nst run"):
        self.total, self.enabled, self.every, self.label = total, enabled, every, label
        self.started = self.last_line = time.time()
        self.counts: Counter[str] = Counter()
        self.running = 0
        self.note = ""
        self.tty = enabled and sys.stderr.isatty()
        self.bar = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[line]}"),
            TimeRemainingColumn(),
            disable=not self.tty,
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task("run", total=total, line="")
        self.bar.start()

    def line(self) -> str:
        done = sum(self.counts.values())
        minutes = max(time.time() - self.started, 1e-6) / 60
        rate = done / minutes
        eta = f"{(self.total - done) / rate:.1f} min" if rate > 0 else "?"
        shown = (Status.OK, Status.FAILED, Status.DIVERGED)
        parts = [f"{k} {self.counts.get(k, 0)}" for k in shown]
        note = f" · {self.note}" if self.note else ""
        return (
            f"{done}/{self.total} · {' · '.join(parts)} · in flight {self.running} · "
            f"{rate:.1f} jobs/min · ETA {eta}{note}"
        )

    def update(self, new_rows: Sequence[dict[str, Any]], running: int, note: str = "") -> None:
        self.counts.update(r["status"] for r in new_rows)
        self.running, self.note = running, note
        self.bar.update(self.task, completed=sum(self.counts.values()), line=self.line())
        if self.enabled and not self.tty and time.time() - self.last_line >= self.every:
            self.last_line = time.time()
            print(f"{self.label}: {self.line()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.stop()
        if self.enabled and not self.tty:
            print(f"{self.label}: {self.line()}", file=sys.stderr, flush=True)


def run_jobs(
    jobs: Sequence[Job],
    opts: RunOptions,
    res: Resources = Resources(),
    force: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    plan: Plan | None = None,
    defaults: int = FIRST_DEFAULTS,
) -> Summary:
    """Run every job the plan says to (new, failed with ``retry_failed``, input changed, output
    missing, all with ``force``); write the jobs table (recording the defaults edition the
    jobs were resolved under) and the results table."""
    store = storage.Store(opts.out, opts.storage_options, opts.storage_attempts)
    plan = plan or make_plan(jobs, store, force, retry_failed, opts.storage_options)
    put_jobs(store, jobs, defaults)
    store.uncommit([j.id for j in plan.todo if j.id in plan.done], plan.files)
    bar = RunProgress(len(plan.todo), progress)
    fresh: dict[str, dict[str, Any]] = {}
    interrupted, error = False, None
    try:
        with _ctrl_c_flag() as stop:
            for row in _submit_and_collect(plan.todo, opts, res, bar, stop):
                fresh[row["job_id"]] = row
                if on_result:
                    on_result(row)
    except GpuWaitExpired as e:
        error = str(e)
    except KeyboardInterrupt:
        # Stop the workers first, then write results from the markers, so no job commits
        # after results.parquet. Not ray.cancel(force=True): cancelling a task that is
        # completing at that instant aborts Ray's core worker (seen with Ray 2.60).
        interrupted = True
        ray.shutdown()
    finally:
        bar.close()
    done = store.committed() if interrupted or error else _kept(plan)
    rows = write_results(store, jobs, fresh, done, opts.evaluator, defaults)
    skipped = len(jobs) - len(plan.todo)
    return Summary(len(jobs), skipped, dict(bar.counts), rows, interrupted, plan, error)


def _kept(plan: Plan) -> dict[str, dict]:
    """Committed rows that this run did not redo (no second listing needed)."""
    return {k: v for k, v in plan.done.items() if k not in plan.reasons}


@contextmanager
def _ctrl_c_flag() -> Iterator[threading.Event]:
    """Ctrl-C sets a flag that the collection loop checks every second, wherever the main
    thread is when it arrives (a KeyboardInterrupt raised inside Ray's own calls was, under
    load, sometimes lost and the run went on). A second Ctrl-C interrupts at once. The previous
    handler comes back on leaving."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _submit_and_collect(
    todo: Sequence[Job],
    opts: RunOptions,
    res: Resources,
    bar: RunProgress,
    stop: threading.Event | None = None,
) -> Iterator[dict[str, Any]]:
    """Keep a bounded window of tasks in flight; yield rows in completion order."""
    if not todo:
        return
    options = task_options(res)
    window = res.max_in_flight or DEFAULT_MAX_IN_FLIGHT
    gpus = float(options.get("num_gpus", 0))
    cap = None if gpus > 0 else placement.largest_node_memory()
    batch_size = task_batch_size(res, gpus)
    queue = list(reversed(group_jobs(todo, batch_size)))
    in_flight: dict[ray.ObjectRef[Any], list[Job]] = {}
    held: dict[ray.ObjectRef[Any], Any] = {}  # workers_per_job tasks' placement groups
    progress_at = time.time()  # last completion, or the start
    while queue or in_flight:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        refused: list[dict[str, Any]] = []
        while queue and len(in_flight) < window:
            group = queue.pop()
            size = gpu_task_memory(group) if gpus else task_memory(group, cap)
            why = None if res.on_cluster else placement.too_large(group, options, size)
            if why:
                refused += [record.failed(j, why, committed=False) for j in group]
                continue
            ref, held[ref] = placement.submit(_task, group, options, size, opts, batch_size)
            in_flight[ref] = group
        ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=1.0)
        new_rows = refused + [row for ref in ready for row in _collect(ref, in_flight.pop(ref))]
        for ref in ready:
            placement.release(held.pop(ref))
        waiting = gpus > 0 and not new_rows and placement.cluster_gpus() == 0
        if not waiting:
            progress_at = time.time()
        elif time.time() - progress_at > res.gpu_wait_s:
            raise GpuWaitExpired(
                f"no GPU joined the cluster within {res.gpu_wait_s:.0f}s ({gpus:g} GPU per task "
                f"asked for, {len(in_flight) + len(queue)} tasks waiting); committed jobs are kept"
            )
        note = f"waiting for GPUs ({gpus:g} per task)" if waiting else ""
        bar.update(new_rows, len(in_flight), note)
        yield from new_rows


def _collect(ref: ray.ObjectRef, jobs: list[Job]) -> list[dict[str, Any]]:
    """A task's rows, or failed rows (uncommitted, so a rerun tries again) when Ray itself gave
    up on the task: its worker died more often than ``max_retries`` allows."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        error = f"{type(e).__name__}: {msg}"
        return [record.failed(j, error, committed=False) for j in jobs]


def write_results(
    store: storage.Store,
    jobs: Sequence[Job],
    fresh: dict[str, dict],
    done: dict[str, dict],
    evaluator: dict[str, Any] | None = None,
    defaults: int | None = None,
) -> list[dict]:
    """results.parquet: this run's rows, the committed rows it kept, the rest pending. Kept
    rows are updated in place, not copied: at 100k jobs a copy of every row is ~250 MB."""
    rows = []
    for j in jobs:
        if j.id in fresh:
            rows.append(fresh[j.id])
        elif j.id in done:  # outcome from the marker; names and tags from today's manifest
            row = done[j.id]
            row.update(j.to_record())
            row["committed"] = True
            rows.append(row)
        else:
            rows.append(record.pending(j))
    put_results(store, normalise(rows), evaluator, defaults)
    return rows
