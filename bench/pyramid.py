"""Benchmark: coarse-to-fine (`multires`) against one level, per output size: the job's own
objective at full size against the compute spent, in one run on one machine.

    python -m bench.pyramid                                   # 256 and 512 px, ~40 min on 2 cores
    python -m bench.wheel_photos /tmp/big --longer-side 1024  # a photo that is really 1024 px
    python -m bench.pyramid --sizes 1024 --content /tmp/big/face.jpg --iterations 200

One real pair (a content photo, a painting), the demo's layers (real ImageNet VGG19 weights up
to relu3_1, β 1e7) and the latest defaults edition for the rest (L-BFGS, amp=auto, restarts),
from the content (the tutorial's start; --init noise: the default job's). Variants: one level
with --iterations at full size (what a job does today), and multires=2 and 3 with --coarse
iterations at each coarser level, then --iterations at full size, so every curve reaches past
the reference's budget.

Cost is counted in full-size evaluations (a level at half the side costs a quarter per
evaluation), so it does not move with load on the machine; wall seconds are printed beside it
(they do). Quality is the job's own objective at full size with the unstyled photo as the zero
point (nst_ops.job_loss): closure = (photo - L) / (photo - the reference's best after
--iterations). Per variant: its best full-size loss after fixed costs, and the cost at which it
first reaches the reference's best after a third, two thirds and all of its iterations (the
reference's cost over it is the time-to-quality ratio). Writes bench/results/pyramid.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bench import common as B
from nst_ops import job_loss, transfer
from nst_ops.presets import LATEST_DEFAULTS
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures
from pipeline.run.devices import amp_enabled

BETA = 1e7  # the demo's and bench.stylenet's


def spec_for(size: int, levels: int, coarse: int, iterations: int, init: str) -> JobSpec:
    cl, sl = B.CONFIGS["real"]
    row = {"weights": str(B.WEIGHTS), "content_layers": list(cl), "style_layers": list(sl),
           "style_weight": BETA, "size": size, "init": init, "iterations": iterations,
           "log_every": 1, "multires": levels}  # fmt: skip
    if levels > 1:
        row["level_iterations"] = [coarse] * (levels - 1) + [iterations]
    return JobSpec.from_dict(row, defaults=LATEST_DEFAULTS)


def curve(spec: JobSpec, trace: list[dict[str, float]]) -> list[tuple[float, float]]:
    """(cost in full-size evaluations, best full-size loss so far) after each full-size step;
    the coarser levels' steps only add their cost (a quarter per halving of the side)."""
    top, spent, best, out = spec.multires - 1, 0.0, float("inf"), []
    for row in trace:
        level = int(row.get("level", 0))
        spent += 4.0 ** (level - top)
        if level == top:
            best = min(best, row["total"])
            out.append((spent, best))
    return out


def cost_to_reach(points: list[tuple[float, float]], loss: float) -> float | None:
    return next((cost for cost, best in points if best <= loss), None)


def best_at(points: list[tuple[float, float]], cost: float) -> float | None:
    seen = [best for spent, best in points if spent <= cost]
    return seen[-1] if seen else None


def run_size(net: VGGFeatures, a: argparse.Namespace, size: int, content, style) -> dict:
    """Every variant at one size; the reference first (its losses set the targets)."""
    variants = {"one level": spec_for(size, 1, 0, a.iterations, a.init)}
    for levels in a.levels:
        variants[f"multires={levels}"] = spec_for(size, levels, a.coarse, a.iterations, a.init)
    found: dict = {"size": size, "variants": {}}
    for name, spec in variants.items():
        t0 = time.perf_counter()
        out = transfer.stylize(spec, net, content, [style])
        seconds = time.perf_counter() - t0
        points = curve(spec, out.trace)
        measured = job_loss.job_losses(net, spec, [out.image], content, [style])[0]
        found["variants"][name] = {"spec": {"multires": spec.multires,
                                            "level_iterations": spec.level_iterations},
                                   "seconds": seconds, "status": str(out.status),
                                   "restarts": out.restarts, "points": points,
                                   "final_loss": measured}  # fmt: skip
        end = f"cost {points[-1][0]:.0f}, best {points[-1][1]:.4g}" if points else "no full size"
        print(f"{size} px {name}: {seconds:.0f} s, {end}, {out.status}", flush=True)
    spec = variants["one level"]
    found["photo"] = job_loss.job_losses(net, spec, [content], content, [style])[0]
    return found


def summary(res: dict, n: int) -> list[str]:
    ref = res["variants"]["one level"]["points"]
    photo, marks = res["photo"], [n // 3, 2 * n // 3, n]
    targets = {k: ref[k - 1][1] for k in marks}
    lines = [f"### {res['size']} px (photo's loss {photo:.4g}; one level's best after "
             + ", ".join(f"{k}: {v:.4g}" for k, v in targets.items()) + ")", "",
             "| variant | wall s | closure at cost " + " / ".join(map(str, marks))
             + " | cost to reach one level's best after " + " / ".join(map(str, marks))
             + " (ratio) | final loss, fp32 |", "|---|---|---|---|---|"]  # fmt: skip
    for name, v in res["variants"].items():
        pts = v["points"]
        bests = [best_at(pts, k) for k in marks]
        closure = [None if b is None else job_loss.gap_closure(photo, b, targets[n]) for b in bests]
        reach = [cost_to_reach(pts, targets[k]) for k in marks]
        lines.append(
            f"| {name} | {v['seconds']:.0f} | "
            + " / ".join("-" if c is None else f"{c:.1%}" for c in closure) + " | "
            + " / ".join("never" if r is None else f"{r:.0f} ({k / r:.2f}x)"
                         for r, k in zip(reach, marks, strict=True))
            + f" | {v['final_loss']:.4g} |"
        )  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--iterations", type=int, default=300, help="full-size iterations")
    p.add_argument("--coarse", type=int, default=200, help="iterations at each coarser level")
    p.add_argument(
        "--levels",
        type=int,
        nargs="*",
        default=[2, 3],
        help="multires variants (none: one level only)",
    )
    p.add_argument("--content", type=Path, default=B.SHARED / "images/content/tubingen.jpg")
    p.add_argument("--style", type=Path, default=B.SHARED / "images/style/starry_night.jpg")
    p.add_argument("--init", default="content", choices=["content", "noise"],
                   help="noise: the default job's start (seed 0)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="pyramid", help="results file name")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    content, style = B.load(a.content), B.load(a.style)
    spec = spec_for(a.sizes[0], 1, 0, a.iterations, a.init)
    sd, _ = B.weights_for("real")
    net = VGGFeatures("vgg19", spec.active_layers, spec.pooling, state_dict=sd,
                      amp=amp_enabled(spec.amp, torch.device("cpu")))  # fmt: skip
    results = [run_size(net, a, size, content, style) for size in a.sizes]
    head = (f"machine {platform.machine()}, {a.threads} threads, amp {net.amp}; content "
            f"{a.content.name} {tuple(content.shape[-2:])}, style {a.style.name}, init {a.init}; "
            f"{a.iterations} full-size iterations, {a.coarse} per coarser level")  # fmt: skip
    text = "\n".join([head, ""] + [ln for r in results for ln in summary(r, a.iterations) + [""]])
    print(text)
    out = B.ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps({"args": vars(a), "results": results},
                                                   default=str, indent=1))  # fmt: skip
    (out / f"{a.name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
