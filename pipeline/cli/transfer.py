"""`nst transfer`: one pair, no Ray, through the same task code a run's worker uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from nst_ops.presets import (
    LATEST_DEFAULTS,
)
from nst_ops.spec import JobSpec
from nst_ops.vocab import Mode, Status
from pipeline.cli.common import (
    AllowHttpOpt,
    AllowPrivateOpt,
    MaxInputBytesOpt,
    PresetOpt,
    QualityOpt,
    SetOpt,
    StorageOpt,
    _params,
    _storage,
    _warn,  # noqa: F401  (re-exported: tests and docs quote it)
    app,
    cli_errors,
    console,
    out_console,
    set_input_policy,
)
from pipeline.errors import NstError
from pipeline.jobs import manifest
from pipeline.run import images
from pipeline.store.input_policy import DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    pass


@app.command()
@cli_errors
def transfer(
    content: Annotated[str | None, typer.Argument(help="Content image (path/URL); '-' for none.")],
    style: Annotated[str, typer.Argument(help="Style image (path/URL).")],
    dest: Annotated[
        Path,
        typer.Argument(
            help="Output image; its extension picks the format (.png .jpg .webp .tif). The "
            "trace (and snapshots with save_every) go beside it."
        ),
    ],
    mode: Annotated[Mode, typer.Option(help="What to optimise.")] = Mode.TRANSFER,
    set_: SetOpt = None,
    preset: PresetOpt = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).")
    ] = None,
    quality: QualityOpt = 95,
    storage_options: StorageOpt = None,
    allow_http: AllowHttpOpt = False,
    allow_private_hosts: AllowPrivateOpt = False,
    max_input_bytes: MaxInputBytesOpt = DEFAULT_MAX_BYTES,
) -> None:
    """One pair, no Ray: for quick trials.

    Example: nst transfer photo.jpg starry.jpg out.png --set size=256 --set optimizer=lbfgs
    """
    set_input_policy(allow_http, allow_private_hosts, max_input_bytes)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipeline.jobs.job import Job
    from pipeline.run.options import RunOptions
    from pipeline.run.task import pick_device

    params = _params(set_ or [], None)
    if any(isinstance(v, list) and not manifest.PARAMS[k].is_seq for k, v in params.items()):
        raise NstError("transfer runs one job: give one value per parameter")
    spec = JobSpec.from_dict({**params, "mode": mode.value}, preset, LATEST_DEFAULTS)
    cont = None if content in (None, "-") else content
    if spec.uses_content and cont is None:
        raise NstError(f"mode {mode.value!r} needs a content image (got '-')")
    images.format_of(str(dest))  # a bad extension fails before any work
    job = Job(spec, cont, (style,), 0)
    dev = torch.device(device) if device else pick_device()
    so = _storage(storage_options, cont or style)  # the inputs: the output is a local file
    opts = RunOptions(out=str(dest.parent), storage_options=so)
    outcome = _stylize_with_progress(job, opts, dev)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fmt = images.format_of(str(dest))
    dest.write_bytes(images.encode(outcome.image, fmt, quality))
    for iteration, snap in outcome.snapshots:
        snap_path = dest.with_name(f"{dest.stem}.{iteration:06d}{dest.suffix}")
        snap_path.write_bytes(images.encode(snap, fmt, quality))
    trace_path = dest.with_suffix(".trace.parquet")
    pq.write_table(pa.Table.from_pylist(outcome.trace), trace_path)
    out_console.print(_transfer_summary(job.id, outcome, dev, dest, trace_path), highlight=False)
    if outcome.status != Status.OK:
        console.print(f"[yellow]{escape(outcome.reason or '')}[/]")
        raise typer.Exit(2)


def _stylize_with_progress(job: Any, opts: Any, dev: Any) -> Any:
    """Read the inputs and optimise, with a bar (iteration, loss, ETA) on stderr."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from nst_ops.transfer import stylize
    from pipeline.run.task import Inputs, extractor_for, read_image

    spec = job.spec
    content_img = read_image(job.content_uri, opts) if spec.uses_content else None
    style_imgs = [read_image(u, opts) for u in job.style_uris] if spec.needs_style_image else []
    start = read_image(spec.init_image, opts) if spec.init_image else None
    if spec.init_model and content_img is not None:
        start = Inputs(opts).model_start(spec.init_model, content_img, spec.size)
    columns = (TextColumn("[bold]nst transfer"), BarColumn(), MofNCompleteColumn())
    extra = (TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, *extra, console=console, transient=True) as bar:
        task = bar.add_task("transfer", total=spec.total_iterations, loss="—")
        return stylize(
            spec,
            extractor_for(job, dev, opts.storage_options),
            content_img,
            style_imgs,
            on_step=lambda i, loss: bar.update(task, completed=i, loss=f"{loss:.4g}"),
            init=start,
        )


def _transfer_summary(job_id: str, outcome: Any, dev: Any, dest: Path, trace: Path) -> str:
    f = outcome.final
    terms = ", ".join(f"{k} {f[k]:.4g}" for k in ("content", "style", "tv") if f.get(k))
    return (
        f"{outcome.status} after {outcome.iterations} iterations, {outcome.seconds:.1f}s on "
        f"{dev}: total loss {f.get('total', float('nan')):.4g} ({terms})\n"
        f"image: {dest}\ntrace: {trace}\njob id: {job_id}"
    )
