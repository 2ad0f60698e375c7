"""How GPU jobs should hold their worker: Ray tasks with max_calls=1 (Ray's default for GPU
tasks), tasks with max_calls=0 (ours), or an actor pool (one actor per GPU share).

    python -m bench.workers [--jobs 24] [--repeats 3]

Embedded Ray with 2 CPUs and 2 fake GPUs (every task asks for 1 GPU, so two run at once as on
a 2-GPU node); small jobs, so the figure is the per-job overhead of each strategy: process
start, torch import, building VGG, target cache hits. The same jobs, fresh output each time.
Prints seconds per strategy (median of --repeats, and the spread)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
import torch
from ray.util import ActorPool

from pipeline.jobs.grid import expand
from pipeline.jobs.job import Job
from pipeline.run.options import RunOptions
from pipeline.run.scheduler import _task
from pipeline.run.task import run_group
from pipeline.testing import table, write_images


@ray.remote(num_gpus=1, num_cpus=1)
class JobActor:
    """The actor-pool alternative: the worker and its caches live as long as the actor."""

    def run(self, jobs: list[Job], opts: RunOptions) -> list[dict[str, Any]]:
        placement = {"ray_gpu_ids": ",".join(map(str, ray.get_gpu_ids())), "ray_node_id": ""}
        return run_group(jobs, opts, torch.device("cpu"), placement, 1)


def make_jobs(root: Path, n: int) -> list[Job]:
    contents = write_images(root / "c", n, "c")
    styles = write_images(root / "s", 2, "s")
    rows = [{"content_uri": c, "style_uri": styles[i % 2]} for i, c in enumerate(contents)]
    return expand(pa.Table.from_pylist(table(rows, size=32, iterations=20).to_pylist()))


def run_tasks(jobs: list[Job], out: str, max_calls: int) -> float:
    start = time.perf_counter()
    body = _task._function  # our task's body; max_calls can only be set at decoration
    remote = ray.remote(num_gpus=1, num_cpus=1, max_calls=max_calls)(body)
    rows = ray.get([remote.remote([j], RunOptions(out), 1) for j in jobs])
    assert all(r[0]["status"] == "ok" for r in rows)
    return time.perf_counter() - start


def run_actors(jobs: list[Job], out: str) -> float:
    start = time.perf_counter()
    pool = ActorPool([JobActor.remote() for _ in range(2)])  # type: ignore[attr-defined]
    rows = list(pool.map_unordered(lambda a, j: a.run.remote([j], RunOptions(out)), jobs))
    assert all(r[0]["status"] == "ok" for r in rows)
    elapsed = time.perf_counter() - start
    for actor in pool._idle_actors:  # free the GPUs, as a run that ends would
        ray.kill(actor)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = make_jobs(root, a.jobs)
        strategies = {
            "tasks, max_calls=1 (Ray's GPU default)": lambda out: run_tasks(jobs, out, 1),
            "tasks, max_calls=0 (ours)": lambda out: run_tasks(jobs, out, 0),
            "actor pool, 2 actors": lambda out: run_actors(jobs, out),
        }
        times: dict[str, list[float]] = {k: [] for k in strategies}
        for r in range(a.repeats):  # interleaved, so machine load affects all alike
            for i, (name, fn) in enumerate(strategies.items()):
                times[name].append(fn(str(root / f"out{r}-{i}")))
    print(f"| strategy ({a.jobs} jobs, 2 fake GPUs) | seconds (median) | min-max | s/job |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.1f} | {min(ts):.1f}-{max(ts):.1f} | {med / a.jobs:.2f} |")


if __name__ == "__main__":
    main()
