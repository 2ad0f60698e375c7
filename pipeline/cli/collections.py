"""`nst train`, `nst apply`, `nst models` and `nst export`: the collection path's commands."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from nst_ops.presets import LATEST_DEFAULTS
from nst_ops.spec import JobSpec
from nst_ops.tile_size import NETWORK_TILE
from pipeline.cli.common import (
    AddressOpt,
    AllowHttpOpt,
    AllowPrivateOpt,
    EvaluatorOpt,
    ImageFormat,
    MaxInputBytesOpt,
    MaxPixelsOpt,
    OutOpt,
    PresetOpt,
    QualityOpt,
    SetOpt,
    StorageOpt,
    _params,
    _storage,
    absolute,
    app,
    cli_errors,
    console,
    out_console,
    set_input_policy,
)
from pipeline.errors import NstError
from pipeline.jobs import manifest
from pipeline.run import images
from pipeline.store import storage
from pipeline.store.input_policy import DEFAULT_MAX_BYTES
from pipeline.stylenet.export import ExportFormat
from pipeline.stylenet.train_settings import LrSchedule


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


def job_params(run: str, job_id: str, so: dict | None) -> tuple[dict[str, Any], list[str]]:
    """A committed job's parameters and style images (`--from-job RUN JOB_ID`)."""
    from pipeline.store import layout

    store = storage.Store(run, so)
    try:
        layout.job_dir(job_id)
        rec = store.job_record(job_id)
    except (ValueError, FileNotFoundError):
        raise NstError(f"--from-job: job {job_id} is not committed in {run}") from None
    fields = set(JobSpec.field_names())
    styles = [store.resolve(u) for u in rec.get("style_uris") or []]
    return {k: v for k, v in rec.items() if k in fields}, styles


@app.command()
@cli_errors
def train(
    style: Annotated[
        list[str] | None,
        typer.Argument(help="Style image(s) (path/URL); default: the --from-job job's."),
    ] = None,
    content: Annotated[
        list[str] | None,
        typer.Option(help="Training photos: folder, glob, or a .parquet/.csv/.txt of URIs."),
    ] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Model root (fsspec URL).")] = "",
    set_: SetOpt = None,
    preset: PresetOpt = None,
    from_job: Annotated[
        tuple[str, str] | None,
        typer.Option(metavar="RUN JOB_ID", help="Start from a committed job's parameters."),
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps in all.")] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Crops per step and worker.")] = 4,
    crop: Annotated[
        int,
        typer.Option(
            min=32,
            max=1024,
            help=("Training crops: each photo scaled to this shorter side, cut into crops of it."),
        ),
    ] = 256,
    coarse_steps: Annotated[
        int,
        typer.Option(
            min=0,
            help="Of --steps, the first N on smaller crops (--coarse-crop) cut at the same "
            "scale, each judged as its part of a full crop: a quarter of the pixels per step "
            "at half the side, so more steps in the same time. 0: off.",
        ),
    ] = 0,
    coarse_crop: Annotated[
        int | None, typer.Option(min=16, help="Side of the coarse crops; default half --crop.")
    ] = None,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-3,
    lr_schedule: Annotated[
        LrSchedule, typer.Option(help="Constant, or cosine from --lr to 0 at --steps.")
    ] = LrSchedule.CONSTANT,
    photo_skip: Annotated[
        bool,
        typer.Option(
            help="The network changes the photo (starts as the photo); --no-photo-skip: the "
            "published network, which starts from grey."
        ),
    ] = True,
    width: Annotated[
        int, typer.Option(min=4, max=256, help="Network width: 32 published, 8-16 for CPUs.")
    ] = 32,
    residual_blocks: Annotated[int, typer.Option(min=1, max=16)] = 5,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps.")] = 100,
    sample_every: Annotated[int, typer.Option(min=1, help="Held-aside samples every N.")] = 100,
    holdout: Annotated[
        int, typer.Option(min=0, help="Photos held aside (never trained on) for samples.")
    ] = 1,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers (DDP).")] = 1,
    use_gpu: Annotated[
        bool | None, typer.Option(help="Default: GPUs when the Ray cluster has any.")
    ] = None,
    cpus_per_worker: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="CPUs per worker. Default: embedded, the machine's CPUs "
            "shared among the workers; on a cluster, 1.",
        ),
    ] = None,
    aspects: Annotated[
        str,
        typer.Option(
            help="Crop shapes (w:h), one drawn per step: the network learns the "
            "style target of photos of these aspects; 1 for square crops only."
        ),
    ] = "1,4:3,3:4,3:2,2:3",
    progress: Annotated[bool, typer.Option(help="Live progress line.")] = True,
    reference: Annotated[
        bool,
        typer.Option(
            help="At the end, optimise each held-aside photo with the job (its "
            "iterations, at its size) to state the network's gap closure."
        ),
    ] = True,
    address: AddressOpt = None,
    storage_options: StorageOpt = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger photos.")] = (
        images.DEFAULT_MAX_PIXELS
    ),
    allow_http: AllowHttpOpt = False,
    allow_private_hosts: AllowPrivateOpt = False,
    max_input_bytes: MaxInputBytesOpt = DEFAULT_MAX_BYTES,
) -> None:
    """Train a feed-forward style network with a grid job's own loss, on Ray Train.

    Writes checkpoints, trace.parquet, samples and finally model.pt under --out; the same
    command again resumes from the last checkpoint.

    Example: nst train starry.jpg --content photos/ --out models/starry --set style_weight=1e6
    """
    set_input_policy(allow_http, allow_private_hosts, max_input_bytes)
    from pipeline.stylenet.train import make_settings
    from pipeline.stylenet.train import train as run_training
    from pipeline.stylenet.train_settings import coarse_crop_for, parse_aspects

    if not out or not content:
        raise NstError("nst train needs --out and --content")
    out, content = absolute(out), [absolute(c) for c in content]
    so = _storage(storage_options, out)
    if from_job:
        from_job = (absolute(from_job[0]), from_job[1])
    base, job_styles = job_params(*from_job, so) if from_job else ({}, [])
    params = {**base, **manifest.absolute_params(_params(set_ or [], None)), "mode": "transfer"}
    if any(isinstance(v, list) and not manifest.PARAMS[k].is_seq for k, v in params.items()):
        raise NstError("nst train trains one setting: give one value per parameter")
    spec = JobSpec.from_dict(params, preset if not base else None, LATEST_DEFAULTS)
    styles = [absolute(u) for u in style or job_styles]
    if not styles:
        raise NstError("give a STYLE image (or --from-job RUN JOB_ID)")
    origin = {"run": from_job[0], "job_id": from_job[1]} if from_job else None
    settings = make_settings(
        out, spec, styles, content, holdout, so,
        steps=steps, batch_size=batch_size, crop=crop, lr=lr, width=width,
        lr_schedule=lr_schedule.value, photo_skip=photo_skip,
        residual_blocks=residual_blocks, checkpoint_every=checkpoint_every,
        sample_every=sample_every, seed=seed, workers=workers, use_gpu=use_gpu,
        cpus_per_worker=_worker_cpus(cpus_per_worker, workers, address), max_pixels=max_pixels,
        from_job=origin, reference=reference, aspects=parse_aspects(aspects),
        coarse_steps=coarse_steps, coarse_crop=coarse_crop_for(coarse_crop, crop, coarse_steps),
    )  # fmt: skip
    n_photos, n_held = len(settings.photos), len(settings.holdout)
    console.print(f"training on {n_photos} photos ({n_held} held aside), {steps} steps x "
                  f"{batch_size} x {workers} worker(s)", highlight=False)  # fmt: skip
    meta = run_training(settings, address, progress)
    model = storage.join(out, "model.pt")
    out_console.print(
        f"model: {model} · {meta['steps']} steps · final loss {meta['final_loss']:.4g}",
        highlight=False,
    )
    if meta.get("holdout_gap"):
        from pipeline.stylenet.holdout import line

        out_console.print(line(meta["holdout_gap"], spec), highlight=False)


def _worker_cpus(given: float | None, workers: int, address: str | None) -> float:
    """Embedded, the machine's CPUs shared among the workers (one worker on a 2-core machine
    trains with 2 threads, not 1); on a cluster one each unless told."""
    import os

    if given is not None:
        return given
    return 1.0 if address else float(max(1, (os.cpu_count() or 1) // workers))


@app.command()
@cli_errors
def apply(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="model.pt of `nst train`.")],
    input_: Annotated[
        str, typer.Option("--input", "-i", help="The collection: a folder (recursive) or glob.")
    ],
    out: OutOpt,
    size: Annotated[
        int, typer.Option(min=0, max=8192, help="Longer side of the outputs; 0: each input's.")
    ] = 0,
    image_format: Annotated[ImageFormat, typer.Option(help="Format of the outputs.")] = (
        ImageFormat.PNG
    ),
    image_quality: QualityOpt = 95,
    precision: Annotated[
        Precision, typer.Option(help="auto: bf16 where the device has bf16 units, else fp32.")
    ] = Precision.AUTO,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per Ray Data batch.")] = 16,
    tile: Annotated[
        int,
        typer.Option(
            min=0,
            help="Run images larger than this (px) tile by tile, with the whole image's "
            "instance-norm statistics (same output, memory of one tile); 0: never.",
        ),
    ] = NETWORK_TILE,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Most actors (default: one per GPU, else CPU).")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(min=0.0, help="Default: 1 if the cluster has GPUs, else 0.")
    ] = None,
    retry_failed: Annotated[bool, typer.Option(help="Redo images that failed.")] = False,
    score: Annotated[
        str, typer.Option(help="Score outputs under the evaluator: all, none, or N (a sample).")
    ] = "100",
    evaluator: EvaluatorOpt = None,
    address: AddressOpt = None,
    storage_options: StorageOpt = None,
    max_pixels: MaxPixelsOpt = images.DEFAULT_MAX_PIXELS,
    progress: Annotated[bool, typer.Option(help="Live progress.")] = True,
    strict: Annotated[bool, typer.Option(help="Exit 3 if any image failed.")] = False,
    summary_json: Annotated[
        str | None, typer.Option(help="Write counts, failures and the exit code here as JSON.")
    ] = None,
    allow_http: AllowHttpOpt = False,
    allow_private_hosts: AllowPrivateOpt = False,
    max_input_bytes: MaxInputBytesOpt = DEFAULT_MAX_BYTES,
) -> None:
    """Apply a trained style network to every image of a collection, on Ray Data.

    One output per input under --out/images/ (same relative path); images already done are
    skipped, changed inputs redone; results.parquet holds one row per image. Exit codes: 0
    done, 1 error, 3 an image failed (with --strict), 4 another live run holds --out, 130
    interrupted.

    Example: nst apply models/starry/model.pt --input photos/ --out results/starry
    """
    set_input_policy(allow_http, allow_private_hosts, max_input_bytes)
    from pipeline.cli.apply_run import apply_command

    model, input_, out = (absolute(u) for u in (model, input_, out))
    code = apply_command(
        model, input_, out, _storage(storage_options, out), size=size, tile=tile,
        image_format=image_format.value, image_quality=image_quality, precision=precision.value,
        batch_size=batch_size, workers=workers, gpus=gpus_per_worker, retry_failed=retry_failed,
        score=score, evaluator=evaluator, address=address, max_pixels=max_pixels,
        progress=progress, strict=strict, summary_json=summary_json,
    )  # fmt: skip
    if code:
        raise typer.Exit(code)


@app.command()
@cli_errors
def models(
    root: Annotated[str, typer.Argument(metavar="ROOT", help="Folder/URL holding model.pt files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    storage_options: StorageOpt = None,
) -> None:
    """List trained style networks: parameters, fingerprint, steps, training loss, and on the
    held-aside photos the gap the network closes from the unstyled photo to the optimiser
    (the job's own objective; 100% is the optimiser's quality) and its loss over the
    optimiser's.

    Example: nst models s3://bucket/models
    """
    import json

    from rich.table import Table

    from pipeline.stylenet.registry import find_models

    root = absolute(root)
    rows = find_models(root, _storage(storage_options, root))
    if not rows:
        raise NstError(f"no model.pt under {root}")
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return
    shown = ("model", "style", "content_weight", "style_weight", "width", "steps", "final_loss",
             "gap_closure", "ratio_to_optimised", "fingerprint")  # fmt: skip
    t = Table()
    for c in shown:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(_cell(r.get(c)) if not r.get("error") or c == "model" else "" for c in shown))
        if r.get("error"):
            console.print(f"[yellow]{r['error']}[/]", highlight=False)
    out_console.print(t)


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)


@app.command()
@cli_errors
def export(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="model.pt of `nst train`.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The file to write (path or URL).")],
    format_: Annotated[
        ExportFormat | None,
        typer.Option("--format", help="onnx or torchscript; default: by --out's extension."),
    ] = None,
    storage_options: StorageOpt = None,
) -> None:
    """Export a trained style network for other runtimes: ONNX (onnxruntime, TensorRT, the
    browser) or TorchScript, for any image size, the model's metadata carried along.

    Example: nst export models/starry/model.pt --out starry.onnx
    """
    from pipeline.run.model_file import read_model
    from pipeline.stylenet.export import export_bytes, format_for

    model, out = absolute(model), absolute(out)
    so = _storage(storage_options, out)
    fmt = format_for(out, format_)
    loaded = read_model(model, so)
    data = export_bytes(loaded, fmt)
    folder, name = out.rsplit("/", 1)
    storage.Store(folder, so).put(name, data)
    out_console.print(
        f"{out}: {fmt.value}, {len(data):,} bytes, any height and width · model "
        f"{loaded.fingerprint}",
        highlight=False,
    )
