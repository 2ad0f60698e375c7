"""Benchmark: how much the style preparation (`style_scale`) changes what a job makes, per
photo aspect: each photo optimised toward both targets, each output judged by both.

    python -m bench.style_scale                 # 4 photos x 2 targets at 256 px, ~20 min on 2 cores

`content` (the study's, and the defaults' today) squashes the painting into each photo's box,
so a 3:2 photo and a portrait painting give strokes stretched ~1.9x; `own` keeps the painting's
aspect (its Grams rescaled per layer). Each photo (the shipped content photos: 1:1, 4:3, 3:2)
is optimised as the default job of bench.stylenet (L-BFGS from the photo, --iterations, real
weights up to relu3_1, β 1e7) toward each target; each output is then measured in both jobs'
objectives (nst_ops.job_loss), the unstyled photo as the zero point. Closure of the content
output under the own objective (and the reverse) says how far one target's result is from the
other's: near 100% both ways, the choice is cosmetic; far below, each target is a different
look, and only `own` is the same look for every photo of a collection.
Writes bench/results/style_scale.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from bench.stylenet import JOB, ROOT, SHARED, STYLES, decoded
from nst_ops import job_loss, transfer
from nst_ops.presets import LATEST_DEFAULTS
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures
from pipeline.run.devices import amp_enabled
from pipeline.run.weights import load_state_dict

SCALES = ("content", "own")


def spec_for(scale: str, a: argparse.Namespace) -> JobSpec:
    row = {**JOB, "style_weight": 1e7, "size": a.size, "iterations": a.iterations,
           "style_scale": scale}  # fmt: skip
    return JobSpec.from_dict(row, defaults=LATEST_DEFAULTS)


def one_photo(net: VGGFeatures, a: argparse.Namespace, photo: Path, style) -> dict:
    """Both targets' outputs, each under both objectives, and the photo's loss under each."""
    content = decoded(photo)
    specs = {scale: spec_for(scale, a) for scale in SCALES}
    outputs = {s: transfer.stylize(spec, net, content, [style]).image for s, spec in specs.items()}
    found: dict = {"photo": photo.name, "hw": list(content.shape[-2:])}
    for judge, spec in specs.items():
        *losses, bare = job_loss.job_losses(net, spec, [*outputs.values(), content], content,
                                            [style])  # fmt: skip
        by = dict(zip(SCALES, losses, strict=True))
        found[judge] = {"photo": bare, **{f"{s}_output": v for s, v in by.items()},
                        "other_closure": job_loss.gap_closure(bare, by[_other(judge)],
                                                              by[judge])}  # fmt: skip
    return found


def _other(scale: str) -> str:
    return SCALES[1 - SCALES.index(scale)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--style", type=Path, default=STYLES / "the_scream.jpg")
    p.add_argument("--photos", type=Path, nargs="+",
                   default=sorted((SHARED / "images/content").glob("*.jpg")))  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    spec = spec_for("content", a)
    net = VGGFeatures("vgg19", spec.active_layers, spec.pooling,
                      state_dict=load_state_dict(spec.weights),
                      amp=amp_enabled(spec.amp, torch.device("cpu")))  # fmt: skip
    style = decoded(a.style)
    rows = [one_photo(net, a, q, style) for q in a.photos]
    lines = [f"machine {platform.machine()}, {a.threads} threads; style {a.style.name} "
             f"{tuple(style.shape[-2:])}; {a.size} px, {a.iterations} iterations", "",
             "| photo (h, w) | content output under own (closure) | own output under content "
             "(closure) |", "|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['photo']} {tuple(r['hw'])} | {r['own']['other_closure']:.1%} | "
                     f"{r['content']['other_closure']:.1%} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "style_scale.json").write_text(json.dumps({"args": vars(a), "rows": rows},
                                                     default=str, indent=1))  # fmt: skip
    (out / "style_scale.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
