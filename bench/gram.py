"""The Gram's one-matmul backward (nst_ops.losses._Gram) against autograd's backward of
bmm(V, V^T), alone and inside a whole iteration (loss + gradient), in one run.

    python -m bench.gram [--size 256] [--repeats 7]

Gram alone: the feature shapes of relu1_1, relu2_1 and relu3_1 at --size. Whole iteration: the
real-weights layers (bench/run.py's "real"), fp32 and amp, with losses.gram swapped for the
plain autograd version. Medians of interleaved repeats; > 1 = ours is faster."""

from __future__ import annotations

import argparse

import torch

from bench import common as B
from nst_ops import losses

OURS = losses.gram


def autograd_gram(F: torch.Tensor) -> torch.Tensor:
    b, n = F.shape[:2]
    V = F.float().reshape(b, n, -1)
    return torch.bmm(V, V.transpose(1, 2))


def with_gram(gram, step):
    def run() -> None:
        losses.gram = gram
        try:
            step()
        finally:
            losses.gram = OURS

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cpu, s = torch.device("cpu"), args.size
    for name, c, hw in (("relu1_1", 64, s), ("relu2_1", 128, s // 2), ("relu3_1", 256, s // 4)):
        F = torch.randn(1, c, hw, hw, requires_grad=True)
        steps = {k: (lambda g=g, F=F: g(F).sum().backward()) for k, g in
                 (("autograd", autograd_gram), ("ours", OURS))}  # fmt: skip
        t = B.interleaved(steps, cpu, args.repeats)
        print(f"Gram + backward at {name} ({c} x {hw}²): autograd {t['autograd'] * 1e3:.1f} ms, "
              f"ours {t['ours'] * 1e3:.1f} ms, {t['autograd'] / t['ours']:.2f}x")  # fmt: skip
    sd, wname = B.weights_for("real")
    content, style = B.pair(s)
    for amp in (False, True):
        step = B.ours_step("real", sd, wname, content, style, cpu, False, amp)
        steps = {"autograd": with_gram(autograd_gram, step), "ours": with_gram(OURS, step)}
        t = B.interleaved(steps, cpu, args.repeats)
        print(f"whole iteration, real layers, {s} px, {'amp' if amp else 'fp32'}: autograd Gram "
              f"{t['autograd'] * 1e3:.0f} ms, ours {t['ours'] * 1e3:.0f} ms, "
              f"{t['autograd'] / t['ours']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
