"""What every `nst` command shares: the Typer app, the consoles, the common options, the
one-line error handler and `--set` parsing. Command modules (pipeline.cli, pipeline.stylenet.
commands) import from here, never from each other."""

from __future__ import annotations

import difflib
import functools
import json
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from nst_ops.layer_table import WeightsError
from nst_ops.presets import (
    EDITIONS,
    LATEST_DEFAULTS,
    PHOTO_START_FROM,
)
from nst_ops.spec import JobSpec, SpecError
from pipeline.errors import NstError
from pipeline.jobs import manifest
from pipeline.jobs.grid import expand
from pipeline.jobs.plan import Plan
from pipeline.store import results, root_kind, storage
from pipeline.store.root_kind import RootKind

QUICK_START = (
    "nst make-manifest m.parquet --content manifests/images/content "
    "--style manifests/images/style "
    "--set weights=manifests/weights/vgg19_tv_features_conv1_1-conv3_1.pth "
    "--set content_layers=relu3_1 --set style_layers=relu1_1,relu2_1,relu3_1 "
    "--set init=content --set size=128 --set iterations=100 "
    "&& nst run m.parquet --out results/quick"
)

app = typer.Typer(
    help="Batch Gatys-style neural style transfer and style reconstruction on Ray.\n\n"
    f"Quick start (offline, from a clone of the repository; the shipped real VGG19 weights):\n\n"
    f"{QUICK_START}\n\n"
    "Every job parameter, its default and allowed values: nst params",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help is plain text: brackets such as [values] must survive
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
        help="JSON of fsspec options for the output's protocol (and inputs on it), e.g. an S3 "
        'endpoint_url; or per protocol: {"s3": {...}, "gs": {...}}. Never written to outputs.',
    ),
]
AllowHttpOpt = Annotated[
    bool,
    typer.Option(
        "--allow-http", envvar="NST_ALLOW_HTTP", help="Allow http(s) inputs (public hosts only)."
    ),
]
AllowPrivateOpt = Annotated[
    bool,
    typer.Option(
        "--allow-private-hosts",
        envvar="NST_ALLOW_PRIVATE_HOSTS",
        help="With --allow-http: also loopback, link-local and private addresses.",
    ),
]
MaxInputBytesOpt = Annotated[
    int,
    typer.Option(
        "--max-input-bytes",
        envvar="NST_MAX_INPUT_BYTES",
        min=1,
        help="Refuse input images larger than this (bytes; weights and models: 4 GiB).",
    ),
]


def absolute(uri: str) -> str:
    """A local path made absolute (``file://``, ``..``, ``~`` resolved), other URLs as they
    are. Every command does this to every path it takes before anything reaches Ray: Ray
    Train's workers run in Ray's session folder, where a relative path names another file."""
    if storage.protocol_of(uri) != "file" or not uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri.split("://", 1)[-1]))


def set_input_policy(allow_http: bool, allow_private: bool, max_bytes: int) -> None:
    """This command's input policy, for itself and the Ray workers it starts."""
    from pipeline.store.input_policy import InputPolicy

    InputPolicy(allow_http, allow_private, max_bytes).export()


AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster: 'auto' or ray://host:10001. Default: embedded.")
]
MaxJobsOpt = Annotated[int, typer.Option(help="Refuse manifests that expand past this.")]
MaxPixelsOpt = Annotated[int, typer.Option(help="Refuse input images with more pixels.")]
DefaultsOpt = Annotated[
    int | None,
    typer.Option(
        "--defaults",
        help="Defaults edition for what a row does not give: 1 (runs before November 2026), 2 "
        "(amp=auto for L-BFGS from 256 px), 3 (also restarts=2 for L-BFGS) or "
        f"{LATEST_DEFAULTS} (latest: also init=content for L-BFGS transfers from "
        f"{PHOTO_START_FROM} px). Default: the edition the run at --out started with, the latest "
        "for a new run.",
    ),
]
ListOpt = Annotated[list[str] | None, typer.Option(help="Folder, glob or file; repeatable.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="NAME=V1,V2 (several values make a grid axis); `nst params` lists names."
    ),
]
OutArg = Annotated[str, typer.Argument(metavar="OUT", help="Output root of a run.")]
QualityOpt = Annotated[
    int, typer.Option(min=1, max=100, help="JPEG/WebP quality (1-100); PNG/TIFF are lossless.")
]


class ImageFormat(str, Enum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    TIFF = "tiff"


EvaluatorOpt = Annotated[
    str | None,
    typer.Option(
        help="What scores every result, the same for all jobs: JSON with any of backbone, "
        "weights, pooling, content_layer, style_layers, or 'none'. Default: the backbone and "
        "weights most jobs use, content relu3_1, style relu1_1,relu2_1,relu3_1."
    ),
]


def _evaluator(
    text: str | None, specs: list[JobSpec], recorded: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The run's evaluator as a dict (what workers get and results.parquet records): fields
    given as JSON over the recorded evaluator, else over the default for these jobs."""
    from nst_ops.evaluator import Evaluator, default_evaluator

    if text is not None and text.strip().lower() == "none":
        return None
    base = recorded or default_evaluator(specs).to_dict()
    try:
        given = json.loads(text) if text else {}
        if not isinstance(given, dict):
            raise ValueError("give a JSON object")
        return Evaluator.from_dict({**base, **given}).to_dict()
    except (ValueError, TypeError) as e:
        raise NstError(f"--evaluator: {e}") from None


PresetOpt = Annotated[
    str | None,
    typer.Option(
        help="Fill every parameter not given with a preset's values: 'study' (the seed study's "
        "settings; see README)."
    ),
]


def cli_errors(fn: Callable) -> Callable:
    """Print user errors as one line and exit 1; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            known = (NstError, SpecError, WeightsError, ValueError, OSError)
            if _DEBUG["on"] or not (isinstance(e, known) or storage.client_error(e)):
                raise
            text = str(e)
            if not isinstance(e, known):  # a storage client's own exception: its first line
                text = f"storage: {type(e).__name__}: {(text.strip().splitlines() or [''])[0]}"
            console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(e, "exit_code", 1)) from None

    return wrapper


@app.callback()
def main(debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False) -> None:
    _DEBUG["on"] = debug


def _storage(opts: str | None, primary: str) -> dict | None:
    """--storage-options for a command whose main location is ``primary`` (its output, or
    its manifest): one JSON object of fsspec options applies to ``primary``'s protocol only
    (inputs on the same protocol share it); ``{"s3": {...}, "gs": {...}}`` gives each
    protocol its own."""
    if not opts:
        return None
    try:
        value = json.loads(opts)
    except ValueError as e:
        raise NstError(f"--storage-options is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise NstError("--storage-options must be a JSON object")
    return storage.per_protocol(value, primary)


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
    _check_name(name, "--set: ")
    if not text:
        raise NstError(f"--set {name}=: empty value (leave the option out for the default)")
    if manifest.PARAMS[name].is_seq:
        values = [[_scalar(v) for v in part.split(",") if v] for part in text.split("|")]
    else:
        if any(not v.strip() for v in text.split(",")):
            raise NstError(f"--set {name}={text}: empty value in the list")
        values = [_scalar(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def _params(sets: list[str], grid: Path | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if grid:
        loaded = yaml.safe_load(grid.read_text())
        if not isinstance(loaded, dict):
            raise NstError(f"{grid}: expected a mapping of parameter -> value or list of values")
        for k in loaded:
            _check_name(k, f"{grid}: ")
        params.update({k: _numbers(k, v) for k, v in loaded.items()})
    for item in sets:
        if "=" not in item:
            raise NstError(f"--set {item!r}: expected NAME=VALUE[,VALUE...]")
        name, text = item.split("=", 1)
        params[name.strip()] = parse_value(name.strip(), text.strip())
    return params


def _check_name(name: str, where: str = "") -> None:
    """An unknown parameter name, with the closest known one."""
    if name not in manifest.PARAMS:
        close = difflib.get_close_matches(name, manifest.PARAMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see `nst params`)"
        raise NstError(f"{where}unknown parameter {name!r}{hint}")


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


def _plan_line(plan: Plan, total: int) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(plan.counts().items()))
    kept = total - len(plan.todo)
    return f"{len(plan.todo)} to run ({reasons or 'nothing to do'}), {kept} already done"


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
    root_kind.check(store, RootKind.RUN)
    return store
