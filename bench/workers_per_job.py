"""Benchmark: one tiled image over 1 and 2 workers (`workers_per_job`), on the same cores.

    python -m bench.workers_per_job                     # ~6 min on 2 cores
    python -m bench.workers_per_job --size 256 --tile 128 --iterations 2   # a quick look

`nst run` on the embedded Ray, as a user runs it: the same tiled job (the default layers
conv1_1...conv5_1 + conv4_2, random weights: time does not depend on them) with
workers_per_job=1 and --cpus-per-job = all --cpus, then workers_per_job=2 with half each, in
alternating order, --repeats times. Compared: seconds per iteration (from the job's trace,
iteration 1 to the last: the loop alone), the job's own `seconds` (its result row: inputs,
targets, the helpers' start, the optimisation, the commit) and the final loss; Ray's start is
not counted. Writes bench/results/workers_per_job.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT.parent / "shared" / "data" / "images"


def run(folder: Path, workers: int, a: argparse.Namespace) -> dict:
    row = {"content_uri": str(IMAGES / "content/tubingen.jpg"),
           "style_uri": str(IMAGES / "style/starry_night.jpg"), "weights": "random:0",
           "size": a.size, "tile": a.tile, "iterations": a.iterations,
           "workers_per_job": workers}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    manifest, out = folder / f"m{workers}.parquet", folder / f"o{workers}"
    pq.write_table(pa.Table.from_pylist([row]), manifest)
    cpus = a.cpus // workers
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(manifest), "--out", str(out),
           "--no-progress", "--num-cpus", str(a.cpus), "--cpus-per-job", str(cpus)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    (result,) = pq.read_table(out / "results.parquet").to_pylist()
    trace = pq.read_table(out / result["trace_uri"]).to_pylist()
    first, last = trace[0], trace[-1]  # iteration 1 and the last: the loop alone
    per_iteration = (last["seconds"] - first["seconds"]) / (last["iteration"] - first["iteration"])
    found = {"workers": workers, "cpus_each": cpus, "seconds": result["seconds"]}
    found |= {"s_per_iteration": per_iteration, "status": result["status"]}
    found |= {"loss": result.get("final_total")}
    print(json.dumps(found), flush=True)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.repeats):
            for w in (1, 2) if k % 2 == 0 else (2, 1):
                rows.append(run(Path(tmp) / f"r{k}", w, a))
    res = {"machine": platform.processor() or platform.machine(), "args": vars(a), "rows": rows}
    by = {w: [r["s_per_iteration"] for r in rows if r["workers"] == w] for w in (1, 2)}
    job = {w: [r["seconds"] for r in rows if r["workers"] == w] for w in (1, 2)}
    res["speedup"] = statistics.median(by[1]) / statistics.median(by[2])
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "workers_per_job.json").write_text(json.dumps(res, indent=1))
    lines = [f"{res['machine']}, {a.cpus} CPUs, size {a.size}, tile {a.tile}, "
             f"{a.iterations} iterations", "",
             "| workers | CPUs each | s / iteration (each run) | job seconds (each run) |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {w} | {a.cpus // w} | {', '.join(f'{s:.2f}' for s in by[w])} | "
              f"{', '.join(f'{s:.1f}' for s in job[w])} |" for w in (1, 2)]  # fmt: skip
    lines.append(f"\nspeed-up of 2 workers per iteration (median): {res['speedup']:.2f}x")
    (out / "workers_per_job.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
