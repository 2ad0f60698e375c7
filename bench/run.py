"""Benchmark: ours vs the real peers, measured in one run on one machine.

    python -m bench.run                     # CPU: per-iteration at 128 and 256 px, GEMM peak,
                                            # 16-job time to quality at 256 px (~45 min on 2 cores)
    python -m bench.run --ttq-size 128      # the time-to-quality grid at 128 px (quicker)
    python -m bench.run --only-ttq --ttq-levers '{}' '{"multires": 2}'   # lever sets, one run
    python -m bench.run --device cuda       # CUDA: 512 px, plus TFLOP/s and memory

Peers, fed the same weights, layers and images: the PyTorch tutorial as published
(bench/tutorial.py: trimmed after its last loss, its own L-BFGS loop) and pystiche 1.0.1 where it
installs (`pip install -e ".[bench]"`, bench/peers.py). Every ratio is peer time / our time from
this run (> 1: we are faster). Per-iteration figures are one loss + gradient evaluation, the
median of interleaved repeats after warm-up. Writes bench/results/<device>.{md,json}.

Layer sets: gatys = content conv4_2, style conv1_1..conv5_1 (random weights: the shipped file
stops at conv3_1); real = content relu3_1, style relu1_1, relu2_1, relu3_1 (the shipped ImageNet
VGG19 weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench import peers, tutorial
from bench.common import (
    CONFIGS,
    IMAGES,
    interleaved,
    load,
    ours_step,
    pair,
    sync,
    tutorial_equivalent,
    weights_for,
)
from nst_ops.image_ops import hw_of
from nst_ops.layer_table import deepest
from nst_ops.spec import JobSpec
from nst_ops.transfer import stylize_batch
from nst_ops.vgg import VGGFeatures, layer_names, use_cuda_precision
from pipeline.store.storage import Store


def tutorial_step(config, sd, c, s, device):
    cl, sl = CONFIGS[config]
    cnn = tutorial.features(sd, device=str(device))
    model, sls, cls = tutorial.get_style_model_and_losses(cnn, s, c, cl, sl)
    x = c.clone().requires_grad_(True)

    def step():
        x.grad = None
        tutorial.loss_and_grad(model, sls, cls, x)

    return step


def per_iteration(config: str, size: int, device: torch.device, repeats: int) -> dict:
    """Seconds per loss+gradient evaluation: tutorial, pystiche, ours (fp32 in both layouts,
    and amp in the layout our policy picks for this device)."""
    sd, wname = weights_for(config)
    c, s = (t.to(device) for t in pair(size))
    cl, sl = CONFIGS[config]
    steps = {
        "tutorial": tutorial_step(config, sd, c, s, device),
        "ours fp32 contiguous": ours_step(config, sd, wname, c, s, device, False),
        "ours fp32 channels_last": ours_step(config, sd, wname, c, s, device, True),
    }
    if peers.pystiche_available() and device.type == "cpu":
        steps["pystiche"] = peers.pystiche_step(sd, c, s, cl, sl)[0]
    channels_last = VGGFeatures.prefers_channels_last(device)
    steps["ours amp"] = ours_step(config, sd, wname, c, s, device, channels_last, amp=True)
    t = interleaved(steps, device, repeats)
    ours = t["ours fp32 channels_last" if channels_last else "ours fp32 contiguous"]
    flops = 2 * conv_flops(tuple(c.shape[-2:]), deepest("vgg19", cl + sl))
    return {"size": size, "seconds": t, "ours_fp32_s": ours, "policy_channels_last": channels_last,
            "gflops_per_eval": flops / 1e9}  # fmt: skip


def gemm_peak(device: torch.device) -> dict[str, float]:
    """This machine's fp32 and bf16 matrix-multiply throughput (GFLOP/s), the physical limit
    the convolutions are held against."""
    out = {}
    n = 2048 if device.type == "cpu" else 8192
    kinds = [("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False)]
    if device.type == "cuda":  # what the worker's fp32 convolutions use there (cuDNN TF32)
        kinds.append(("tf32", torch.float32, True))
    for name, dtype, tf32 in kinds:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.rand(n, n, device=device, dtype=dtype)
        b = torch.rand(n, n, device=device, dtype=dtype)
        secs = interleaved({"mm": lambda a=a, b=b: torch.mm(a, b)}, device, 5)["mm"]
        out[name] = 2 * n**3 / secs / 1e9
    if device.type == "cuda":
        use_cuda_precision()  # back to how the worker runs
    return out


def conv_flops(size_hw, last="conv5_1") -> float:
    """Forward FLOPs of VGG19's convolutions up to ``last`` (2*Cin*Cout*9*H*W each)."""
    from torchvision.models.vgg import cfgs

    h, w = size_hw
    flops, cin, names = 0.0, 3, layer_names("vgg19")
    i = 0
    for v in cfgs["E"]:
        if v == "M":
            h, w = h // 2, w // 2
            i += 1
            continue
        flops += 2 * cin * v * 9 * h * w
        cin = v
        if last in (names[i], names[i + 1]):  # the conv or its relu
            break
        i += 2
    return flops


def cuda_tflops(size, batch, device):
    """Achieved TFLOP/s of forward + input-gradient backward, VGG19 to conv5_1, batched."""
    net = VGGFeatures("vgg19", ["conv5_1"], seed=0, amp=False).optimised_for(device)
    x = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
    out = {}
    use_cuda_precision()  # as the worker runs
    for mode in ("tf32", "bf16"):
        net.amp = mode == "bf16"
        for _ in range(3):
            net(x)["conv5_1"].sum().backward()
        sync(device)
        n, t = 10, time.perf_counter()
        for _ in range(n):
            net(x)["conv5_1"].sum().backward()
        sync(device)
        secs = (time.perf_counter() - t) / n
        # the weights are frozen, so backward computes input gradients only: about 1x forward
        out[mode] = 2 * conv_flops((size, size)) * batch / secs / 1e12
    return out


def saved_activation_gib(size: int, batch: int) -> float:
    """Bytes autograd keeps for the backward of one optimisation step (Gatys layers), measured
    with saved-tensor hooks: the device-independent part of a job's peak memory."""
    cl, sl = CONFIGS["gatys"]
    net = VGGFeatures("vgg19", cl + sl, seed=0)
    x = torch.rand(batch, 3, size, size, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = net.features_at(x, cl + sl)
        from nst_ops import losses

        loss = sum(losses.gram(feats[n]).sum() for n in sl) + feats[cl[0]].sum()
    loss.backward()
    return sum(seen.values()) / 2**30


def memory_estimate(size: int, budget_gib: float) -> dict:
    """Activation memory per image at ``size`` (batch 1 and 2 give the slope) and the batch that
    fits ``budget_gib``, leaving 1 GiB for weights, targets, optimizer state and workspace."""
    one, two = saved_activation_gib(size, 1), saved_activation_gib(size, 2)
    per = two - one
    return {
        "size": size,
        "saved_gib_batch1": one,
        "gib_per_image": per,
        "budget_gib": budget_gib,
        "largest_batch_in_budget": int((budget_gib - 1 - (one - per)) // per),
    }


def cuda_memory(size, device, budget_gib):
    """Peak memory of one job at ``size`` and the largest batch that fits ``budget_gib``."""
    cl, sl = CONFIGS["gatys"]
    net = VGGFeatures("vgg19", cl + sl, seed=0).optimised_for(device)
    c = torch.rand(3, size, size)
    per = {}
    for b in (1, 2, 4):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        spec = JobSpec(
            weights="random:0",
            content_layers=cl,
            style_layers=sl,
            size=size,
            iterations=2,
            optimizer="adam",
        )
        stylize_batch([spec] * b, net, [c] * b, [[c]] * b)
        per[b] = (torch.cuda.max_memory_allocated() - base) / 2**30
    slope = (per[4] - per[1]) / 3
    fits = int((budget_gib - (per[1] - slope)) // slope) if slope > 0 else None
    return {
        "peak_gib_by_batch": per,
        "gib_per_extra_image": slope,
        "largest_batch_in_budget": fits,
        "budget_gib": budget_gib,
    }


def time_to_quality(
    size: int,
    steps: int,
    device: torch.device,
    jobs_dir: Path,
    lever_sets: list[dict],
    n_jobs: int = 16,
) -> dict:
    """n jobs (contents x 2 styles x 2 β), real-weights layers: the tutorial's loop (300 L-BFGS
    steps, one job after another) vs `nst run` (L-BFGS, the same objective) with each lever set,
    from command to last image, all against the same tutorial results. Quality: each result's
    scores under one fixed evaluator, relative to the tutorial's result for the same job:
    q = mean(content/content_t, style/style_t); q <= 1 means as close to both as the tutorial
    got."""
    from nst_ops.evaluator import Evaluator

    ev = Evaluator(weights=weights_for("real")[1])
    cfiles = sorted((IMAGES / "content").glob("*"))
    sfiles = sorted((IMAGES / "style").glob("*"))[:2]
    grid = [
        (ci, si, b) for ci in range(len(cfiles)) for si in range(len(sfiles)) for b in (1e5, 1e6)
    ]
    grid = (grid * (n_jobs // len(grid) + 1))[:n_jobs]  # inputs repeat with few images
    t0 = time.perf_counter()
    tut, evaluations = _tutorial_results(grid, size, steps)
    out = {"size": size, "jobs": n_jobs, "tutorial_steps": steps,
           "tutorial_s": time.perf_counter() - t0, "tutorial_evaluations": evaluations,
           "runs": []}  # fmt: skip
    for k, levers in enumerate(lever_sets):
        run_dir = jobs_dir / f"ours{k}"
        run_dir.mkdir()
        rows = _ttq_rows(grid, size, evaluations, cfiles, sfiles, levers)
        pq.write_table(pa.Table.from_pylist(rows), run_dir / "m.parquet")
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(run_dir / "m.parquet"),
               "--out", str(run_dir / "out"), "--no-progress",
               "--evaluator", json.dumps(ev.to_dict()), *run_flags(levers)]  # fmt: skip
        t1, wall = time.perf_counter(), time.time()
        subprocess.run(cmd, check=True, capture_output=True)
        ours_s = time.perf_counter() - t1
        res = pq.read_table(run_dir / "out/results.parquet").to_pylist()
        qs, iters = _qualities(ev, grid, tut, {r["job_name"]: r for r in res}, cfiles, sfiles)
        speedup = out["tutorial_s"] / ours_s
        store = Store(str(run_dir / "out"))
        first = min(store.job_record(r["job_id"])["started_at"] for r in res) - wall
        out["runs"].append({"levers": levers, "ours_s": ours_s, "speedup": speedup,
                            "first_task_s": first,
                            "q_median": statistics.median(qs), "q_max": max(qs),
                            "reached": sum(q <= 1.0 for q in qs),
                            "ours_iterations_median": statistics.median(iters)})  # fmt: skip
    return out


def _tutorial_results(grid: list, size: int, steps: int) -> tuple[dict, int]:
    """The tutorial's result for every job, one after another, and its evaluations per job."""
    sd, _ = weights_for("real")
    cl, sl = CONFIGS["real"]
    cnn = tutorial.features(sd)
    tut, evaluations = {}, []
    for k, (ci, si, beta) in enumerate(grid):
        c, s = pair(size, ci, si)
        x = tutorial.run_style_transfer(cnn, c, s, c.clone(), cl, sl, steps, beta)
        evaluations.append(tutorial.run_style_transfer.evaluations)
        tut[k] = x.detach()[0]
    return tut, max(evaluations)


RUN_FLAGS = ("defaults", "cpus_per_job", "batch_size")  # lever keys that are `nst run` options


def run_flags(levers: dict) -> list[str]:
    """The lever set's `nst run` options (absent: the CLI's default, e.g. a new run's latest
    defaults edition)."""
    given = [k for k in RUN_FLAGS if k in levers]
    return [x for k in given for x in (f"--{k.replace('_', '-')}", str(levers[k]))]


def _ttq_rows(grid, size, evaluations, cfiles, sfiles, levers) -> list[dict]:
    """Our manifest for the grid: the tutorial's objective, its evaluation budget, then the
    lever set (which may replace the budget, e.g. iterations per multires level)."""
    wname = weights_for("real")[1]
    cl, sl = CONFIGS["real"]
    rows = []
    for k, (ci, si, beta) in enumerate(grid):
        c, _ = pair(size, ci, si)
        rows.append({"content_uri": str(cfiles[ci]), "style_uri": str(sfiles[si]),
                     "job_name": f"j{k}", "weights": wname, "content_layers": list(cl),
                     "style_layers": list(sl), "size": size, "optimizer": "lbfgs",
                     "init": "content", "iterations": evaluations, "seed": k,
                     **tutorial_equivalent("real", hw_of(c), beta),
                     **{k: v for k, v in levers.items() if k not in RUN_FLAGS}})  # fmt: skip
    return rows


def _qualities(ev, grid, tut, results, cfiles, sfiles) -> tuple[list[float], list[int]]:
    """q per job, and iterations run; the evaluator's inputs exactly as the worker gives them
    for our result: the files as decoded (it resizes them itself), never pre-resized tensors."""
    from pipeline.run import images
    from pipeline.run.scoring import score_image

    wname = weights_for("real")[1]
    cl, sl = CONFIGS["real"]
    qs, iters = [], []
    for k, (ci, si, _) in enumerate(grid):
        spec = JobSpec(weights=wname, content_layers=cl, style_layers=sl)
        inputs = load(cfiles[ci]), [load(sfiles[si])]
        t = score_image(ev, images.encode_png(tut[k]), spec, *inputs, torch.device("cpu"))
        r = results[f"j{k}"]
        qs.append(
            (r["score_content"] / t["score_content"] + r["score_style"] / t["score_style"]) / 2
        )
        iters.append(r["iterations_run"])
    return qs, iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--configs", default="gatys,real")
    ap.add_argument("--ttq-size", type=int, default=256)
    ap.add_argument("--ttq-steps", type=int, default=300)
    ap.add_argument("--ttq-jobs", type=int, default=16)
    ap.add_argument("--no-ttq", action="store_true", help="skip the 16-job time to quality")
    ap.add_argument("--only-ttq", action="store_true", help="only the 16-job time to quality")
    ap.add_argument(
        "--ttq-levers", nargs="+", default=["{}"],
        help='lever sets (job parameters over the defaults; "defaults": the edition, default '
             'the latest; "cpus_per_job": threads per task; "batch_size": jobs per task; '
             'absent: the `nst run` default), each measured against '
             'the same tutorial run, e.g. '
             '\'{"defaults": 1}\' \'{}\' \'{"amp": true, "multires": 2}\'',
    )  # fmt: skip
    ap.add_argument("--budget-gib", type=float, default=20.0)
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        + ("" if cpu else f", {torch.cuda.get_device_name()}"),
        "device": str(device),
        "pystiche": peers.pystiche_available(),
        "gemm_gflops": gemm_peak(device),
    }
    for size in () if args.only_ttq else (128, 256) if cpu else (512,):
        for config in args.configs.split(","):
            results[f"per_iteration_{config}_{size}"] = per_iteration(
                config, size, device, args.repeats
            )
    if not args.no_ttq and cpu:
        with tempfile.TemporaryDirectory() as tmp:
            results["time_to_quality"] = time_to_quality(
                args.ttq_size,
                args.ttq_steps,
                device,
                Path(tmp),
                [json.loads(x) for x in args.ttq_levers],
                args.ttq_jobs,
            )
    results["activation_memory"] = memory_estimate(512, args.budget_gib)
    if not cpu:
        results["tflops"] = cuda_tflops(512, 4, device)
        results["memory"] = cuda_memory(512, device, args.budget_gib)
    md = render(results)
    print(md)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{device.type}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"{device.type}.md").write_text(md)


def render(r: dict) -> str:
    peak = r["gemm_gflops"]
    fp32_peak = peak.get("tf32", peak["float32"])  # CUDA's fp32 convolutions run as TF32
    lines = [
        f"### {r['device']} · {r['machine']}",
        "",
        f"GEMM peak measured in this run: fp32 {peak['float32']:.0f} GFLOP/s, "
        + (f"TF32 {peak['tf32']:.0f} GFLOP/s (the fp32 column's peak), " if "tf32" in peak else "")
        + f"bf16 {peak['bfloat16']:.0f} GFLOP/s. pystiche: {r['pystiche'] or 'not installed'}.",
        "",
        "| layers, size | tutorial | pystiche | ours fp32 (contiguous / channels_last) | "
        "tutorial ÷ ours | pystiche ÷ ours | ours amp | tutorial ÷ ours amp | "
        "fp32 GEMM-peak fraction | amp bf16-peak fraction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, v in r.items():
        if not key.startswith("per_iteration_"):
            continue
        t, ours, gf = v["seconds"], v["ours_fp32_s"], v["gflops_per_eval"]
        py = t.get("pystiche")
        lines.append(
            f"| {key.split('_')[2]}, {v['size']} px | {t['tutorial'] * 1e3:.0f} ms | "
            + (f"{py * 1e3:.0f} ms" if py else "—")
            + f" | {t['ours fp32 contiguous'] * 1e3:.0f} / {t['ours fp32 channels_last'] * 1e3:.0f}"
            f" ms | **{t['tutorial'] / ours:.2f}×** | "
            + (f"**{py / ours:.2f}×**" if py else "—")
            + f" | {t['ours amp'] * 1e3:.0f} ms | {t['tutorial'] / t['ours amp']:.2f}× | "
            f"{gf / ours / fp32_peak:.0%} | {gf / t['ours amp'] / peak['bfloat16']:.0%} |"
        )
    q = r.get("time_to_quality")
    if q:
        lines += [
            "",
            f"Time to quality, {q['jobs']} jobs at {q['size']} px (real-weights layers): the "
            f"tutorial's loop ({q['tutorial_steps']} L-BFGS steps each = "
            f"{q['tutorial_evaluations']} loss evaluations, one job after another) "
            f"{q['tutorial_s']:.0f} s; `nst run`, same objective, L-BFGS, budget = the "
            "tutorial's evaluations unless the levers say otherwise. Quality under one "
            "evaluator relative to the tutorial's result for the same job (≤ 1: as close to "
            "content and style):",
            "",
            "| levers | nst run | first task at | tutorial ÷ ours | iterations (median) "
            "| q median | q worst | jobs q ≤ 1 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run in q["runs"]:
            lines.append(
                f"| {json.dumps(run['levers']) if run['levers'] else 'none'} "
                f"| {run['ours_s']:.0f} s | {run.get('first_task_s', float('nan')):.1f} s "
                f"| **{run['speedup']:.2f}×** "
                f"| {run['ours_iterations_median']:.0f} | {run['q_median']:.3f} "
                f"| {run['q_max']:.3f} | {run['reached']}/{q['jobs']} |"
            )
    mem = r["activation_memory"]
    lines += [
        "",
        f"Activation memory (autograd's saved tensors, Gatys layers, 512 px): "
        f"{mem['saved_gib_batch1']:.2f} GiB for one image, {mem['gib_per_image']:.2f} GiB per "
        f"extra image; in {mem['budget_gib']:.0f} GiB (1 GiB kept for the rest) a batch of "
        f"{mem['largest_batch_in_budget']} fits.",
    ]
    if "tflops" in r:
        tf, m = r["tflops"], r["memory"]
        lines += [
            "",
            f"CUDA: VGG19 to conv5_1, batch 4, 512 px: {tf['tf32']:.1f} TFLOP/s (TF32, "
            f"{tf['tf32'] * 1e3 / fp32_peak:.0%} of the GEMM peak), {tf['bf16']:.1f} TFLOP/s "
            f"(bf16, {tf['bf16'] * 1e3 / peak['bfloat16']:.0%}). Peak memory by batch: "
            + ", ".join(f"{b}: {g:.2f} GiB" for b, g in m["peak_gib_by_batch"].items())
            + f"; {m['gib_per_extra_image']:.2f} GiB per extra image.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
