"""The `nst` command line: thin wrappers over manifest, grid, execute and report."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nst_ops.layers import WeightsError
from nst_ops.presets import (
    AMP_FROM,
    EDITIONS,
    FIRST_DEFAULTS,
    LATEST_DEFAULTS,
    PRESETS,
)
from nst_ops.spec import PARAM_HELP, JobSpec, choices
from nst_ops.vocab import BAD_STATUSES, Mode, RowMode, Status

from . import images, layout, lease, manifest, results, storage
from .cli_shared import (
    _DEBUG,
    QUICK_START,  # noqa: F401  (re-exported: tests and docs quote it)
    AddressOpt,
    AllowHttpOpt,
    AllowPrivateOpt,
    DefaultsOpt,
    EvaluatorOpt,
    ImageFormat,
    ListOpt,
    MaxInputBytesOpt,
    MaxJobsOpt,
    MaxPixelsOpt,
    OutArg,
    OutOpt,
    PresetOpt,
    QualityOpt,
    SetOpt,
    StorageOpt,
    _evaluator,
    _params,
    _storage,
    app,
    cli_errors,
    console,
    out_console,
    set_input_policy,
)
from .errors import NstError
from .exit_summary import summary_on_exit
from .grid import DEFAULT_MAX_JOBS, expand
from .input_policy import DEFAULT_MAX_BYTES
from .plan import Plan, make_plan
from .ranking import Rank

if TYPE_CHECKING:
    from .execute import Summary


@app.command("make-manifest")
@cli_errors
def make_manifest(
    dest: Annotated[
        str, typer.Argument(metavar="DEST", help="Manifest to write (.parquet, path or URL).")
    ],
    content: ListOpt = None,
    style: ListOpt = None,
    mode: Annotated[RowMode, typer.Option(help="What each row asks for.")] = RowMode.TRANSFER,
    set_: SetOpt = None,
    grid: Annotated[
        Path | None, typer.Option(help="YAML/JSON file of NAME: value or [values].")
    ] = None,
    blend: Annotated[bool, typer.Option(help="One row blending all style images.")] = False,
    preset: PresetOpt = None,
    storage_options: StorageOpt = None,
) -> None:
    """Build a manifest from folders or globs of images and grid values.

    Example: nst make-manifest m.parquet --content photos/ --style 'art/*.jpg'
    --set optimizer=adam,lbfgs --set style_weight=1e6,1e7
    """
    so = _storage(storage_options, str(dest))
    contents = [u for pattern in content or [] for u in manifest.list_images(pattern, so)]
    styles = [u for pattern in style or [] for u in manifest.list_images(pattern, so)]
    params = _params(set_ or [], grid)
    table = manifest.build_manifest(contents, styles, mode.value, params, blend, preset)
    jobs = expand(table, defaults=LATEST_DEFAULTS)  # validate every row before writing
    manifest.write_manifest(manifest.rebase_paths(table, dest), dest, so)
    out_console.print(f"wrote {dest}: {table.num_rows} rows, {len(jobs)} jobs")


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def _load_jobs(path: str, so: dict | None, max_jobs: int, defaults: int = LATEST_DEFAULTS) -> list:
    return expand(manifest.read_manifest(path, so), max_jobs, warn=_warn, defaults=defaults)


def _edition(store: storage.Store | None, given: int | None) -> int:
    """The defaults edition to resolve a manifest under: the one asked for, else the one the
    run at ``store`` started with (its job ids depend on it), else the latest."""
    if given is not None:
        if given not in EDITIONS:
            raise NstError(f"--defaults {given}: choose one of {', '.join(map(str, EDITIONS))}")
        return given
    recorded = results.defaults_of(store) if store is not None else None
    return LATEST_DEFAULTS if recorded is None else recorded


def _say_edition(edition: int) -> None:
    if edition != LATEST_DEFAULTS:
        console.print(
            f"defaults edition {edition} (this run's; --defaults {LATEST_DEFAULTS} for the latest, "
            "which gives the jobs new ids)",
            highlight=False,
        )


def _param_rows() -> list[tuple[str, str, str, str, str]]:
    defaults = JobSpec()
    rows = []
    for name in JobSpec.field_names():
        kind = manifest.PARAMS[name] if name in manifest.PARAMS else None
        typ = "str" if kind is None else kind.kind.__name__
        typ = f"list of {typ}" if kind is not None and kind.is_seq else typ
        default = getattr(defaults, name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else f"{default}"
        shown = f"{default:g}" if isinstance(default, float) else shown
        rows.append((name, typ, shown, ", ".join(choices(name) or ()), PARAM_HELP[name]))
    return rows


@app.command()
def params() -> None:
    """Every job parameter: type, default, allowed values and meaning. Each is grid-able: a list
    of values (a list of lists for list parameters) in a manifest column or `--set a,b`.

    Example: nst params
    """
    columns = ("name", "type", "default", "allowed", "meaning")
    rows = [*_param_rows(), ("preset", "str", "None", ", ".join(PRESETS),
                              "fill the parameters not given")]  # fmt: skip
    if out_console.is_terminal:
        t = Table(title="job parameters (columns of a manifest, names for --set)")
        for col in columns:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*row)
        out_console.print(t)
    else:  # piped: one aligned line per parameter, never wrapped into a box
        widths = [max(len(r[k]) for r in [columns, *rows]) for k in range(4)]
        for row in [columns, *rows]:
            print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[4]]))
    out_console.print(
        "A recognisable result quickly: init=content (starts from the photo), iterations≈100, "
        "size=128. With the shipped weights use layers up to relu3_1/conv3_1."
    )
    out_console.print(
        f"Defaults shown are edition {FIRST_DEFAULTS}'s. New runs get edition "
        f"{LATEST_DEFAULTS}: L-BFGS jobs that do not say otherwise restart after a blow-up "
        f"(restarts=2) and from {AMP_FROM} px run with amp=auto. See --defaults on nst run."
    )


@app.command()
@cli_errors
def plan(
    manifest_uri: Annotated[str, typer.Argument(metavar="MANIFEST")],
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="A run root: also say what would run, why.")
    ] = None,
    force: Annotated[bool, typer.Option(help="As `nst run --force`.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="As `nst run --retry-failed`.")] = False,
    max_jobs: MaxJobsOpt = DEFAULT_MAX_JOBS,
    storage_options: StorageOpt = None,
    defaults: DefaultsOpt = None,
) -> None:
    """Show how many jobs a manifest expands to and the grid axes that vary. No compute.

    With --out: how many jobs `nst run` would run there, and why (new, failed, input changed,
    output missing).

    Example: nst plan manifests/demo.parquet --out results/demo
    """
    so = _storage(storage_options, out or manifest_uri)
    store = storage.Store(out, so) if out is not None else None
    edition = _edition(store, defaults)
    _say_edition(edition)
    jobs = _load_jobs(manifest_uri, so, max_jobs, edition)
    if store is not None:
        p = make_plan(jobs, store, force, retry_failed, so)
        out_console.print(f"{out}: {_plan_line(p, len(jobs))}", highlight=False)
        if p.not_retried:
            out_console.print(f"{p.not_retried} failed or diverged kept (--retry-failed redoes)")
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
    allow_http: AllowHttpOpt = False,
    allow_private_hosts: AllowPrivateOpt = False,
    max_input_bytes: MaxInputBytesOpt = DEFAULT_MAX_BYTES,
) -> None:
    """Check the schema, every row, and that every input exists and decodes (cheaply).

    Example: nst validate s3://bucket/manifest.parquet --storage-options '{"anon": false}'
    """
    set_input_policy(allow_http, allow_private_hosts, max_input_bytes)
    so = _storage(storage_options, manifest_uri)
    jobs = _load_jobs(manifest_uri, so, max_jobs)
    rows_of: dict[str, set[int]] = {}
    for j in jobs:
        for uri in (j.content_uri, *j.style_uris, j.spec.init_image):  # a start image too
            if uri:
                rows_of.setdefault(uri, set()).add(j.row)

    sizes: dict[str, tuple[int, int]] = {}

    def check(uri: str) -> str | None:
        try:
            w, h = images.probe(storage.read_input(uri, so, attempts=2), uri, max_pixels)
            sizes[uri] = (h, w)
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
    problems += _size_problems(jobs, sizes)
    problems += _weights_problems(jobs, so) + _model_problems(jobs, so)
    for p in problems:
        console.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
    if problems:
        raise NstError(f"{len(problems)} of {len(rows_of)} inputs failed validation")
    n_weights = len({(j.spec.weights, j.spec.backbone) for j in jobs})
    out_console.print(
        f"ok: {len(jobs)} jobs, {len(rows_of)} inputs readable, {n_weights} weights source(s) fit"
    )


def _size_problems(jobs: list, sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Jobs whose output (the content's aspect at the job's size, every multires level), or
    whose style at its own scale, has no feature map at the deepest layer."""
    from nst_ops.layers import deepest, size_problem

    found: dict[str, set[int]] = {}
    for j in jobs:
        s = j.spec
        layer = deepest(s.backbone, s.active_layers)
        source = j.content_uri if s.uses_content else (j.style_uris or [None])[0]
        checked = [source] + (list(j.style_uris) if s.style_scale == "own" else [])
        for uri in (u for u in checked if u in sizes):
            problem = size_problem(s.backbone, layer, s.size >> (s.multires - 1), sizes[uri])
            if problem:
                found.setdefault(f"{uri}: {problem}", set()).add(j.row)
    return [f"rows {sorted(rows)}: {msg}" for msg, rows in found.items()]


def _model_problems(jobs: list, so: dict | None) -> list[str]:
    """Each style network named by init=model: loads (torch is imported only then)."""
    rows: dict[str, set[int]] = {}
    for j in jobs:
        if j.spec.init_model:
            rows.setdefault(j.spec.init_model, set()).add(j.row)
    problems = []
    for uri, where in rows.items():
        from .stylenet.refine import load_model

        try:
            load_model(uri, so)
        except FileNotFoundError:
            problems.append(f"rows {sorted(where)}: init model {uri}: not found")
        except (NstError, OSError) as e:
            problems.append(f"rows {sorted(where)}: init {e}")
    return problems


def _weights_problems(jobs: list, so: dict | None = None) -> list[str]:
    """Each distinct weights source loaded once, checked against the deepest layer asked of it
    (seeded random weights always fit, and need no torch here)."""
    layers: dict[tuple[str, str], set[str]] = {}
    rows: dict[tuple[str, str], set[int]] = {}
    for j in (j for j in jobs if not j.spec.weights.startswith("random:")):
        key = (j.spec.weights, j.spec.backbone)
        layers.setdefault(key, set()).update(j.spec.active_layers)
        rows.setdefault(key, set()).add(j.row)
    if not layers:
        return []
    from .weights import check_covers

    problems = []
    for (w, backbone), names in layers.items():
        try:
            check_covers(w, backbone, sorted(names), so)
        except (WeightsError, ValueError, OSError) as e:
            problems.append(f"rows {sorted(rows[(w, backbone)])}: weights {w} ({backbone}): {e}")
    return problems


@app.command()
@cli_errors
def run(
    manifest_uri: Annotated[str, typer.Argument(metavar="MANIFEST")],
    out: OutOpt,
    address: AddressOpt = None,
    gpus_per_job: Annotated[
        float | None,
        typer.Option(
            help="GPUs per task; fractions pack jobs; 0 for CPU only. Default: 1 with --address "
            "(asked for even before a GPU node is up, so an autoscaler starts one), else 1 if "
            "this machine has a GPU."
        ),
    ] = None,
    gpu_wait: Annotated[
        float, typer.Option(help="Seconds to wait for a GPU to join before giving up (exit 5).")
    ] = 600.0,
    cpus_per_job: Annotated[float, typer.Option(help="CPUs per task.")] = 1.0,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Compatible jobs optimised together as one batch in one task. Default: 8 on "
            "GPU tasks, 1 on CPU tasks (a batch is no cheaper per image on a CPU).",
        ),
    ] = None,
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
    summary_json: Annotated[
        str | None,
        typer.Option(help="Write a machine-readable summary (counts, reasons, failed ids) here."),
    ] = None,
    evaluator: EvaluatorOpt = None,
    image_format: Annotated[
        ImageFormat, typer.Option(help="Format of result images (and snapshots).")
    ] = ImageFormat.PNG,
    image_quality: QualityOpt = 95,
    defaults: DefaultsOpt = None,
    allow_http: AllowHttpOpt = False,
    allow_private_hosts: AllowPrivateOpt = False,
    max_input_bytes: MaxInputBytesOpt = DEFAULT_MAX_BYTES,
) -> None:
    """Run every job of a manifest on Ray, writing images and loss traces under --out.

    Jobs already committed under --out are skipped (resume) unless their inputs changed or their
    outputs are gone; Ctrl-C stops cleanly. Exit codes: 0 done, 1 error, 3 a job failed or
    diverged (with --strict), 4 another live run holds --out, 5 GPUs asked for never came
    (--gpu-wait), 130 interrupted.

    Example: nst run manifests/demo.parquet --out results/demo
    """
    set_input_policy(allow_http, allow_private_hosts, max_input_bytes)
    from .execute import Resources, init_ray, run_jobs
    from .jobs import RunOptions

    so = _storage(storage_options, out)
    with summary_on_exit(summary_json, so, RUN_SUMMARY_KEYS) as exit_summary:
        store = _run_root(out, so)
        edition = _edition(store, defaults)
        _say_edition(edition)
        jobs = _load_jobs(manifest_uri, so, max_jobs, edition)
        with lease.held(store):
            plan = make_plan(jobs, store, force, retry_failed, so)
            console.print(f"plan: {_plan_line(plan, len(jobs))}", highlight=False)
            ev = _evaluator(evaluator, [j.spec for j in jobs])
            opts = RunOptions(
                out, max_pixels, storage_options=so, evaluator=ev,
                image_format=image_format.value, image_quality=image_quality,
            )  # fmt: skip
            res = Resources(
                gpus_per_job, cpus_per_job, max_retries, None, batch_size, bool(address), gpu_wait
            )
            if plan.todo:  # only then: a finished run never starts Ray
                init_ray(address, num_cpus, quiet=not _DEBUG["on"])
                _say_where(res)
            summary = run_jobs(jobs, opts, res, progress=progress, plan=plan, defaults=edition)
        exit_summary.code = _report_run(summary, out, strict)
        exit_summary.fields |= _summary_fields(summary)
        if summary.error:
            exit_summary.error = summary.error
        if exit_summary.code:
            raise typer.Exit(exit_summary.code)


def _report_run(summary: Summary, out: str, strict: bool) -> int:
    """Print what the run did and return its exit code (see `nst run --help`)."""
    counts = Counter(r["status"] for r in summary.rows)
    out_console.print(
        f"{summary.total} jobs ({summary.skipped} already done): "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f" · results: {storage.join(out, 'results.parquet')}"
    )
    if summary.plan is not None and summary.plan.not_retried:
        console.print(
            f"{summary.plan.not_retried} failed or diverged job(s) kept as they are: add "
            "--retry-failed to run them again (`nst status` shows their errors)",
            highlight=False,
        )
    if summary.interrupted:
        console.print("[yellow]interrupted:[/] completed jobs are kept; run again to resume")
        return 130
    if summary.error:
        console.print(f"[bold red]error:[/] {escape(summary.error)}", highlight=False)
        return 5
    return 3 if strict and any(counts.get(s) for s in BAD_STATUSES) else 0


def _say_where(res: Any) -> None:
    """One line when the embedded default falls back to the CPU."""
    from .execute import gpus_per_task

    if not res.on_cluster and res.gpus_per_job is None and gpus_per_task(res) == 0:
        console.print("no GPU on this machine: jobs run on the CPU", highlight=False)


def _existing_run(out: str, so: dict | None) -> storage.Store:
    """The store of a run that exists (status and score refuse a path that holds none)."""
    store = storage.Store(out, so)
    if not results.is_run(store):
        raise NstError(f"not a run: {out} (no jobs.parquet, results.parquet or jobs/ under it)")
    return store


def _run_root(out: str, so: dict | None) -> storage.Store:
    store = storage.Store(out, so)
    if storage.with_retries(lambda: store.fs.isfile(store.root), f"checking {out}"):
        raise NstError(f"--out {out} is a file; give a folder or URL prefix for the run")
    return store


def _plan_line(plan: Plan, total: int) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(plan.counts().items()))
    kept = total - len(plan.todo)
    return f"{len(plan.todo)} to run ({reasons or 'nothing to do'}), {kept} already done"


RUN_SUMMARY_KEYS = ("total", "already_done", "ran", "status", "failed_jobs", "diverged_jobs",
                    "not_retried", "outputs_missing", "interrupted")  # fmt: skip


def _summary_fields(summary: Summary) -> dict[str, Any]:
    """For schedulers: what ran, why, and what failed, so a cron job can alert on it."""
    plan, rows = summary.plan, summary.rows
    return {
        "total": summary.total,
        "already_done": summary.skipped,
        "ran": dict(sorted(plan.counts().items())) if plan else {},
        "status": dict(sorted(Counter(r["status"] for r in rows).items())),
        "failed_jobs": sorted(r["job_id"] for r in rows if r["status"] == Status.FAILED),
        "diverged_jobs": sorted(r["job_id"] for r in rows if r["status"] == Status.DIVERGED),
        "not_retried": plan.not_retried if plan else 0,
        "outputs_missing": plan.missing_outputs if plan else [],
        "interrupted": summary.interrupted,
    }


@app.command()
@cli_errors
def status(
    out: Annotated[str, typer.Argument(metavar="OUT")], storage_options: StorageOpt = None
) -> None:
    """Counts by status for an output root, and every failure with its error.

    Example: nst status results/demo
    """
    store = _existing_run(out, _storage(storage_options, out))
    rows, total = results.collect(store)
    counts = Counter(r["status"] for r in rows)
    counts[Status.PENDING.value] = max(0, total - len(rows))
    counts["outputs missing"] = sum(bool(r.get("outputs_missing")) for r in rows)
    out_console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if v) or "no jobs")
    bad = [r for r in rows if r["status"] in BAD_STATUSES or r.get("outputs_missing")]
    if bad:
        t = Table(title="failed, diverged and incomplete jobs")
        for col in ("job_id", "row", "status", "error"):
            t.add_column(col, overflow="fold")
        for r in bad:
            error = (
                "image or trace missing: `nst run` redoes it" if r.get("outputs_missing") else ""
            )
            t.add_row(r["job_id"], str(r.get("row")), r["status"], str(r.get("error") or error))
        out_console.print(t)


@app.command()
@cli_errors
def show(
    out: Annotated[str, typer.Argument(metavar="OUT")],
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="As `nst status` lists it.")],
    storage_options: StorageOpt = None,
) -> None:
    """A committed job's whole record as JSON: parameters, status, error, timings, inputs and
    their fingerprints, scores, node and GPU ids, library versions.

    Example: nst show results/demo 3f2a9c1e0b7d4e21
    """
    store = _existing_run(out, _storage(storage_options, out))
    try:
        layout.job_dir(job_id)  # refuses anything that is not an id
        rec = store.job_record(job_id)
    except ValueError as e:
        raise NstError(f"job {job_id}: {e}") from None
    except FileNotFoundError:
        raise NstError(f"job {job_id}: not committed in {out}") from None
    print(json.dumps(rec, indent=1, default=str))


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

    from .jobs import Job, RunOptions
    from .worker import pick_device

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

    from .worker import Inputs, extractor_for, read_image

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


@app.command()
@cli_errors
def report(
    out: OutArg,
    rows: Annotated[str | None, typer.Option(help="Axis for contact-sheet rows, or none.")] = None,
    cols: Annotated[
        str | None, typer.Option(help="Axis for contact-sheet columns, or none.")
    ] = None,
    color: Annotated[
        str | None, typer.Option(help="Axis that colours the score scatter (default: one varying).")
    ] = None,
    rank: Annotated[
        Rank, typer.Option(help="Top jobs by: style, content, or pareto (balanced front first).")
    ] = Rank.PARETO,
    top: Annotated[int, typer.Option(help="How many top jobs to show.")] = 12,
    max_tiles: Annotated[
        int, typer.Option(help="Contact-sheet tiles above which each cell shows its best only.")
    ] = 300,
    compare: Annotated[
        str | None,
        typer.Option(
            help="For an `nst apply` run: an `nst run` root with the same photos, to "
            "compare network, optimisation and refinement (init=model:)."
        ),
    ] = None,
    storage_options: StorageOpt = None,
) -> None:
    """Write OUT/report.html: score scatter with the Pareto front, top jobs, effect of each axis,
    contact sheet by grid axes, loss curves by axis, the jobs table. For an `nst apply` run:
    the network, the score distribution, photos beside their outputs, failures.

    Example: nst report results/seed_study --rows tag_experiment --cols none --rank style
    """
    from .report import ReportOptions, write_report
    from .stylenet.apply_report import is_apply_run, write_apply_report

    so = _storage(storage_options, out)
    if is_apply_run(storage.Store(out, so)):
        url, head = write_apply_report(out, so, compare, min(max_tiles, 200))
        out_console.print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in head.items()))  # fmt: skip
    else:
        opts = ReportOptions(rows, cols, color, rank, top, max_tiles)
        url = write_report(out, so, opts, console=out_console)
    out_console.print(f"report: {url}")


@app.command()
@cli_errors
def layers(
    backbone: Annotated[str, typer.Argument(help="vgg16 or vgg19.")] = "vgg19",
) -> None:
    """Every layer name of a backbone, with its channels and resolution (for content_layers,
    style_layers and the evaluator).

    Example: nst layers vgg16
    """
    from nst_ops.layers import layer_table

    try:
        table = layer_table(backbone)
    except ValueError as e:
        raise NstError(str(e)) from None
    t = Table(title=f"{backbone} layers (scale: feature map size / input size)")
    for col in ("layer", "kind", "channels", "scale"):
        t.add_column(col)
    for name, kind, channels, scale in table:
        t.add_row(name, kind, str(channels), f"1/{scale}")
    out_console.print(t)


@app.command()
@cli_errors
def score(
    out: OutArg,
    evaluator: EvaluatorOpt = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).")
    ] = None,
    max_pixels: MaxPixelsOpt = images.DEFAULT_MAX_PIXELS,
    storage_options: StorageOpt = None,
) -> None:
    """Score every committed result again under one evaluator, without optimising again.

    The evaluator defaults to the one results.parquet records (else the default rule); fields
    given with --evaluator replace its fields. Each job's record (result.parquet) and
    results.parquet get the new scores.

    Example: nst score results/demo --evaluator '{"pooling": "avg"}'
    """
    import torch

    from nst_ops.evaluator import Evaluator

    from .scoring import rescore, spec_of
    from .worker import pick_device

    store = _existing_run(out, _storage(storage_options, out))
    recorded = results.evaluator_of(store)
    rows = list(store.committed().values())
    base = _evaluator(evaluator, [spec_of(r) for r in rows], recorded)
    if base is None:
        raise NstError("--evaluator none: nothing to score with")
    ev = Evaluator.from_dict(base)
    dev = torch.device(device) if device else pick_device()
    scored = rescore(store, rows, ev, dev, max_pixels)  # the rows listed above: one listing
    results.merge_scores(store, scored, base)
    n = sum(r.get("score_style") is not None for r in scored)
    out_console.print(f"scored {n} of {len(scored)} committed jobs under evaluator {ev.key}")


from .stylenet import commands as _stylenet_commands  # noqa: E402, F401  (its commands)

if __name__ == "__main__":  # python -m pipeline.cli
    app()
