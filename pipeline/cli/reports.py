"""Commands over a finished run's results: report, score."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.common import (
    EvaluatorOpt,
    MaxPixelsOpt,
    OutArg,
    StorageOpt,
    _evaluator,
    _existing_run,
    _storage,
    app,
    cli_errors,
    out_console,
)
from pipeline.errors import NstError
from pipeline.report.ranking import Rank
from pipeline.run import images
from pipeline.store import results, storage


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
    from pipeline.report.page import ReportOptions, write_report
    from pipeline.stylenet.apply_report import is_apply_run, write_apply_report

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
    from pipeline.run.devices import pick_device
    from pipeline.run.scoring import rescore, spec_of

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
