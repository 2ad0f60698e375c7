"""Benchmark: ours vs the straightforward baseline (bench/baseline.py), measured in one run.

    python bench/run.py                 # CPU: 128 px
    python bench/run.py --device cuda   # CUDA: 512 px, plus TFLOP/s and memory

Prints a Markdown table and writes bench/results/<device>.{md,json}. Every figure is a ratio
against the baseline measured in the same run, on the same machine, with the same layers, size,
iterations and optimizer. Two layer configurations are measured:
  gatys: content conv4_2, style conv1_1..conv5_1 (the study's), random weights;
  real:  content relu3_1, style relu1_1, relu2_1, relu3_1, the shipped ImageNet VGG19 weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).parent))
from baseline import load_vgg19, run_baseline  # noqa: E402

from nst_ops.spec import JobSpec  # noqa: E402
from nst_ops.transfer import stylize, stylize_batch  # noqa: E402
from nst_ops.vgg import VGGFeatures, layer_names  # noqa: E402
from pipeline.images import decode  # noqa: E402
from pipeline.weights import load_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "manifests/weights/vgg19_tv_features_conv1_1-conv3_1.pth"
IMAGES = ROOT / "manifests/images"
CONFIGS = {
    "gatys": (("conv4_2",), ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")),
    "real": (("relu3_1",), ("relu1_1", "relu2_1", "relu3_1")),
}


def load(path: Path) -> torch.Tensor:
    return decode(path.read_bytes(), str(path))


def inputs(size: int):
    from nst_ops.transfer import fit_longer_side, resize

    contents = [fit_longer_side(load(p), size)[0] for p in sorted((IMAGES / "content").glob("*"))]
    styles = [fit_longer_side(load(p), size)[0] for p in sorted((IMAGES / "style").glob("*"))]
    hw = contents[0].shape[-2:]
    return [resize(c, tuple(hw))[0] for c in contents], [resize(s, tuple(hw))[0] for s in styles]


def weights_for(config: str):
    if config == "real" and WEIGHTS.exists():
        return load_state_dict(str(WEIGHTS)), str(WEIGHTS)
    return None, "random:0"


def ours_net(config, sd, device, amp=False):
    cl, sl = CONFIGS[config]
    net = VGGFeatures("vgg19", cl + sl, state_dict=sd, seed=0, amp=amp)
    return net.optimised_for(device)


def bench_spec(config: str, wname: str, size: int, iters: int, **kw) -> JobSpec:
    cl, sl = CONFIGS[config]
    return JobSpec(
        weights=wname, content_layers=cl, style_layers=sl, size=size, iterations=iters, **kw
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def baseline_features(sd, device):
    return load_vgg19(
        {f"features.{k.removeprefix('features.')}": v for k, v in sd.items()} if sd else None,
        device,
    )


def amp_loss_difference(config, sd, wname, size, c, s, device) -> float:
    """|L_amp(x) - L_fp32(x)| / L_fp32(x) on one image x (content blended with noise)."""
    from nst_ops.transfer import compute_targets, make_objective

    cl, sl = CONFIGS[config]
    spec = JobSpec(weights=wname, content_layers=cl, style_layers=sl, size=size)
    c4, s4 = c[None].to(device), s[None].to(device)
    x = 0.5 * (c4 + torch.rand(c4.shape, generator=torch.Generator().manual_seed(0)).to(device))
    targets = compute_targets(ours_net(config, sd, device), spec, c4, [s4], tuple(c4.shape[-2:]))
    values = []
    for amp in (False, True):
        with torch.no_grad():
            objective = make_objective(ours_net(config, sd, device, amp), [spec], targets)
            values.append(float(objective(x).total[0]))
    return abs(values[1] - values[0]) / values[0]


def per_iteration(config, size, iters, device, batch):
    """(a) seconds per iteration: baseline vs ours (fp32 and amp), alone and batched."""
    cl, sl = CONFIGS[config]
    sd, wname = weights_for(config)
    contents, styles = inputs(size)
    c, s = contents[0], styles[0]
    feats = baseline_features(sd, device)
    run_baseline(feats, c, s, cl, sl, 2, device=device)  # warm-up
    sync(device)
    t = time.perf_counter()
    run_baseline(feats, c, s, cl, sl, iters, device=device)
    sync(device)
    base = (time.perf_counter() - t) / iters
    spec = bench_spec(config, wname, size, iters, optimizer="adam", log_every=10**6)
    warm = JobSpec.from_dict({**spec.to_dict(), "iterations": 2})
    out = {
        "baseline_s": base,
        "batch": batch,
        "amp_rel_loss_diff": amp_loss_difference(config, sd, wname, size, c, s, device),
    }
    for amp in (False, True):
        tag = "_amp" if amp else ""
        net = ours_net(config, sd, device, amp)
        stylize(warm, net, c, [s])
        sync(device)
        t = time.perf_counter()
        stylize(spec, net, c, [s])
        sync(device)
        out[f"ours{tag}_s"] = (time.perf_counter() - t) / iters
        t = time.perf_counter()
        stylize_batch([spec] * batch, net, [c] * batch, [[s]] * batch)
        sync(device)
        out[f"ours{tag}_batched_s"] = (time.perf_counter() - t) / iters / batch
        out[f"speedup{tag}"] = base / out[f"ours{tag}_s"]
        out[f"speedup{tag}_batched"] = base / out[f"ours{tag}_batched_s"]
    return out


def grid_throughput(config, size, iters, device, num_cpus):
    """(b) 16 jobs sharing 2 style images: baseline job by job vs ours through the pipeline."""
    import ray

    from pipeline.execute import Resources, init_ray, run_jobs
    from pipeline.grid import expand
    from pipeline.jobs import RunOptions

    cl, sl = CONFIGS[config]
    sd, wname = weights_for(config)
    contents, styles = inputs(size)
    cfiles = sorted((IMAGES / "content").glob("*"))[:2]
    sfiles = sorted((IMAGES / "style").glob("*"))[:2]
    weights = [1e5, 1e6, 1e7, 1e8]  # 2 contents x 2 styles x 4 style weights = 16 jobs
    feats = baseline_features(sd, device)
    t = time.perf_counter()
    for ci in range(2):
        for si in range(2):
            for beta in weights:
                run_baseline(
                    feats, contents[ci], styles[si], cl, sl, iters, beta=beta, device=device
                )
    sync(device)
    base_s = time.perf_counter() - t

    init_ray(None, num_cpus=num_cpus, num_gpus=1 if device.type == "cuda" else 0)
    out = {"jobs": 16, "baseline_s": base_s, "baseline_jobs_per_min": 16 / base_s * 60}
    for amp in (False, True):
        tag = "_amp" if amp else ""
        rows = [
            {
                "content_uri": str(c),
                "style_uri": str(s),
                "optimizer": "adam",
                "style_weight": weights,
                "weights": wname,
                "content_layers": list(cl),
                "style_layers": list(sl),
                "size": size,
                "iterations": iters,
                "log_every": iters,
                "amp": amp,
            }
            for c in cfiles
            for s in sfiles
        ]
        jobs = expand(pa.Table.from_pylist(rows))
        with tempfile.TemporaryDirectory() as tmp:
            # Start every worker (one tiny task per CPU, each building its network) before
            # timing: a long grid pays that once, and the baseline's network is built untimed.
            warm = [
                {**rows[0], "iterations": 1, "seed": i, "style_weight": 1.0}
                for i in range(num_cpus)
            ]
            run_jobs(
                expand(pa.Table.from_pylist(warm)),
                RunOptions(out=tmp + "/warm"),
                Resources(batch_size=1),
                progress=False,
            )
            t = time.perf_counter()
            summary = run_jobs(
                jobs, RunOptions(out=tmp + "/grid"), Resources(batch_size=8), progress=False
            )
            secs = time.perf_counter() - t
        assert all(r["status"] == "ok" for r in summary.rows), summary.rows
        out[f"ours{tag}_s"] = secs
        out[f"ours{tag}_jobs_per_min"] = 16 / secs * 60
        out[f"speedup{tag}"] = base_s / secs
    ray.shutdown()
    return out


def time_to_quality(size, iters, device):
    """(c) wall time for ours (L-BFGS) to reach the baseline's final loss after ``iters``."""
    config = "real" if WEIGHTS.exists() else "gatys"
    cl, sl = CONFIGS[config]
    sd, wname = weights_for(config)
    contents, styles = inputs(size)
    feats = baseline_features(sd, device)
    t = time.perf_counter()
    _, base_final, _ = run_baseline(
        feats, contents[0], styles[0], cl, sl, iters, optimizer="lbfgs", device=device
    )
    sync(device)
    base_s = time.perf_counter() - t
    result = {
        "weights": "real (shipped conv1_1..conv3_1)" if sd else "random",
        "config": config,
        "baseline_final_total": base_final,
        "baseline_s": base_s,
    }
    for amp in (False, True):
        tag = "_amp" if amp else ""
        spec = bench_spec(config, wname, size, iters, optimizer="lbfgs", log_every=1, amp=amp)
        out = stylize(spec, ours_net(config, sd, device, amp), contents[0], [styles[0]])
        points = [*out.trace, out.final]  # trace rows: each step's loss; final: the last image's
        reached = next((r["seconds"] for r in points if r["total"] <= base_final), None)
        result[f"ours{tag}_final_total"] = out.final["total"]
        result[f"ours{tag}_s_to_reach"] = reached
        result[f"speedup{tag}"] = base_s / reached if reached else None
    return result


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
        if names[i] == last:
            break
        i += 2
    return flops


def cuda_tflops(size, batch, device):
    """Achieved TFLOP/s of forward + input-gradient backward, VGG19 to conv5_1, batched."""
    net = VGGFeatures("vgg19", ["conv5_1"], seed=0, amp=False).optimised_for(device)
    x = torch.rand(batch, 3, size, size, device=device, requires_grad=True)
    out = {}
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
    net = ours_net("gatys", None, torch.device("cpu"))
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
    net = ours_net("gatys", None, device)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--configs", default="gatys,real")
    ap.add_argument("--budget-gib", type=float, default=20.0)
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    size = 128 if cpu else 512
    iters = args.iters or (20 if cpu else 50)
    threads = torch.get_num_threads()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f", torch {torch.__version__}, {threads} threads",
        "device": str(device),
        "size": size,
        "iterations": iters,
    }
    if not cpu:
        results["machine"] += f", {torch.cuda.get_device_name()}"
    for config in args.configs.split(","):
        results[f"per_iteration_{config}"] = per_iteration(config, size, iters, device, batch=4)
        results[f"grid_{config}"] = grid_throughput(
            config, size, iters * 2, device, num_cpus=os.cpu_count()
        )
    results["time_to_quality"] = time_to_quality(size, 100 if cpu else 200, device)
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
    lines = [
        f"### {r['device']} · {r['size']} px · {r['machine']}",
        "",
        "| measure | baseline | ours | ratio (baseline / ours) |",
        "| --- | --- | --- | --- |",
    ]
    for key, v in r.items():
        if key.startswith("per_iteration_"):
            cfg = key.removeprefix("per_iteration_")
            for tag, name in (("", "fp32"), ("_amp", "amp")):
                for b, label in (
                    ("", "alone"),
                    ("_batched", f"per image in a batch of {v['batch']}"),
                ):
                    lines.append(
                        f"| per-iteration, {cfg} layers, Adam, {name}, {label} | "
                        f"{v['baseline_s'] * 1e3:.1f} ms | "
                        f"{v[f'ours{tag}{b}_s'] * 1e3:.1f} ms | "
                        f"**{v[f'speedup{tag}{b}']:.2f}×** |"
                    )
            lines.append(
                f"| amp loss vs fp32 on the same image, {cfg} layers | | "
                f"{v['amp_rel_loss_diff']:.1e} relative | |"
            )
        if key.startswith("grid_"):
            cfg = key.removeprefix("grid_")
            for tag, name in (("", "fp32"), ("_amp", "amp")):
                lines.append(
                    f"| grid of 16 jobs sharing 2 styles, {cfg} layers, {name}, jobs/min | "
                    f"{v['baseline_jobs_per_min']:.1f} | "
                    f"{v[f'ours{tag}_jobs_per_min']:.1f} | **{v[f'speedup{tag}']:.2f}×** |"
                )
    q = r["time_to_quality"]
    for tag, name in (("", "fp32"), ("_amp", "amp")):
        secs = q[f"ours{tag}_s_to_reach"]
        reach = f"{secs:.1f} s" if secs else "not reached"
        ratio = f"**{q[f'speedup{tag}']:.2f}×**" if secs else "—"
        lines.append(
            f"| time to the baseline's final loss {q['baseline_final_total']:.4g} "
            f"({q['config']} layers, {q['weights']} weights, L-BFGS, {name}) | "
            f"{q['baseline_s']:.1f} s | {reach} | {ratio} |"
        )
    a = r.get("activation_memory")
    if a:
        lines += [
            "",
            f"Activation memory (autograd's saved tensors, Gatys layers, {a['size']} px): "
            f"{a['saved_gib_batch1']:.2f} GiB for one image, {a['gib_per_image']:.2f} GiB per "
            f"extra image; in {a['budget_gib']:g} GiB (1 GiB kept for the rest) a batch of "
            f"{a['largest_batch_in_budget']} fits.",
        ]
    if "tflops" in r:
        lines += [
            "",
            f"Achieved TFLOP/s, VGG19 to conv5_1, 512 px, batch 4, fwd+bwd: "
            f"TF32 {r['tflops']['tf32']:.1f}, bf16 {r['tflops']['bf16']:.1f}.",
        ]
        m = r["memory"]
        lines.append(
            f"Memory: peak {m['peak_gib_by_batch']} GiB by batch; "
            f"{m['gib_per_extra_image']:.2f} GiB per extra image; "
            f"largest batch in {m['budget_gib']} GiB: {m['largest_batch_in_budget']}."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
