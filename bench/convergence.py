"""Does any simple change to the optimiser reach the tutorial's quality in fewer evaluations?

    python -m bench.convergence [--size 128] [--job 1 1 1e6] [--budget 320]
    python -m bench.convergence --size 256     # the time-to-quality grid's size (~20 min)

One job of the time-to-quality grid (content index, style index, β; real-weights layers, the
tutorial's objective). The reference is L-BFGS as the tutorial runs it (torch's LBFGS, history
100, lr 1, the image clamped to [0, 1] after every step: what `nst run` does too); each variant
runs the same budget of loss evaluations (a half-resolution evaluation counts 1/4). Prints each
variant's best loss (of the clamped image) along the way and the evaluations it needed to reach
the reference's best at the full budget. Quality per evaluation, not speed: speed is bench/run.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from bench import common as B
from nst_ops.image_ops import hw_of, resize
from nst_ops.optimizers import LINE_SEARCH_EVALUATIONS
from nst_ops.spec import JobSpec
from nst_ops.transfer import compute_targets, make_objective
from nst_ops.vgg import VGGFeatures

Objective = Callable[[torch.Tensor], torch.Tensor]


def objective(
    net: VGGFeatures, size: int, ci: int, si: int, beta: float, weights_at: int | None = None
) -> tuple:
    """The job at ``size`` with the tutorial's weights for that size, or for ``weights_at``
    (a multires level in `nst run` keeps the job's α, set for the full size)."""
    c, s = B.pair(size, ci, si)
    hw = hw_of(B.pair(weights_at, ci, si)[0]) if weights_at else hw_of(c)
    cl, sl = B.CONFIGS["real"]
    spec = JobSpec(weights="w", content_layers=cl, style_layers=sl, size=size,
                   **B.tutorial_equivalent("real", hw, beta))  # fmt: skip
    fn = make_objective(net, [spec], compute_targets(net, spec, c, [s], hw_of(c)))
    return c, s, lambda x: fn(x).total.sum()


def lbfgs_steps(
    f: Objective, x: torch.Tensor, n: int, clamp: bool = True, search: bool = False
) -> list[float]:
    """L-BFGS steps on x (in place, clamped after each as `nst run` does) until n evaluations;
    the loss of the clamped image after each evaluation (a line search spends several)."""
    search_fn, max_eval = ("strong_wolfe", 1 + LINE_SEARCH_EVALUATIONS) if search else (None, 1)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=1, max_eval=max_eval, history_size=100,
                            line_search_fn=search_fn)  # fmt: skip
    count = [0]

    def closure() -> torch.Tensor:
        count[0] += 1
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss.detach()

    out: list[float] = []
    while len(out) < n:
        before = count[0]
        opt.step(closure)
        with torch.no_grad():
            if clamp:
                x.clamp_(0, 1)
            out += [float(f(x.clamp(0, 1)))] * max(1, count[0] - before)
    return out[:n]


def torch_lbfgs(f: Objective, x0: torch.Tensor, n: int, clamp: bool = True) -> list[float]:
    return lbfgs_steps(f, x0.clone().requires_grad_(True), n, clamp)


def projected_lbfgs(f: Objective, x0: torch.Tensor, n: int, m: int = 100) -> list[float]:
    """L-BFGS that knows the box: no step into an active bound, history from the actual step."""
    x, out, S, Y = x0.clone(), [], [], []

    def grad(z):
        z = z.detach().requires_grad_(True)
        f(z).backward()
        return z.grad

    g = grad(x)
    for _ in range(n):
        blocked = ((x <= 0) & (g > 0)) | ((x >= 1) & (g < 0))
        q, alphas = torch.where(blocked, 0, g), []
        for s, y in reversed(list(zip(S, Y, strict=True))):
            alphas.append((s * q).sum() / (y * s).sum())
            q = q - alphas[-1] * y
        scale = (
            (S[-1] * Y[-1]).sum() / (Y[-1] ** 2).sum() if S else min(1.0, 1 / float(g.abs().sum()))
        )
        d = q * scale
        for (s, y), a in zip(zip(S, Y, strict=True), reversed(alphas), strict=True):
            d = d + s * (a - (y * d).sum() / (y * s).sum())
        xn = (x - torch.where(blocked, 0, d)).clamp(0, 1)
        gn = grad(xn)
        if ((xn - x) * (gn - g)).sum() > 1e-10:
            S, Y = (S + [xn - x])[-m:], (Y + [gn - g])[-m:]
        x, g = xn, gn
        with torch.no_grad():
            out.append(float(f(x)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument(
        "--job", nargs=3, default=["1", "1", "1e6"], metavar=("CONTENT", "STYLE", "BETA")
    )
    ap.add_argument("--budget", type=int, default=320)
    args = ap.parse_args()
    ci, si, beta, n = int(args.job[0]), int(args.job[1]), float(args.job[2]), args.budget
    cl, sl = B.CONFIGS["real"]
    net = VGGFeatures("vgg19", cl + sl, state_dict=B.weights_for("real")[0])
    c, s, f = objective(net, args.size, ci, si, beta)
    c2, _, f2 = objective(net, args.size // 2, ci, si, beta)
    _, _, f2_job = objective(net, args.size // 2, ci, si, beta, weights_at=args.size)
    colour = ((c - c.mean((2, 3), True)) / c.std((2, 3), keepdim=True) * s.std((2, 3), keepdim=True)
              + s.mean((2, 3), True)).clamp(0, 1)  # fmt: skip
    half = n // 2  # coarse evaluations at 1/4 cost each: n/2 of them cost n/8

    def coarse_to_fine(coarse: Objective) -> list[float]:
        x = c2.clone().requires_grad_(True)
        lbfgs_steps(coarse, x, half)
        start = resize(x.detach(), hw_of(c))
        return [float("inf")] * (half // 4) + torch_lbfgs(f, start, n - half // 4)

    variants = {
        "reference (tutorial-style L-BFGS, clamp each step)": lambda: torch_lbfgs(f, c, n),
        "no clamp until the end": lambda: torch_lbfgs(f, c, n, clamp=False),
        "projected L-BFGS (box-aware)": lambda: projected_lbfgs(f, c, n),
        "strong-Wolfe line search (line_search=true, evaluations counted)": lambda: lbfgs_steps(
            f, c.clone().requires_grad_(True), n, search=True
        ),
        "init: content with the style's colour statistics": lambda: torch_lbfgs(f, colour, n),
        f"coarse-to-fine: {half} evaluations at half size (the tutorial's α for that size), "
        "then full": lambda: coarse_to_fine(f2),
        "coarse-to-fine as `nst run` multires=2 does it (the job's α at both levels)": (
            lambda: coarse_to_fine(f2_job)
        ),
    }
    target = None
    for name, fn in variants.items():
        curve = fn()
        best = [min(curve[: k + 1]) for k in range(len(curve))]
        target = best[-1] if target is None else target
        hit = next((k + 1 for k, v in enumerate(best) if v <= target), None)
        marks = " ".join(f"{k}:{best[k - 1]:.4g}" for k in (40, 80, 160, 240, n) if k <= len(best))
        print(f"{name}\n    best loss at evaluations {marks}; reaches the reference's best at "
              f"{hit if hit else 'never (within the budget)'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
