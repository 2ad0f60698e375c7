"""Benchmark: prints. Peak memory and seconds per iteration of one optimisation by output size,
whole-image and tiled, beside nst_ops.memory's estimate, in one run on one machine.

    python -m bench.prints                                  # ~25 min on 2 cores
    python -m bench.prints --untiled 256 512 --tiled 1024   # a quick look
    python -m bench.prints --untiled --tiled 4096 --tile 1024 --iterations 2 --name prints_4096

Each configuration runs in a fresh process (so peaks do not mix): the default job's layers
(VGG19 conv1_1...conv5_1 and conv4_2, random weights: memory and time do not depend on them),
L-BFGS with --history-size, --iterations iterations from the content. Peak = the process's
peak resident memory above its resident memory before the job (malloc_trim'd), so torch and the
weights are not counted; the estimate is nst_ops.memory's for the same part. Seconds per
iteration include the targets' computation spread over the iterations (few iterations: an
upper bound); seconds per step are the steps alone (from the trace's first to its last
iteration: no targets). Writes bench/results/prints.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from nst_ops import memory
from nst_ops.spec import JobSpec

ROOT = Path(__file__).resolve().parent.parent
ONE = """
import ctypes, json, resource, sys, time, torch
from nst_ops import transfer
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures
torch.set_num_threads(int(sys.argv[2]))
dev = torch.device(sys.argv[3])
spec = JobSpec.from_dict(json.loads(sys.argv[1]))
ext = VGGFeatures(spec.backbone, spec.active_layers, spec.pooling, seed=0).to(dev)
g = torch.Generator().manual_seed(0)
noise = torch.rand(1, 3, spec.size, spec.size, generator=g)
content = torch.nn.functional.avg_pool2d(noise, 9, 1, 4)[0].to(dev)
style = torch.rand(3, 512, 512, generator=g).to(dev)
ctypes.CDLL("libc.so.6").malloc_trim(0)
before = int(open("/proc/self/statm").read().split()[1]) * 4096
t0 = time.perf_counter()
out = transfer.stylize(spec, ext, content, [style])
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
if dev.type == "cuda":  # the device's peak, above the weights
    peak = torch.cuda.max_memory_allocated() - sum(p.numel() * 4 for p in ext.parameters())
first, last = out.trace[0], out.trace[-1]  # log_every=1: the steps alone, no targets
step = (last["seconds"] - first["seconds"]) / max(1, last["iteration"] - first["iteration"])
print(json.dumps({"peak": peak, "seconds": seconds, "loss": float(last["total"]), "step": step}))
"""


def measure(params: dict, threads: int, device: str) -> dict:
    run = subprocess.run([sys.executable, "-c", ONE, json.dumps(params), str(threads), device],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["killed"])[-1][:300]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def row(size: int, tile: int, a: argparse.Namespace) -> dict:
    params = {"weights": "random:0", "size": size, "tile": tile, "init": "content",
              "iterations": a.iterations, "history_size": a.history_size,
              "history_device": a.history_device,
              "log_every": 1}  # fmt: skip
    est = memory.estimate(JobSpec.from_dict(params))
    found = measure(params, a.threads, a.device) | {"size": size, "tile": tile}
    found["estimate"] = est.total - est.process - est.weights
    if "seconds" in found:
        found["s_per_iteration"] = found["seconds"] / a.iterations
        found["s_per_megapixel_iteration"] = found["s_per_iteration"] / (size * size / 1e6)
        found["s_per_megapixel_step"] = found["step"] / (size * size / 1e6)
    print(json.dumps(found), flush=True)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--untiled", type=int, nargs="*", default=[512, 1024, 1536])
    p.add_argument("--tiled", type=int, nargs="*", default=[1024, 1536, 2048])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--history-size", type=int, default=100)
    p.add_argument("--history-device", default="same", help="host: L-BFGS's pairs in host memory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cuda: the GPU's peak allocated memory")
    p.add_argument("--name", default="prints", help="results file name under bench/results")
    a = p.parse_args()
    rows = [row(s, 0, a) for s in a.untiled] + [row(s, a.tile, a) for s in a.tiled]
    res = {"machine": platform.processor() or platform.machine(), "args": vars(a), "rows": rows}
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    name = a.name if a.device == "cpu" else f"{a.name}_{a.device}"
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    (out / f"{name}.md").write_text("\n".join(table(res)) + "\n")
    print("\n".join(table(res)))


def table(res: dict) -> list[str]:
    a = res["args"]
    lines = [
        f"machine {res['machine']}, {a['device']}, {a['threads']} threads; L-BFGS history_size "
        f"{a['history_size']}, {a['iterations']} iterations; VGG19 conv1_1..conv5_1 + conv4_2",
        "",
        "| size | tile | peak above the process | estimate | estimate / peak | s / iteration "
        "| s / step | s / (MP x step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['tile'] or '-'} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['size']} | {r['tile'] or '-'} | {r['peak'] / 2**30:.2f} GiB | "
            f"{r['estimate'] / 2**30:.2f} GiB | {r['estimate'] / r['peak']:.2f} | "
            f"{r['s_per_iteration']:.1f} | {r['step']:.1f} | {r['s_per_megapixel_step']:.1f} |"
        )
    return lines


if __name__ == "__main__":
    main()
