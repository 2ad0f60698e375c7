"""Where one iteration's time goes: torch's profiler over loss + gradient evaluations.

    python -m bench.op_profile [--size 256] [--config real|gatys] [--amp] [--steps 5]

Prints the operators by self CPU time (bench/run.py's layer sets and shipped weights), so the
shares quoted in the README (convolutions, Gram matmuls, max pooling) can be checked."""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from bench import common as B


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--config", default="real", choices=sorted(B.CONFIGS))
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    sd, wname = B.weights_for(args.config)
    content, style = B.pair(args.size)
    cpu = torch.device("cpu")
    step = B.ours_step(args.config, sd, wname, content, style, cpu, False, args.amp)
    for _ in range(3):  # warm-up: kernels chosen, memory allocated
        step()
    with profile() as prof:
        for _ in range(args.steps):
            step()
    print(f"{args.config} layers, {args.size} px, {'amp' if args.amp else 'fp32'}, "
          f"{args.steps} iterations:")  # fmt: skip
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
