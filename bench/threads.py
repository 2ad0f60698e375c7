"""Threads per worker on a small machine: Ray's default (each task gets OMP_NUM_THREADS = its
num_cpus, so 2 one-thread workers on 2 cores) against one 2-thread worker, and against
oversubscribed 2-thread workers with spinning and with passive OpenMP waits.

    python -m bench.threads [--jobs 8] [--repeats 2] [--size 256 --amp] [--only "1 worker"]
    python -m bench.threads --compare batch [--size 256] [--amp]   # jobs per task on CPU

Each setting runs the same `nst run` (L-BFGS jobs, shipped weights, 96 px) from scratch in a
subprocess; prints wall seconds (median of --repeats, and the range)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "manifests/weights/vgg19_tv_features_conv1_1-conv3_1.pth"
IMAGES = ROOT / "manifests/images"

SETTINGS = {
    "Ray default: 2 workers x 1 thread (--cpus-per-job 1)": ({}, ["--cpus-per-job", "1"]),
    "1 worker x 2 threads (--cpus-per-job 2)": ({}, ["--cpus-per-job", "2"]),
    "1 worker x 2 threads, spinning waits": (
        {"OMP_WAIT_POLICY": "ACTIVE"}, ["--cpus-per-job", "2"]),
    "2 workers x 2 threads, spinning waits": (
        {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}, ["--cpus-per-job", "1"]),
    "2 workers x 2 threads, passive waits": (
        {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}, ["--cpus-per-job", "1"]),
}  # fmt: skip
BATCH_SETTINGS = {
    "1 job per task (--batch-size 1, the CPU default)": ({}, ["--batch-size", "1"]),
    "up to 8 per task, one batch (--batch-size 8)": ({}, ["--batch-size", "8"]),
}


def manifest(path: Path, jobs: int, size: int = 96, amp: bool = False) -> None:
    contents = sorted((IMAGES / "content").glob("*"))
    styles = sorted((IMAGES / "style").glob("*"))
    rows = [{"content_uri": str(contents[i % len(contents)]), "style_uri": str(styles[i % 2]),
             "weights": str(WEIGHTS), "content_layers": ["relu3_1"], "init": "content",
             "style_layers": ["relu1_1", "relu2_1", "relu3_1"], "size": size, "iterations": 60,
             "optimizer": "lbfgs", "seed": i, "amp": amp} for i in range(jobs)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)


def measure(tmp: Path, settings: dict, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each setting's `nst run`, interleaved so load hits all settings alike."""
    times: dict[str, list[float]] = {k: [] for k in settings}
    for r in range(repeats):
        for i, (name, (env, args)) in enumerate(settings.items()):
            base = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
            cmd = [sys.executable, "-m", "pipeline.cli", "run", str(tmp / "m.parquet"),
                   "--out", str(tmp / f"o{r}-{i}"), "--no-progress", *args]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env={**base, **env})
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare", choices=["threads", "batch"], default="threads")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--only", nargs="+", default=[], help="settings whose names contain these")
    a = ap.parse_args()
    settings = SETTINGS if a.compare == "threads" else BATCH_SETTINGS
    if a.only:
        settings = {k: v for k, v in settings.items() if any(o in k for o in a.only)}
    with tempfile.TemporaryDirectory() as tmp:  # the runs' outputs: GBs at 256 px
        manifest(Path(tmp) / "m.parquet", a.jobs, a.size, a.amp)
        times = measure(Path(tmp), settings, a.repeats)
    what = f"{a.jobs} L-BFGS jobs, {a.size} px{', amp' if a.amp else ''}, {os.cpu_count()} cores"
    print(f"| {what} | seconds (median) | range |")
    print("|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.1f} | {min(ts):.1f}-{max(ts):.1f} |")


if __name__ == "__main__":
    main()
