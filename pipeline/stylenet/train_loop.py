"""What each Ray Train worker runs: build the network, the job's objective and the crop
sampler, continue from the newest checkpoint under --out, and step. Rank 0 writes."""

from __future__ import annotations

import io
import time
from typing import Any

import torch
import torch.distributed as dist

from nst_ops.evaluator import default_evaluator
from nst_ops.layer_table import deepest
from nst_ops.spec import JobSpec
from nst_ops.stylenet import NetConfig, StyleObjective, TransformerNet
from nst_ops.stylenet.network import parameter_count
from nst_ops.vgg import VGGFeatures
from pipeline.run import images, model_file, scoring, weights
from pipeline.run.devices import amp_enabled
from pipeline.store import record, storage
from pipeline.stylenet import holdout, layout
from pipeline.stylenet.checkpoints import latest_checkpoint, trace_table
from pipeline.stylenet.photos import CropSampler, shorter_side_to
from pipeline.stylenet.train_settings import TrainSettings


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    s: TrainSettings = config["settings"]
    progress = config.get("progress")  # a Ray queue the driver's live line reads
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(s.cpus_per_worker)))
    store = storage.Store(s.out, s.storage_options)
    spec = JobSpec.from_dict(s.spec)
    torch.manual_seed(s.seed)
    net = TransformerNet(NetConfig(s.width, s.residual_blocks, s.photo_skip))
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    start, trace = _resume(store, net, opt)
    model = ray.train.torch.prepare_model(net)
    styles = [_read(u, s) for u in s.style_uris]
    objective = StyleObjective(_extractor(spec, device, s.storage_options), spec, styles, s.crop)
    share = s.photos[rank::world] or s.photos
    sampler = CropSampler(share, s.crop, s.seed, rank, s.storage_options, s.max_pixels,
                          aspects=s.aspects)  # fmt: skip
    t0, seen = time.time(), 0
    for step in range(start + 1, s.steps + 1):
        side = s.crop_at(step)
        x, style_hw = sampler.batch_of(step, s.batch_size, side)
        x = x.to(device)
        for group in opt.param_groups:
            group["lr"] = s.lr_at(step)
        terms = objective(model(x), x, style_hw)
        loss = terms.total.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += x.shape[0]
        rate = seen * world / (time.time() - t0)
        trace.append(_row(step, terms, world, rate) | {"crop": side})
        if rank == 0 and progress is not None:
            _report(progress, trace[-1])
        if rank == 0 and (step % s.checkpoint_every == 0 or step == s.steps):
            _checkpoint(store, net, opt, step, trace)  # (no ray.train.report: ~1 s a call)
        if rank == 0 and (step % s.sample_every == 0 or step == s.steps):
            _samples(store, net, s, step, device)
    if rank == 0:
        _write_model(store, net, s, spec, styles, trace, time.time() - t0)


def _report(queue: Any, row: dict[str, float]) -> None:
    from ray.util.queue import Full

    try:
        queue.put_nowait(row)
    except Full:  # the driver is not reading (--no-progress): drop, never wait
        pass


def _read(uri: str, s: TrainSettings) -> torch.Tensor:
    return images.decode(storage.read_input(uri, s.storage_options), uri, s.max_pixels)


def _extractor(spec: JobSpec, device: torch.device, so: dict | None) -> VGGFeatures:
    _, seed = weights.parse(spec.weights)
    sd = weights.cached_state_dict(spec.weights, spec.backbone, so)
    last = deepest(spec.backbone, spec.active_layers)
    amp = amp_enabled(spec.amp, device)  # bf16 VGG where the device has bf16 units
    net = VGGFeatures(spec.backbone, [last], spec.pooling, state_dict=sd, seed=seed, amp=amp)
    return net.optimised_for(device)


def _row(step: int, terms: Any, world: int, images_per_s: float) -> dict[str, float]:
    """The step's losses, averaged over every worker's batch."""
    values = torch.stack([terms.total.mean(), *(v.mean() for v in terms.terms.values())]).detach()
    if world > 1 and dist.is_initialized():
        dist.all_reduce(values)
        values /= world
    names = ["total", *terms.terms]
    row = {"step": step, **{n: float(v) for n, v in zip(names, values.cpu(), strict=True)}}
    return row | {"images_per_s": round(images_per_s, 3)}


def _resume(
    store: storage.Store, net: TransformerNet, opt: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    """The newest checkpoint's step and trace (0 and [] for a fresh start)."""
    step = latest_checkpoint(store)
    if step == 0:
        return 0, []
    data = store.get(layout.checkpoint(step))
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    return int(state["step"]), list(state["trace"])


def _checkpoint(
    store: storage.Store, net: TransformerNet, opt: torch.optim.Optimizer, step: int,
    trace: list[dict[str, float]],
) -> None:  # fmt: skip
    buf = io.BytesIO()
    torch.save({"step": step, "net": net.state_dict(), "opt": opt.state_dict(), "trace": trace},
               buf)  # fmt: skip
    store.put(layout.TRACE, trace_table(trace))
    store.put(layout.checkpoint(step), buf.getvalue())  # last: the checkpoint counts once whole


def _samples(
    store: storage.Store, net: TransformerNet, s: TrainSettings, step: int, device: torch.device
) -> None:
    with torch.no_grad():
        net.eval()
        for k, uri in enumerate(s.holdout):
            x = shorter_side_to(_read(uri, s), s.crop)[None].to(device)
            store.put(layout.sample(step, k), images.encode(net(x)[0].cpu()))
        net.train()


def _holdout_scores(
    net: TransformerNet, s: TrainSettings, spec: JobSpec, styles: list[torch.Tensor]
) -> dict[str, Any] | None:
    """The held-aside photos' mean scores under the default evaluator (as `nst apply` and
    `nst run` score): how well the network does on photos it never saw."""
    if not s.holdout:
        return None
    ev = default_evaluator([spec])
    device = next(net.parameters()).device
    found = []
    with torch.no_grad():
        for uri in s.holdout:
            photo = shorter_side_to(_read(uri, s), s.crop)
            png = images.encode(net.eval()(photo[None].to(device))[0].cpu())
            found.append(
                scoring.score_image(ev, png, spec, photo, styles, device, s.storage_options)
            )
    ok = [f for f in found if f["score_error"] is None]
    if not ok:
        return {"score_error": found[0]["score_error"], "score_by": found[0]["score_by"]}
    mean = {k: sum(f[k] for f in ok) / len(ok) for k in ("score_content", "score_style")}
    return mean | {"score_by": ok[0]["score_by"], "images": len(ok)}


def _holdout_gap(
    net: TransformerNet, s: TrainSettings, spec: JobSpec, styles: list[torch.Tensor]
) -> dict[str, Any] | None:
    """The network against the optimiser on the held-aside photos (see stylenet.holdout)."""
    if not s.holdout or not s.reference:
        return None
    device = next(net.parameters()).device
    rows = [
        {"uri": uri}
        | holdout.photo_gap(
            net, spec, _read(uri, s), styles, device, s.storage_options
        )  # fmt: skip
        for uri in s.holdout
    ]
    return holdout.summary(rows)


def _write_model(
    store: storage.Store,
    net: TransformerNet,
    s: TrainSettings,
    spec: JobSpec,
    styles: list[torch.Tensor],
    trace: list[dict[str, float]],
    seconds: float,
) -> None:
    tail = [r["total"] for r in trace[-10:]]
    meta = {
        "spec": spec.to_dict(),
        "net": net.config.to_dict(),
        "parameters": parameter_count(net),
        "style_uris": s.style_uris,
        "style_fingerprints": [storage.fingerprint_of(u, s.storage_options) for u in s.style_uris],
        "photos": len(s.photos),
        "skipped_photos": s.skipped_photos,
        "holdout": s.holdout,
        "steps": s.steps,
        "batch_size": s.batch_size,
        "crop": s.crop,
        "coarse_crop": s.coarse_crop,
        "coarse_steps": s.coarse_steps,
        "lr": s.lr,
        "lr_schedule": s.lr_schedule,
        "amp": amp_enabled(spec.amp, next(net.parameters()).device),
        "workers": s.workers,
        "seed": s.seed,
        "from_job": s.from_job,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "holdout_scores": _holdout_scores(net, s, spec, styles),
        "holdout_gap": _holdout_gap(net, s, spec, styles),
        "train_seconds_last_session": round(seconds, 3),
        "created_at": time.time(),
        "versions": record.versions(),
    }
    data = model_file.to_bytes(net, net.config, meta, styles)
    store.put(layout.MODEL, data)
