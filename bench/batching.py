"""What batching jobs costs or saves per image: one worker's thread(s) running a batch of b jobs
(one shared forward/backward per step; L-BFGS keeps one history per image) against b = 1.

    python -m bench.batching [--optimizer lbfgs|adam|sgd] [--sizes 128 256] [--batches 1 2 4 8]
                             [--threads 1] [--steps 8] [--layers real|gatys]
    python -m bench.batching --device cuda --sizes 512 --batches 1 2 4 8 16   # a GPU's figures

bench/run.py's layer sets: real (content relu3_1, style relu1_1..relu3_1, the shipped VGG19
weights) or gatys (to conv5_1, seeded random weights), fp32 and amp. Prints milliseconds per
image per step (median of 3 repeats of --steps steps after a warm-up step), each batch's ratio
to the first (> 1: the batch is cheaper per image) and, on CUDA, the peak memory of a batch."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from bench import common as B
from nst_ops.spec import JobSpec
from nst_ops.transfer import stylize_batch
from nst_ops.vgg import VGGFeatures, use_cuda_precision


def per_image_ms(net: VGGFeatures, spec: JobSpec, b: int, steps: int) -> tuple[float, float]:
    """Milliseconds per image per step, and the batch's peak memory in GiB (CUDA; else 0)."""
    content = B.load(B.IMAGES / "content/tubingen.jpg")
    styles = [B.load(p) for p in sorted((B.IMAGES / "style").glob("*"))]
    specs = [dataclasses.replace(spec, style_weight=1e5 * (1 + k)) for k in range(b)]
    inputs = [content] * b, [[styles[k % len(styles)]] for k in range(b)]
    stylize_batch([dataclasses.replace(s, iterations=1) for s in specs], net, *inputs)  # warm-up
    cuda, times = net.mean.device.type == "cuda", []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        B.sync(net.mean.device)
        t = time.perf_counter()
        stylize_batch(specs, net, *inputs)
        B.sync(net.mean.device)
        times.append((time.perf_counter() - t) / steps / b * 1000)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a worker's)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--optimizer", default="lbfgs")
    ap.add_argument("--layers", choices=sorted(B.CONFIGS), default="real")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        use_cuda_precision()  # as the worker runs
    sd, wname = B.weights_for(args.layers)
    content, style = B.CONFIGS[args.layers]
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{args.threads} thread(s)"
    print(f"{where}, {args.layers} layers; ms per image per {args.optimizer} step (ratio to "
          f"batch {args.batches[0]}){'; peak GiB' if device.type == 'cuda' else ''}")  # fmt: skip
    for amp in (False, True):
        net = VGGFeatures("vgg19", content + style, state_dict=sd, amp=amp).optimised_for(device)
        for size in args.sizes:
            spec = JobSpec(weights=wname, content_layers=content, style_layers=style,
                           size=size, iterations=args.steps, optimizer=args.optimizer,
                           init="content", amp=amp, log_every=args.steps)  # fmt: skip
            ms = {b: per_image_ms(net, spec, b, args.steps) for b in args.batches}
            one = ms[args.batches[0]][0]
            cells = "  ".join(f"b={b}: {v:.0f} ({one / v:.2f}x" + (f"; {g:.1f} GiB)" if g else ")")
                              for b, (v, g) in ms.items())  # fmt: skip
            print(f"{'amp ' if amp else 'fp32'} {size} px  {cells}", flush=True)


if __name__ == "__main__":
    main()
