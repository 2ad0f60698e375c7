"""Benchmark: the collection path (train once, apply per image) against our own optimisation
path, in one run on one machine.

    python -m bench.stylenet                 # CPU defaults: ~25 min on 2 cores
    python -m bench.stylenet --steps 300 --eval-size 128   # a quick look

What it measures, all in this run:
- training: `nst train`'s code on Ray Train (1 worker, --threads CPUs) on the training photos,
  its wall time and images/s, then the same short run with 1 and 2 workers (images/s scaling);
- quality on held-out photos (never trained on; listed in the output): the optimiser's default
  job (L-BFGS, 300 iterations, init=content) vs the network's output vs refinement
  (init=model:, --refine iterations), each scored under one evaluator as α·content + β·style;
- throughput: images/s of applying the network vs of optimising, at --eval-size, and apply alone
  at 512 and 1024 px;
- break-even: the images per style beyond which train + apply beats optimising each image.

Photos: the shipped content photos plus ../shared/data/train (see its README) plus any
--more-photos folders; the held-out
ones are --holdout (default tubingen, chelsea, astronaut). Style and layers: the demo's (real
ImageNet VGG19 weights up to relu3_1). Writes bench/results/stylenet.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from nst_ops.evaluator import Evaluator
from nst_ops.image_ops import fit_longer_side
from nst_ops.spec import JobSpec
from pipeline.jobs.job import Job
from pipeline.run import images, scoring
from pipeline.run.model_file import from_bytes
from pipeline.run.options import RunOptions
from pipeline.run.task import run_job
from pipeline.stylenet.train import train
from pipeline.stylenet.train_settings import TrainSettings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = ROOT / "manifests/weights/vgg19_tv_features_conv1_1-conv3_1.pth"
STYLE = ROOT / "manifests/images/style/starry_night.jpg"
JOB = {
    "weights": str(WEIGHTS),
    "content_layers": ["relu3_1"],
    "style_layers": ["relu1_1", "relu2_1", "relu3_1"],
    "init": "content",
}


def photos(more: list[Path]) -> list[Path]:
    found = [*(SHARED / "images/content").glob("*.jpg"), *(SHARED / "train").glob("*.jpg")]
    found += (ROOT / "manifests/images/content").glob("*.jpg")
    found += [q for folder in more for q in folder.glob("*.jpg")]
    return sorted({p.name: p for p in found}.values(), key=lambda p: p.name)


def evaluator() -> Evaluator:
    return Evaluator(weights=str(WEIGHTS))


def score(ev: Evaluator, png: bytes, spec: JobSpec, photo: torch.Tensor) -> float:
    s = scoring.score_image(
        ev, png, spec, photo, [images.decode(STYLE.read_bytes(), "s")], torch.device("cpu")
    )
    return spec.content_weight * s["score_content"] + spec.style_weight * s["score_style"]


def train_model(
    out: Path, train_photos: list[Path], a: argparse.Namespace, workers: int, steps: int
) -> tuple[float, dict]:
    spec = JobSpec.from_dict({**JOB, "style_weight": a.beta})
    s = TrainSettings(
        str(out),
        spec.to_dict(),
        [str(STYLE)],
        [str(p) for p in train_photos],
        [],
        steps=steps,
        batch_size=a.batch,
        crop=a.crop,
        width=a.width,
        checkpoint_every=max(steps, 1),
        sample_every=10**9,
        workers=workers,
        cpus_per_worker=a.threads / workers,
        use_gpu=False,
    )
    t0 = time.perf_counter()
    train(s)
    seconds = time.perf_counter() - t0
    trace = pq.read_table(out / "trace.parquet").to_pylist()
    return seconds, {"images_per_s": statistics.median(r["images_per_s"] for r in trace[1:])}


def optimise(photo: Path, spec: JobSpec, tmp: Path, ev: Evaluator) -> tuple[float, float]:
    opts = RunOptions(out=str(tmp / f"o{time.time_ns()}"), evaluator=ev.to_dict())
    t0 = time.perf_counter()
    row = run_job(Job(spec, str(photo), (str(STYLE),), 0), opts, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    assert row["status"] == "ok", row.get("error")
    return seconds, spec.content_weight * row["score_content"] + spec.style_weight * row[
        "score_style"
    ]


def apply_time(net: torch.nn.Module, photo: torch.Tensor, size: int, reps: int = 3) -> float:
    """Seconds per image: decode excluded, forward + PNG encode included (as `nst apply`)."""
    x = fit_longer_side(photo, size)
    with torch.no_grad():
        net(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            images.encode(net(x)[0])
    return (time.perf_counter() - t0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--beta", type=float, default=1e7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--refine", type=int, nargs="+", default=[30, 60])
    p.add_argument("--holdout", nargs="+", default=["tubingen.jpg", "chelsea.jpg", "astronaut.jpg"])
    p.add_argument("--scaling-steps", type=int, default=40)
    p.add_argument("--more-photos", type=Path, nargs="*", default=[],
                   help="folders of more training photos (JPEG), e.g. the other photos in the "
                   "scikit-image wheel's skimage/data")  # fmt: skip
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    everything = photos(a.more_photos)
    held = [q for q in everything if q.name in a.holdout]
    trained_on = [q for q in everything if q.name not in a.holdout]
    tmp = Path(tempfile.mkdtemp(prefix="nst-bench-"))
    try:
        res = run(a, held, trained_on, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write(res)


def run(a: argparse.Namespace, held: list[Path], trained_on: list[Path], tmp: Path) -> dict:
    from pipeline.run.scheduler import init_ray

    init_ray(None, num_cpus=a.threads)
    res: dict = {
        "machine": platform.processor() or platform.machine(),
        "threads": a.threads,
        "train_photos": [q.name for q in trained_on],
        "eval_photos": [q.name for q in held],
        "args": vars(a),
    }
    scale = {}
    for w in (1, 2):
        _, info = train_model(tmp / f"scale{w}", trained_on, a, w, a.scaling_steps)
        scale[str(w)] = info["images_per_s"]
    res["train_scaling_images_per_s"] = scale
    res["train_seconds"], info = train_model(tmp / "model", trained_on, a, 1, a.steps)
    res["train_images_per_s"] = info["images_per_s"]
    model = from_bytes((tmp / "model/model.pt").read_bytes(), "model.pt")
    ev = evaluator()
    spec = JobSpec.from_dict({**JOB, "style_weight": a.beta, "size": a.eval_size}, defaults=2)
    per = []
    for q in held:
        photo = images.decode(q.read_bytes(), str(q))
        t_opt, l_opt = optimise(q, spec, tmp, ev)
        png = images.encode(model.net(fit_longer_side(photo, a.eval_size))[0].detach())
        l_net = score(ev, png, spec, photo)
        t_net = apply_time(model.net, photo, a.eval_size)
        row = {
            "photo": q.name,
            "opt_s": t_opt,
            "opt_loss": l_opt,
            "net_s": t_net,
            "net_loss": l_net,
        }
        for k in a.refine:
            refine = JobSpec.from_dict(
                {**spec.to_dict(), "init": f"model:{tmp}/model/model.pt", "iterations": k}
            )
            t_ref, l_ref = optimise(q, refine, tmp, ev)
            row[f"refine{k}_s"], row[f"refine{k}_loss"] = t_ref + t_net, l_ref
        per.append(row)
        print(json.dumps(row), flush=True)
    res["per_photo"] = per
    photo0 = images.decode(held[0].read_bytes(), "p")
    res["apply_s"] = {s: apply_time(model.net, photo0, s) for s in (256, 512, 1024)}
    return res


def summary(res: dict) -> list[str]:
    per = res["per_photo"]
    med = lambda k: statistics.median(r[k] for r in per)  # noqa: E731
    ratio = lambda k: statistics.median(r[k] / r["opt_loss"] for r in per)  # noqa: E731
    opt_s, net_s = med("opt_s"), med("net_s")
    scaling = res["train_scaling_images_per_s"]
    lines = [
        f"machine {res['machine']}, {res['threads']} threads; trained on {len(res['train_photos'])}"
        f" photos, evaluated on {', '.join(res['eval_photos'])} (never trained on)",
        f"training: {res['train_seconds']:.0f} s for {res['args']['steps']} steps "
        f"(crop {res['args']['crop']}, width {res['args']['width']}, batch {res['args']['batch']}),"
        f" {res['train_images_per_s']:.2f} images/s; 1 -> 2 workers: "
        f"{scaling['1']:.2f} -> {scaling['2']:.2f}"
        " images/s",
        f"throughput at {res['args']['eval_size']} px: optimisation {opt_s:.1f} s/image, network "
        f"{net_s * 1000:.0f} ms/image: {opt_s / net_s:.0f}x",
        "apply alone: " + ", ".join(f"{s} px {t * 1000:.0f} ms" for s, t in res["apply_s"].items()),
        f"quality (loss, lower is better; medians over photos): optimiser {med('opt_loss'):.4g}, "
        f"network {med('net_loss'):.4g}; network / optimiser per photo "
        + ", ".join(f"{r['net_loss'] / r['opt_loss']:.2f}x" for r in per)
        + f" (median {ratio('net_loss'):.2f}x)",
    ]
    for k in res["args"]["refine"]:
        lines.append(
            f"refined {k} iterations: loss {ratio(f'refine{k}_loss'):.3f}x the optimiser's "
            f"(median of per-photo ratios; worst "
            f"{max(r[f'refine{k}_loss'] / r['opt_loss'] for r in per):.3f}x) in "
            f"{med(f'refine{k}_s'):.1f} s ({opt_s / med(f'refine{k}_s'):.1f}x less time)"
        )
    saved = opt_s - net_s
    lines.append(
        f"break-even: {res['train_seconds'] / saved:.0f} images per style "
        f"(training {res['train_seconds']:.0f} s / {saved:.1f} s saved per image)"
    )
    return lines


def write(res: dict) -> None:
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "stylenet.json").write_text(json.dumps(res, indent=1, default=str))
    text = "\n".join(summary(res))
    (out / "stylenet.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
