"""What batching jobs costs or saves per image: one worker's thread(s) running a batch of b jobs
(one shared forward/backward per step; L-BFGS keeps one history per image) against b = 1.

    python bench/batching.py [--optimizer lbfgs|adam|sgd] [--sizes 128 256] [--batches 1 2 4 8]
                             [--threads 1] [--steps 8]

Real-weights layers (content relu3_1, style relu1_1..relu3_1, the shipped VGG19 weights), fp32
and amp. Prints milliseconds per image per step (median of 3 repeats of --steps steps after a
warm-up step), and each batch's ratio to b = 1 (> 1: the batch is cheaper per image)."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import run as B  # noqa: E402

from nst_ops.spec import JobSpec  # noqa: E402
from nst_ops.transfer import stylize_batch  # noqa: E402
from nst_ops.vgg import VGGFeatures  # noqa: E402

CONTENT, STYLE = B.CONFIGS["real"]


def per_image_ms(net: VGGFeatures, spec: JobSpec, b: int, steps: int) -> float:
    content = B.load(B.IMAGES / "content/tubingen.jpg")
    styles = [B.load(p) for p in sorted((B.IMAGES / "style").glob("*"))]
    specs = [dataclasses.replace(spec, style_weight=1e5 * (1 + k)) for k in range(b)]
    inputs = [content] * b, [[styles[k % len(styles)]] for k in range(b)]
    stylize_batch([dataclasses.replace(s, iterations=1) for s in specs], net, *inputs)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        stylize_batch(specs, net, *inputs)
        times.append((time.perf_counter() - t) / steps / b * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker's)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--optimizer", default="lbfgs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sd, wname = B.weights_for("real")
    print(f"{args.threads} thread(s); ms per image per {args.optimizer} step (ratio to batch 1)")
    for amp in (False, True):
        net = VGGFeatures("vgg19", CONTENT + STYLE, state_dict=sd, amp=amp)
        for size in args.sizes:
            spec = JobSpec(weights=wname, content_layers=CONTENT, style_layers=STYLE,
                           size=size, iterations=args.steps, optimizer=args.optimizer,
                           init="content", amp=amp, log_every=args.steps)  # fmt: skip
            ms = {b: per_image_ms(net, spec, b, args.steps) for b in args.batches}
            one = ms[args.batches[0]]
            cells = "  ".join(f"b={b}: {v:.0f} ({one / v:.2f}x)" for b, v in ms.items())
            print(f"{'amp ' if amp else 'fp32'} {size} px  {cells}", flush=True)


if __name__ == "__main__":
    main()
