"""Benchmark: where a style network's gap to the optimiser comes from. The same network and
objective as `python -m bench.stylenet`, trained in-process (no Ray) on three sets of photos,
then measured on the held-out photos as that bench measures (the job's own objective at 256 px,
gap closure against the optimiser's losses that bench/results/stylenet.json holds):

    python -m bench.stylenet_gap --train one-photo     # capacity: one held-out photo itself
    python -m bench.stylenet_gap --train eval-photos   # crops of the three held-out photos
    python -m bench.stylenet_gap --train others --more-photos DIR...   # photos never evaluated
    python -m bench.stylenet_gap ... --coarse-steps 800 --steps 1200   # nst train's coarse crops

`one-photo` trains on the evaluated image itself (astronaut, at the evaluation's size): what the
network can express. `eval-photos` trains on random crops of the three evaluated photos (the
training's crop shapes and scale): what the crops cost. `others` is the real case (the bench's
training photos). The gap between the three says whether more capacity, other crops or more
photos are what a network needs. Prints one JSON line per --every steps (~1-2 s a step, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.stylenet import JOB, ROOT, STYLES, decoded, photos
from nst_ops.image_ops import fit_longer_side
from nst_ops.job_loss import gap_closure
from nst_ops.spec import JobSpec
from nst_ops.stylenet import NetConfig, StyleObjective, TransformerNet
from pipeline.run import objective
from pipeline.stylenet.photos import CropSampler
from pipeline.stylenet.train_loop import _extractor
from pipeline.stylenet.train_settings import DEFAULT_ASPECTS, TrainSettings, coarse_crop_for

EVAL_SIZE = 256


def closures(net: TransformerNet, held: list[Path], ref: dict, style: torch.Tensor) -> list[float]:
    spec = JobSpec.from_dict({**JOB, "style_weight": 1e7, "size": EVAL_SIZE})
    found = []
    with torch.no_grad():
        net.eval()
        for q in held:
            photo = decoded(q)
            y = net(fit_longer_side(photo, EVAL_SIZE))[0]
            loss = objective.objectives(spec, [y], photo, [style], torch.device("cpu"))[0]
            r = ref[q.name]
            found.append(round(gap_closure(r["photo_loss"], loss, r["opt_loss"]), 3))
        net.train()
    return found


def schedule(a: argparse.Namespace) -> TrainSettings:
    """`nst train`'s crop schedule for these arguments (its one rule for coarse steps)."""
    coarse = coarse_crop_for(a.coarse_crop, a.crop, a.coarse_steps)
    return TrainSettings("", {}, [], [], [], steps=a.steps, crop=a.crop, coarse_crop=coarse,
                         coarse_steps=a.coarse_steps)  # fmt: skip


def batches(a: argparse.Namespace, plan: TrainSettings, held: list[Path], others: list[str]):
    """(step, batch, the shape whose style target it takes) for the chosen training set."""
    if a.train == "one-photo":
        x = fit_longer_side(decoded(held[0]), EVAL_SIZE)
        for step in range(1, a.steps + 1):
            yield step, x, None
        return
    chosen = [str(q) for q in held] if a.train == "eval-photos" else others
    sampler = CropSampler(chosen, a.crop, 0, aspects=DEFAULT_ASPECTS)
    for step in range(1, a.steps + 1):
        yield step, *sampler.batch_of(step, a.batch, plan.crop_at(step))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", choices=["one-photo", "eval-photos", "others"], default="others")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--more-photos", type=Path, nargs="*", default=[])
    p.add_argument("--coarse-steps", type=int, default=0, help="as nst train's")
    p.add_argument("--coarse-crop", type=int, default=0, help="as nst train's (0: half --crop)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ref = {r["photo"]: r for r in json.loads((ROOT / "bench/results/stylenet.json").read_text())
           ["per_photo"]}  # fmt: skip
    every = photos(a.more_photos)
    held = sorted((q for q in every if q.name in ref), key=lambda q: q.name)
    others = [str(q) for q in every if q.name not in ref]
    spec = JobSpec.from_dict({**JOB, "style_weight": 1e7, "amp": "auto"})
    style = decoded(STYLES / "the_scream.jpg")
    net = TransformerNet(NetConfig(16, 5, photo_skip=True))
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    objective_of = StyleObjective(_extractor(spec, torch.device("cpu"), None), spec, [style],
                                  a.crop)  # fmt: skip
    t0, plan = time.time(), schedule(a)
    for step, x, style_hw in batches(a, plan, held, others):
        loss = objective_of(net(x), x, style_hw).total.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % a.every == 0 or step == a.steps:
            row = {
                "train": a.train,
                "step": step,
                "full_crop_steps": round(plan.work(0, step), 1),
                "seconds": round(time.time() - t0),
                "photos": [q.name for q in held],
                "closure": closures(net, held, ref, style),
            }
            print(json.dumps(row), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
