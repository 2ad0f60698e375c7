"""Benchmark: L-BFGS's history in bfloat16 against float32 (JobSpec.history_dtype), on real
pairs: the job's own objective after the same iterations, the peak memory, the time.

    python -m bench.lbfgs_history                      # 256 and 512 px, two pairs, ~30 min

Each job runs in a fresh process (its peak is its own: anonymous memory at the kernel's
high-water mark, less the process before the job). The demo's layers (real ImageNet VGG19
weights up to relu3_1, β 1e7), the latest defaults edition (L-BFGS history 100, init from the
photo, restarts). Quality is the job's own objective with the unstyled photo as the zero point:
closure = (photo - L) / (photo - L of the float32 job). Writes bench/results/lbfgs_history.*.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

from bench import common as B
from nst_ops import job_loss, transfer
from nst_ops.presets import LATEST_DEFAULTS
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures
from pipeline.run.devices import amp_enabled

BETA = 1e7
PAIRS = [("tubingen.jpg", "starry_night.jpg"), ("chelsea.jpg", "the_scream.jpg")]


def spec_for(size: int, iterations: int, dtype: str, history: int = 100) -> JobSpec:
    cl, sl = B.CONFIGS["real"]
    row = {"weights": str(B.WEIGHTS), "content_layers": list(cl), "style_layers": list(sl),
           "style_weight": BETA, "size": size, "iterations": iterations, "log_every": 1,
           "history_dtype": dtype, "history_size": history}  # fmt: skip
    return JobSpec.from_dict(row, defaults=LATEST_DEFAULTS)


def status(*keys: str) -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return sum(int(fields[k].split()[0]) * 1024 for k in keys)


def one(job: dict) -> dict:
    """One job in this process: its losses, time and peak above the process."""
    torch.set_num_threads(job["threads"])
    spec = spec_for(job["size"], job["iterations"], job["dtype"], job.get("history", 100))
    content = B.load(B.SHARED / "images/content" / job["content"])
    style = B.load(B.SHARED / "images/style" / job["style"])
    sd, _ = B.weights_for("real")
    net = VGGFeatures("vgg19", spec.active_layers, spec.pooling, state_dict=sd,
                      amp=amp_enabled(spec.amp, torch.device("cpu")))  # fmt: skip
    photo = job_loss.job_losses(net, spec, [content], content, [style])[0]
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts here
    before = status("RssAnon")
    out = transfer.stylize(spec, net, content, [style])
    peak = status("VmHWM") - status("RssFile", "RssShmem") - before
    best = [min(r["total"] for r in out.trace if r["iteration"] <= k) for k in job["marks"]]
    final = job_loss.job_losses(net, spec, [out.image], content, [style])[0]
    return job | {"photo": photo, "final": final, "best_at": best, "seconds": out.seconds,
                  "peak": peak, "status": str(out.status), "restarts": out.restarts}  # fmt: skip


def run(job: dict) -> dict:
    cmd = [sys.executable, "-m", "bench.lbfgs_history", "--one", json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=B.ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| pair | size | photo's loss | float32 | bfloat16 | bf16 closure of fp32's gap "
        "| peak MiB fp32 / bf16 | s fp32 / bf16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in range(0, len(rows), 2):
        f, b = rows[k], rows[k + 1]
        closure = job_loss.gap_closure(f["photo"], b["final"], f["final"])
        lines.append(f"| {f['content']} × {f['style']} | {f['size']} | {f['photo']:.4g} | "
                     f"{f['final']:.4g} | {b['final']:.4g} | {closure:.1%} | "
                     f"{f['peak'] / 2**20:.0f} / {b['peak'] / 2**20:.0f} | "
                     f"{f['seconds']:.0f} / {b['seconds']:.0f} |")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(json.loads(a.one))))
        return
    marks = [a.iterations // 3, 2 * a.iterations // 3, a.iterations]
    rows = []
    for size in a.sizes:
        for content, style in PAIRS:
            for dtype in ("float32", "bfloat16"):
                rows.append(run({"size": size, "content": content, "style": style,
                                 "dtype": dtype, "iterations": a.iterations,
                                 "threads": a.threads, "marks": marks}))  # fmt: skip
                r = rows[-1]
                print(
                    f"{size} {content} {dtype}: {r['final']:.4g} (photo {r['photo']:.4g}), "
                    f"peak {r['peak'] / 2**20:.0f} MiB, {r['seconds']:.0f} s",
                    flush=True,
                )
    head = f"machine {platform.machine()}, {a.threads} threads, {a.iterations} iterations"
    text = "\n".join([head, "", *table(rows)])
    print(text)
    out = B.ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lbfgs_history.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    (out / "lbfgs_history.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
