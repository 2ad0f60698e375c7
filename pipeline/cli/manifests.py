"""Commands about manifests and parameters, before anything runs: make-manifest, params,
plan, validate, layers."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nst_ops.layer_table import WeightsError
from nst_ops.presets import (
    AMP_FROM,
    FIRST_DEFAULTS,
    LATEST_DEFAULTS,
    PHOTO_START_FROM,
    PRESETS,
)
from nst_ops.spec import PARAM_HELP, JobSpec, choices
from nst_ops.vocab import RowMode
from pipeline.cli.common import (
    AllowHttpOpt,
    AllowPrivateOpt,
    DefaultsOpt,
    ListOpt,
    MaxInputBytesOpt,
    MaxJobsOpt,
    PresetOpt,
    SetOpt,
    StorageOpt,
    _edition,
    _load_jobs,
    _params,
    _plan_line,
    _say_edition,
    _storage,
    app,
    cli_errors,
    console,
    out_console,
    set_input_policy,
)
from pipeline.errors import NstError
from pipeline.jobs import manifest
from pipeline.jobs.grid import DEFAULT_MAX_JOBS, expand
from pipeline.jobs.plan import make_plan
from pipeline.run import images, memory_check
from pipeline.store import storage
from pipeline.store.input_policy import DEFAULT_MAX_BYTES


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
        f"(restarts=2), from {AMP_FROM} px run with amp=auto, and transfers from "
        f"{PHOTO_START_FROM} px start from the photo (init=content). See --defaults on nst run."
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
    if top := memory_check.largest(jobs):
        out_console.print(
            f"peak memory per job: up to ~{top[1] / 2**30:.1f} GiB (row {top[0].row}, size "
            f"{top[0].spec.size}); `nst validate --memory GIB` checks it fits"
        )


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
    memory: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="GiB one job may use (a worker's RAM, or with --gpu its GPU's memory); "
            "default: this machine's memory.",
        ),
    ] = None,
    gpu: Annotated[
        bool,
        typer.Option(
            "--gpu",
            help="The jobs run on GPUs: --memory is one GPU's, which holds neither the worker "
            "process nor an L-BFGS history kept in host memory (history_device=host).",
        ),
    ] = False,
) -> None:
    """Check the schema, every row, that every input exists and decodes (cheaply), and that
    every job's estimated peak memory fits a worker.

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
        found = images.probe_input(uri, so, max_pixels, attempts=2)
        if isinstance(found, str):
            return found
        sizes[uri] = (found[1], found[0])
        return None

    with ThreadPoolExecutor(8) as pool:
        problems = [
            f"rows {sorted(rows_of[u])}: {msg}"
            for u, msg in zip(rows_of, pool.map(check, rows_of), strict=True)
            if msg
        ]
    problems += _size_problems(jobs, sizes)
    budget = int(memory * 2**30) if memory else memory_check.host_memory()
    problems += _memory_problems(jobs, budget, gpu)
    problems += _weights_problems(jobs, so) + _model_problems(jobs, so)
    for p in problems:
        console.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
    if problems:
        raise NstError(f"validation failed: {len(problems)} problem(s) in {len(jobs)} jobs "
                       f"({len(rows_of)} inputs)")  # fmt: skip
    n_weights = len({(j.spec.weights, j.spec.backbone) for j in jobs})
    peak = memory_check.largest(jobs, gpu)
    most = f", peak memory up to {peak[1] / 2**30:.1f} GiB" if peak else ""
    out_console.print(
        f"ok: {len(jobs)} jobs, {len(rows_of)} inputs readable, {n_weights} weights source(s) "
        f"fit{most} (of {budget / 2**30:.1f} GiB{' of GPU memory' if gpu else ''})"
    )


def _size_problems(jobs: list, sizes: dict[str, tuple[int, int]]) -> list[str]:
    """Jobs whose output (the content's aspect at the job's size, every multires level), or
    whose style at its own scale, has no feature map at the deepest layer."""
    from nst_ops.layer_table import deepest, size_problem

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


def _memory_problems(jobs: list, budget: int, on_gpu: bool) -> list[str]:
    """Jobs whose estimated peak exceeds ``budget``, grouped by what they would need."""
    found: dict[str, list[int]] = {}
    for j in jobs:
        try:
            memory_check.check_fits(j.spec, budget, on_gpu, label="memory: ")
        except memory_check.TooLarge as e:
            found.setdefault(str(e), []).append(j.row)
    return [f"rows {sorted(set(rows))}: {msg}" for msg, rows in found.items()]


def _model_problems(jobs: list, so: dict | None) -> list[str]:
    """Each style network named by init=model: loads (torch is imported only then)."""
    rows: dict[str, set[int]] = {}
    for j in jobs:
        if j.spec.init_model:
            rows.setdefault(j.spec.init_model, set()).add(j.row)
    problems = []
    for uri, where in rows.items():
        from pipeline.run.model_init import load_model

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
    from pipeline.run.weights import check_covers

    problems = []
    for (w, backbone), names in layers.items():
        try:
            check_covers(w, backbone, sorted(names), so)
        except (WeightsError, ValueError, OSError) as e:
            problems.append(f"rows {sorted(rows[(w, backbone)])}: weights {w} ({backbone}): {e}")
    return problems


@app.command()
@cli_errors
def layers(
    backbone: Annotated[str, typer.Argument(help="vgg16 or vgg19.")] = "vgg19",
) -> None:
    """Every layer name of a backbone, with its channels and resolution (for content_layers,
    style_layers and the evaluator).

    Example: nst layers vgg16
    """
    from nst_ops.layer_table import layer_table

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
