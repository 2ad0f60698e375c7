"""The `nst` command line: thin wrappers over manifest, grid, execute and report."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from nst_ops.spec import JobSpec, SpecError
from nst_ops.vgg import WeightsError

from . import images, manifest, results, storage
from .errors import NstError
from .grid import DEFAULT_MAX_JOBS, expand

app = typer.Typer(
    help="Batch Gatys-style neural style transfer and style reconstruction on Ray.\n\n"
    "Quick start:  nst make-manifest m.parquet --content photos/ --style paintings/ "
    "--set optimizer=adam,lbfgs  &&  nst run m.parquet --out results/",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)
_DEBUG = {"on": False}

OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output root: a path or fsspec URL.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage-options",
        envvar="NST_STORAGE_OPTIONS",
        help="JSON of fsspec storage options (e.g. an S3 endpoint_url). Never written to outputs.",
    ),
]
MaxJobsOpt = Annotated[int, typer.Option(help="Refuse manifests that expand past this.")]
MaxPixelsOpt = Annotated[int, typer.Option(help="Refuse input images with more pixels.")]
ListOpt = Annotated[list[str] | None, typer.Option(help="Folder, glob or file; repeatable.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="NAME=V1,V2 (several values make a grid axis)."),
]
OutArg = Annotated[str, typer.Argument(metavar="OUT", help="Output root of a run.")]


def cli_errors(fn: Callable) -> Callable:
    """Print user errors as one line and exit 1; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (NstError, SpecError, WeightsError, ValueError, OSError) as e:
            if _DEBUG["on"]:
                raise
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def main(debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False) -> None:
    _DEBUG["on"] = debug


def _storage(opts: str | None) -> dict | None:
    if not opts:
        return None
    try:
        value = json.loads(opts)
    except ValueError as e:
        raise NstError(f"--storage-options is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise NstError("--storage-options must be a JSON object")
    return value


def _scalar(text: str) -> Any:
    """'3' -> 3, '1e6' -> 1e6 (YAML 1.1 would keep it a string), 'true' -> True, else text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def _numbers(name: str, value: Any) -> Any:
    """YAML 1.1 reads '1e6' as a string: turn such strings back into numbers for numeric params."""
    if isinstance(value, list):
        return [_numbers(name, v) for v in value]
    p = manifest.PARAMS.get(name)
    if isinstance(value, str) and p is not None and p.kind in (int, float):
        return _scalar(value)
    return value


def parse_value(name: str, text: str) -> Any:
    """`--set` values: scalars split on ',' into a grid; list parameters split values on '|'
    and items on ',' (e.g. style_layers=relu1_1,relu2_1|relu1_1)."""
    if name not in manifest.PARAMS:
        raise NstError(f"--set: unknown parameter {name!r}")
    if manifest.PARAMS[name].is_seq:
        values = [[_scalar(v) for v in part.split(",") if v] for part in text.split("|")]
    else:
        values = [_scalar(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def _params(sets: list[str], grid: Path | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if grid:
        loaded = yaml.safe_load(grid.read_text())
        if not isinstance(loaded, dict):
            raise NstError(f"{grid}: expected a mapping of parameter -> value or list of values")
        params.update({k: _numbers(k, v) for k, v in loaded.items()})
    for item in sets:
        if "=" not in item:
            raise NstError(f"--set {item!r}: expected NAME=VALUE[,VALUE...]")
        name, text = item.split("=", 1)
        params[name.strip()] = parse_value(name.strip(), text.strip())
    unknown = [k for k in params if k not in manifest.PARAMS]
    if unknown:
        raise NstError(f"unknown parameter(s): {', '.join(unknown)}")
    return params


@app.command("make-manifest")
@cli_errors
def make_manifest(
    dest: Annotated[str, typer.Argument(help="Manifest to write (.parquet, path or URL).")],
    content: ListOpt = None,
    style: ListOpt = None,
    mode: Annotated[
        str, typer.Option(help="transfer, style, content or layer_sweep.")
    ] = "transfer",
    set_: SetOpt = None,
    grid: Annotated[
        Path | None, typer.Option(help="YAML/JSON file of NAME: value or [values].")
    ] = None,
    blend: Annotated[bool, typer.Option(help="One row blending all style images.")] = False,
    storage_options: StorageOpt = None,
) -> None:
    """Build a manifest from folders or globs of images and grid values.

    Example: nst make-manifest m.parquet --content photos/ --style 'art/*.jpg'
    --set optimizer=adam,lbfgs --set style_weight=1e6,1e7
    """
    so = _storage(storage_options)
    contents = [u for pattern in content or [] for u in manifest.list_images(pattern, so)]
    styles = [u for pattern in style or [] for u in manifest.list_images(pattern, so)]
    table = manifest.build_manifest(contents, styles, mode, _params(set_ or [], grid), blend)
    manifest.write_manifest(manifest.rebase_paths(table, dest), dest, so)
    jobs = expand(table)
    out_console.print(f"wrote {dest}: {table.num_rows} rows, {len(jobs)} jobs")


def _load_jobs(path: str, so: dict | None, max_jobs: int):
    return expand(manifest.read_manifest(path, so), max_jobs)


@app.command()
@cli_errors
def plan(
    manifest_uri: Annotated[str, typer.Argument(metavar="MANIFEST")],
    max_jobs: MaxJobsOpt = DEFAULT_MAX_JOBS,
    storage_options: StorageOpt = None,
) -> None:
    """Show how many jobs a manifest expands to and the grid axes that vary. No compute.

    Example: nst plan manifests/demo.parquet
    """
    jobs = _load_jobs(manifest_uri, _storage(storage_options), max_jobs)
    records = [j.to_record() for j in jobs]
    table = Table(title=f"{len(jobs)} jobs from {manifest_uri}")
    table.add_column("parameter")
    table.add_column("values", justify="right")
    table.add_column("distinct values")
    for key in ["content_uri", "style_uris", *JobSpec.field_names()]:
        values = Counter(json.dumps(r[key]) for r in records)
        if len(values) > 1 or key in ("mode",):
            shown = ", ".join(v for v, _ in values.most_common(6))
            more = f" … (+{len(values) - 6})" if len(values) > 6 else ""
            table.add_row(key, str(len(values)), shown + more)
    out_console.print(table)


@app.command()
@cli_errors
def validate(
    manifest_uri: Annotated[str, typer.Argument(metavar="MANIFEST")],
    max_jobs: MaxJobsOpt = DEFAULT_MAX_JOBS,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images above this.")
    ] = images.DEFAULT_MAX_PIXELS,
    storage_options: StorageOpt = None,
) -> None:
    """Check the schema, every row, and that every input exists and decodes (cheaply).

    Example: nst validate s3://bucket/manifest.parquet --storage-options '{"anon": false}'
    """
    so = _storage(storage_options)
    jobs = _load_jobs(manifest_uri, so, max_jobs)
    rows_of: dict[str, set[int]] = {}
    for j in jobs:
        for uri in (j.content_uri, *j.style_uris):
            if uri:
                rows_of.setdefault(uri, set()).add(j.row)

    def check(uri: str) -> str | None:
        try:
            images.probe(storage.read_bytes(uri, so, attempts=2), uri, max_pixels)
        except FileNotFoundError:
            return f"{uri}: not found"
        except (NstError, OSError) as e:
            return str(e)
        return None

    with ThreadPoolExecutor(8) as pool:
        problems = [
            f"rows {sorted(rows_of[u])}: {msg}"
            for u, msg in zip(rows_of, pool.map(check, rows_of), strict=True)
            if msg
        ]
    for p in problems:
        console.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
    if problems:
        raise NstError(f"{len(problems)} of {len(rows_of)} inputs failed validation")
    out_console.print(f"ok: {len(jobs)} jobs, {len(rows_of)} inputs readable")


@app.command()
@cli_errors
def run(
    manifest_uri: Annotated[str, typer.Argument(metavar="MANIFEST")],
    out: OutOpt,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster: 'auto' or ray://host:10001. Default: embedded.")
    ] = None,
    gpus_per_job: Annotated[float, typer.Option(help="GPUs per task; fractions pack jobs.")] = 1.0,
    cpus_per_job: Annotated[float, typer.Option(help="CPUs per task.")] = 1.0,
    batch_size: Annotated[
        int, typer.Option(help="Compatible Adam/SGD jobs optimised together in one task.")
    ] = 8,
    num_cpus: Annotated[int | None, typer.Option(help="Embedded Ray: CPUs to use.")] = None,
    force: Annotated[bool, typer.Option(help="Redo jobs that are already committed.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Redo failed and diverged jobs.")] = False,
    max_retries: Annotated[int, typer.Option(help="Ray retries when a worker dies.")] = 3,
    max_jobs: MaxJobsOpt = DEFAULT_MAX_JOBS,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images above this.")
    ] = images.DEFAULT_MAX_PIXELS,
    storage_options: StorageOpt = None,
    progress: Annotated[bool, typer.Option(help="Live progress bar.")] = True,
    strict: Annotated[bool, typer.Option(help="Exit 3 if any job failed or diverged.")] = False,
) -> None:
    """Run every job of a manifest on Ray, writing images and loss traces under --out.

    Jobs already committed under --out are skipped (resume); Ctrl-C stops cleanly.
    Example: nst run manifests/demo.parquet --out results/demo
    """
    from .execute import Resources, init_ray, run_jobs
    from .worker import RunOptions

    so = _storage(storage_options)
    jobs = _load_jobs(manifest_uri, so, max_jobs)
    init_ray(address, num_cpus)
    opts = RunOptions(out=out, max_pixels=max_pixels, storage_options=so)
    res = Resources(gpus_per_job, cpus_per_job, max_retries, batch_size=batch_size)
    summary = run_jobs(jobs, opts, res, force=force, retry_failed=retry_failed, progress=progress)
    counts = Counter(r["status"] for r in summary.rows)
    out_console.print(
        f"{summary.total} jobs ({summary.skipped} already done): "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f" · results: {storage.join(out, 'results.parquet')}"
    )
    if summary.interrupted:
        console.print("[yellow]interrupted:[/] completed jobs are kept; run again to resume")
        raise typer.Exit(130)
    if strict and (counts.get("failed") or counts.get("diverged")):
        raise typer.Exit(3)


@app.command()
@cli_errors
def status(
    out: Annotated[str, typer.Argument(metavar="OUT")], storage_options: StorageOpt = None
) -> None:
    """Counts by status for an output root, and every failure with its error.

    Example: nst status results/demo
    """
    rows, total = results.collect(storage.Store(out, _storage(storage_options)))
    counts = Counter(r["status"] for r in rows)
    counts["pending"] = max(0, total - len(rows))
    out_console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if v) or "no jobs")
    bad = [r for r in rows if r["status"] in ("failed", "diverged")]
    if bad:
        t = Table(title="failed and diverged jobs")
        for col in ("job_id", "row", "status", "error"):
            t.add_column(col, overflow="fold")
        for r in bad:
            t.add_row(r["job_id"], str(r.get("row")), r["status"], str(r.get("error")))
        out_console.print(t)


@app.command()
@cli_errors
def transfer(
    content: Annotated[str | None, typer.Argument(help="Content image (path/URL); '-' for none.")],
    style: Annotated[str, typer.Argument(help="Style image (path/URL).")],
    dest: Annotated[Path, typer.Argument(help="Output PNG; the trace goes beside it.")],
    mode: Annotated[str, typer.Option(help="transfer, style or content.")] = "transfer",
    set_: SetOpt = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).")
    ] = None,
    storage_options: StorageOpt = None,
) -> None:
    """One pair, no Ray: for quick trials.

    Example: nst transfer photo.jpg starry.jpg out.png --set size=256 --set optimizer=lbfgs
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from nst_ops.transfer import stylize

    from .jobs import Job
    from .worker import RunOptions, extractor_for, pick_device, read_image

    params = _params(set_ or [], None)
    if any(isinstance(v, list) and not manifest.PARAMS[k].is_seq for k, v in params.items()):
        raise NstError("transfer runs one job: give one value per parameter")
    spec = JobSpec.from_dict({**params, "mode": mode})
    cont = None if content in (None, "-") else content
    job = Job(spec, cont, (style,), 0)
    dev = torch.device(device) if device else pick_device()
    opts = RunOptions(out=str(dest.parent), storage_options=_storage(storage_options))
    outcome = stylize(
        spec,
        extractor_for(job, dev),
        read_image(cont, opts) if spec.uses_content else None,
        [read_image(style, opts)] if spec.uses_style or spec.init == "style" else [],
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(images.encode_png(outcome.image))
    pq.write_table(pa.Table.from_pylist(outcome.trace), dest.with_suffix(".trace.parquet"))
    final = {k: f"{v:.4g}" for k, v in outcome.final.items() if k != "iteration"}
    out_console.print(
        f"{job.id}: {outcome.status} after {outcome.iterations} iterations on {dev}, "
        f"{outcome.seconds:.1f}s; {final} -> {dest}"
    )
    if outcome.status != "ok":
        console.print(f"[yellow]{outcome.reason}[/]")
        raise typer.Exit(2)


@app.command()
@cli_errors
def report(
    out: OutArg,
    rows: Annotated[str | None, typer.Option(help="Axis for contact-sheet rows, or none.")] = None,
    cols: Annotated[
        str | None, typer.Option(help="Axis for contact-sheet columns, or none.")
    ] = None,
    storage_options: StorageOpt = None,
) -> None:
    """Write OUT/report.html: contact sheet by grid axes, loss curves, summary table.

    Example: nst report results/seed_study --rows tag_experiment --cols none
    """
    from .report import write_report

    url = write_report(out, _storage(storage_options), rows=rows, cols=cols, console=out_console)
    out_console.print(f"report: {url}")


if __name__ == "__main__":  # python -m pipeline.cli
    app()
