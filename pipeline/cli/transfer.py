"""`nst transfer`: one pair, no Ray, through the same task code a run's worker uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    app,
    cli_errors,
    console,
    out_console,
    set_input_policy,
)
from pipeline.errors import NstError
from pipeline.jobs import manifest
from pipeline.jobs.job import Job
from pipeline.run import images
from pipeline.store import layout, storage
from pipeline.store.input_policy import DEFAULT_MAX_BYTES


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
    params = _params(set_ or [], None)
    if any(isinstance(v, list) and not manifest.PARAMS[k].is_seq for k, v in params.items()):
        raise NstError("transfer runs one job: give one value per parameter")
    spec = JobSpec.from_dict({**params, "mode": mode.value}, preset, LATEST_DEFAULTS)
    cont = None if content in (None, "-") else content
    if spec.uses_content and cont is None:
        raise NstError(f"mode {mode.value!r} needs a content image (got '-')")
    if spec.workers_per_job > 1:
        raise NstError(f"workers_per_job={spec.workers_per_job} spreads tiles over Ray workers: "
                       "nst run does that; nst transfer runs in this one process")  # fmt: skip
    fmt = images.format_of(str(dest))  # a bad extension fails before any work
    so = _storage(storage_options, cont or style)  # the inputs: the output is a local file
    row = _run_one(Job(spec, cont, (style,), 0), dest, device, so, (fmt, quality))
    out_console.print(_transfer_summary(row, dest), highlight=False)
    if row["status"] != Status.OK:
        console.print(f"[yellow]{escape(row.get('error') or '')}[/]")
        raise typer.Exit(2)


def _run_one(
    job: Job, dest: Path, device: str | None, so: dict | None, fmt: tuple[str, int]
) -> dict[str, Any]:
    """The worker's own steps for one job: its inputs read and fingerprinted (Inputs), the
    optimisation, then its files written and committed (commit_job), into a local store at
    the destination's folder instead of a run's job folder."""
    import platform
    import time

    import torch

    from pipeline.run.devices import amp_enabled, extractor_for, pick_device
    from pipeline.run.options import RunOptions
    from pipeline.run.task import Inputs, commit_job

    dev = torch.device(device) if device else pick_device()
    opts = RunOptions(out=str(dest.parent), storage_options=so)
    inputs, started = Inputs(opts), time.time()
    _, content, styles = inputs.of(job)
    outcome = _stylize_with_progress(job, extractor_for(job, dev, so), content, styles,
                                     inputs.start(job))  # fmt: skip
    info = {"device": str(dev), "host": platform.node(), **inputs.record(job),
            "amp_used": amp_enabled(job.spec.amp, dev)}  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    store = storage.Store(str(dest.parent))
    row = commit_job(job, outcome, info, started, store, None, fmt, layout.beside(dest.name))
    if not row.get("committed"):
        raise NstError(f"{dest}: {row['error']}")
    return row


def _stylize_with_progress(
    job: Job, extractor: Any, content: Any, styles: list[Any], start: Any
) -> Any:
    """Optimise with a bar (iteration, loss, ETA) on stderr."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from nst_ops.transfer import stylize

    spec = job.spec
    columns = (TextColumn("[bold]nst transfer"), BarColumn(), MofNCompleteColumn())
    extra = (TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, *extra, console=console, transient=True) as bar:
        task = bar.add_task("transfer", total=spec.total_iterations, loss="—")
        return stylize(
            spec,
            extractor,
            content,
            styles if spec.needs_style_image else [],
            on_step=lambda i, loss: bar.update(task, completed=i, loss=f"{loss:.4g}"),
            init=start,
        )


def _transfer_summary(row: dict[str, Any], dest: Path) -> str:
    terms = ", ".join(
        f"{k} {row[f'final_{k}']:.4g}" for k in ("content", "style", "tv") if row.get(f"final_{k}")
    )
    return (
        f"{row['status']} after {row['iterations_run']} iterations, {row['seconds']:.1f}s on "
        f"{row['device']}: total loss {row.get('final_total') or float('nan'):.4g} ({terms})\n"
        f"image: {dest}\ntrace: {dest.parent / row['trace_uri']}\njob id: {row['job_id']}"
    )
