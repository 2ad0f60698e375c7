"""Commands that run a manifest and read a run back: run, status, show."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nst_ops.vocab import BAD_STATUSES, Status
from pipeline.cli.common import (
    _DEBUG,
    AddressOpt,
    AllowHttpOpt,
    AllowPrivateOpt,
    DefaultsOpt,
    EvaluatorOpt,
    ImageFormat,
    MaxInputBytesOpt,
    MaxJobsOpt,
    OutOpt,
    QualityOpt,
    StorageOpt,
    _edition,
    _evaluator,
    _existing_run,
    _load_jobs,
    _plan_line,
    _run_root,
    _say_edition,
    _storage,
    absolute,
    app,
    cli_errors,
    console,
    out_console,
    set_input_policy,
)
from pipeline.cli.exit_summary import summary_on_exit
from pipeline.errors import NstError
from pipeline.jobs.grid import DEFAULT_MAX_JOBS
from pipeline.jobs.plan import make_plan
from pipeline.run import images, lease
from pipeline.store import layout, results, root_kind, storage
from pipeline.store.input_policy import DEFAULT_MAX_BYTES
from pipeline.store.root_kind import RootKind

if TYPE_CHECKING:
    from pipeline.run.scheduler import Summary


RUN_SUMMARY_KEYS = ("total", "already_done", "ran", "status", "failed_jobs", "diverged_jobs",
                    "not_retried", "outputs_missing", "interrupted")  # fmt: skip


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
    from pipeline.run.options import RunOptions
    from pipeline.run.scheduler import Resources, init_ray, run_jobs

    out, manifest_uri = absolute(out), absolute(manifest_uri)
    so = _storage(storage_options, out)
    with summary_on_exit(summary_json, so, RUN_SUMMARY_KEYS) as exit_summary:
        store = _run_root(out, so)
        edition = _edition(store, defaults)
        _say_edition(edition)
        jobs = _load_jobs(manifest_uri, so, max_jobs, edition)
        with lease.held(store):
            root_kind.claim(store, RootKind.RUN)
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
    from pipeline.run.scheduler import gpus_per_task

    if not res.on_cluster and res.gpus_per_job is None and gpus_per_task(res) == 0:
        console.print("no GPU on this machine: jobs run on the CPU", highlight=False)


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
    so = _storage(storage_options, out)
    root = storage.Store(out, so)
    kind = root_kind.detect(root)
    if kind is RootKind.APPLY:
        return _apply_status(root)
    if kind is RootKind.TRAIN:
        return _train_status(root)
    store = _existing_run(out, so)
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


def _apply_status(store: storage.Store) -> None:
    """An `nst apply` root: images by status (the parts of a live or killed run included)."""
    from pipeline.stylenet import apply_record

    rows, _ = apply_record.read_all(store)
    counts = Counter(rows.column("status").to_pylist())
    out_console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no images")
    bad = [r for r in rows.to_pylist() if r["status"] != "ok"]
    if bad:
        t = Table(title="failed images")
        for col in ("input", "error"):
            t.add_column(col, overflow="fold")
        for r in bad:
            t.add_row(r["input"], str(r.get("error") or ""))
        out_console.print(t)


def _train_status(store: storage.Store) -> None:
    """An `nst train` root: how far the training is, and whether its model is written."""
    from pipeline.stylenet import layout as train_layout
    from pipeline.stylenet.checkpoints import latest_checkpoint

    asked = json.loads(store.get(train_layout.TRAIN_SETTINGS)).get("steps")
    model = "model.pt written" if store.exists(train_layout.MODEL) else "no model.pt yet"
    out_console.print(f"training: step {latest_checkpoint(store)} of {asked} · {model}")


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
