"""Running jobs as Ray tasks: GPU pinning (CPU fallback), resume, retries, progress, Ctrl-C.

Tasks use ``max_calls=0`` so a worker process lives on and keeps its VGG in memory between jobs
(Ray's default for GPU tasks is a fresh process per task). Only a bounded window of tasks is in
flight, so the driver's memory stays flat on very large grids, and results are collected in
completion order with ``ray.wait``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nst_ops.transfer import batch_key, batchable
from nst_ops.vocab import Status

from . import record, storage
from .jobs import Job
from .plan import Plan, make_plan
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
    plan: Plan | None = None


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
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=level)
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=level,
        )


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
    """Rows with differing keys (tags, per-layer losses) -> one table with the union of columns.

    A column must have one type: where some rows hold a list (a tag shared by several manifest
    rows), single values become one-element lists; anything else that still will not convert
    (e.g. a tag that was a number in an older run and text now) is stored as JSON text, so a
    finished run never fails at its last step."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    columns = {}
    for k in keys:
        values = [r.get(k) for r in rows]
        if any(isinstance(v, list) for v in values):
            values = [v if v is None or isinstance(v, list) else [v] for v in values]
        try:
            columns[k] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[k] = pa.array([None if v is None else json.dumps(v) for v in values])
    return pa.table(columns)


class RunProgress:
    """A live bar on a terminal; elsewhere (cron, CI, `| tee`) a plain line every ``every``
    seconds and at the end: done/failed/diverged/running, jobs per minute, ETA."""

    def __init__(self, total: int, enabled: bool, every: float = 10.0):
        self.total, self.enabled, self.every = total, enabled, every
        self.started = self.last_line = time.time()
        self.counts: Counter[str] = Counter()
        self.running = 0
        self.tty = enabled and sys.stderr.isatty()
        self.bar = Progress(
            TextColumn("[bold]nst run"),
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
        return (
            f"{done}/{self.total} · {' · '.join(parts)} · running {self.running} · "
            f"{rate:.1f} jobs/min · ETA {eta}"
        )

    def update(self, new_rows: Sequence[dict[str, Any]], running: int) -> None:
        self.counts.update(r["status"] for r in new_rows)
        self.running = running
        self.bar.update(self.task, completed=sum(self.counts.values()), line=self.line())
        if self.enabled and not self.tty and time.time() - self.last_line >= self.every:
            self.last_line = time.time()
            print(f"nst run: {self.line()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.stop()
        if self.enabled and not self.tty:
            print(f"nst run: {self.line()}", file=sys.stderr, flush=True)


def run_jobs(
    jobs: Sequence[Job],
    opts: RunOptions,
    res: Resources = Resources(),
    force: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    plan: Plan | None = None,
) -> Summary:
    """Run every job the plan says to (new, failed with ``retry_failed``, input changed, output
    missing, all with ``force``); write the jobs and results tables."""
    store = storage.Store(opts.out, opts.storage_options, opts.storage_attempts)
    plan = plan or make_plan(jobs, store, force, retry_failed, opts.storage_options)
    store.put_table(JOBS, normalise([j.to_record() for j in jobs]))
    store.delete_markers([j.id for j in plan.todo if j.id in plan.done])
    bar = RunProgress(len(plan.todo), progress)
    fresh: dict[str, dict] = {}
    interrupted = False
    try:
        for row in _submit_and_collect(plan.todo, opts, res, bar):
            fresh[row["job_id"]] = row
            if on_result:
                on_result(row)
    except KeyboardInterrupt:
        # Stop the workers first, then write results from the markers, so no job commits
        # after results.parquet. Not ray.cancel(force=True): cancelling a task that is
        # completing at that instant aborts Ray's core worker (seen with Ray 2.60).
        interrupted = True
        ray.shutdown()
    finally:
        bar.close()
    done = store.committed() if interrupted else _kept(plan)
    rows = write_results(store, jobs, fresh, done)
    return Summary(len(jobs), len(jobs) - len(plan.todo), dict(bar.counts), rows, interrupted, plan)


def _kept(plan: Plan) -> dict[str, dict]:
    """Committed rows that this run did not redo (no second listing needed)."""
    return {k: v for k, v in plan.done.items() if k not in plan.reasons}


def _submit_and_collect(
    todo: Sequence[Job], opts: RunOptions, res: Resources, bar: RunProgress
) -> Iterator[dict[str, Any]]:
    """Keep a bounded window of tasks in flight; yield rows in completion order."""
    if not todo:
        return
    remote = _task.options(**task_options(res))
    window = res.max_in_flight or max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue = list(reversed(group_jobs(todo, res.batch_size)))
    in_flight: dict[ray.ObjectRef, list[Job]] = {}
    while queue or in_flight:
        while queue and len(in_flight) < window:
            group = queue.pop()
            in_flight[remote.remote(group, opts, res.batch_size)] = group
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        new_rows = [row for ref in ready for row in _collect(ref, in_flight.pop(ref))]
        bar.update(new_rows, len(in_flight))
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
    store: storage.Store, jobs: Sequence[Job], fresh: dict[str, dict], done: dict[str, dict]
) -> list[dict]:
    """results.parquet: this run's rows, the committed rows it kept, the rest pending."""
    rows = []
    for j in jobs:
        if j.id in fresh:
            rows.append(fresh[j.id])
        elif j.id in done:  # outcome from the marker; names and tags from today's manifest
            rows.append({**done[j.id], **j.to_record(), "committed": True})
        else:
            rows.append(record.pending(j))
    store.put_table(RESULTS, normalise(rows))
    return rows
