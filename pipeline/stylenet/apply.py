"""`nst apply`: a trained network over a collection, on Ray Data.

The driver lists the collection once (a recursive listing: one LIST per 1,000 keys on S3),
reads what earlier runs committed (results.parquet and part files), and streams only the
photos that are new, changed (fingerprint), failed with --retry-failed, made by another model,
or whose output is gone, through ``map_batches`` on a pool of actors that each hold the
network. Rows stream back in completion order; the driver keeps counts, not rows.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import NstError
from pipeline.jobs.manifest import IMAGE_SUFFIXES
from pipeline.store import input_policy, storage
from pipeline.stylenet import apply_record, layout
from pipeline.stylenet.apply_worker import ApplyOptions, Stylizer


@dataclass
class ApplySummary:
    total: int
    todo: int
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    # scored outputs: input -> the job's loss of the output over that of the unstyled photo
    kept_of_photo: dict[str, float] = field(default_factory=dict)
    model_gap: dict[str, Any] | None = None  # the model's held-aside gap closure (metadata)


def list_collection(uri: str, so: dict | None, exclude: str | None = None) -> pa.Table:
    """input (path under the root), input_uri, input_fingerprint of every image below a
    folder (recursively) or matching a glob, sorted by path; nothing under ``exclude`` (the
    apply's own output root, when it lies inside the collection). The input policy is checked
    before the first request; an empty collection is refused (NstError)."""
    input_policy.check_source(uri)
    fs, path = storage.filesystem(uri, so)
    if storage.with_retries(lambda: fs.isdir(path), f"listing {uri}"):  # `[` in a folder name
        found, root = fs.find(path, detail=True), path.rstrip("/")
    elif any(ch in path for ch in "*?["):
        found = fs.glob(path, detail=True)
        root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
    else:
        raise NstError(f"--input {uri}: no such folder (give a folder or a glob of images)")
    skip = exclude.rstrip("/") + "/" if exclude else None
    names = sorted(
        p
        for p, info in found.items()
        if p.lower().endswith(IMAGE_SUFFIXES)
        and info.get("type") != "directory"
        and not (skip and fs.unstrip_protocol(p).startswith(skip))
    )
    if not names:
        raise NstError(f"--input {uri}: no images there ({', '.join(IMAGE_SUFFIXES)})")
    return pa.table(
        {
            "input": [p[len(root) :].lstrip("/") for p in names],
            "input_uri": [fs.unstrip_protocol(p) for p in names],
            "input_fingerprint": [storage.fingerprint(found[p]) for p in names],
        }
    )


def check_clashes(listing: pa.Table, ext: str) -> None:
    """Refuse a collection where two inputs would write one output (a.jpg and a.png, b.JPG and
    b.jpg): decided before any work, since one of them would be lost. Output names compare
    case-blind, as they would on a case-insensitive disk."""
    by_output: dict[str, list[str]] = {}
    for rel in listing.column("input").to_pylist():
        by_output.setdefault(layout.output_image(rel, ext).casefold(), []).append(rel)
    clashes = [v for v in by_output.values() if len(v) > 1]
    if clashes:
        first = " and ".join(clashes[0])
        more = f" (and {len(clashes) - 1} more such group(s))" if len(clashes) > 1 else ""
        raise NstError(
            f"--input: {first} would both be written as "
            f"{layout.output_image(clashes[0][0], ext)}{more}; outputs keep the input's path "
            "and stem, so rename or move one of each (nothing was written)"
        )


REASONS = ("new", "input changed", "other model", "output missing", "retry failed")


def plan(
    listing: pa.Table, done: pa.Table, outputs: pa.Array, model_fp: str, retry_failed: bool
) -> tuple[pa.Table, Counter[str]]:
    """The listed images to (re)do, and why: columnar (an Arrow join, no row objects), so a
    collection of 10^6 photos plans in seconds and in the memory of its columns."""
    prev = done.select(["input", "input_fingerprint", "model_fingerprint", "status", "output"])
    prev = prev.rename_columns(["input", "prev_fp", "prev_model", "prev_status", "prev_output"])
    j = listing.join(prev, "input", join_type="left outer").sort_by("input")

    def yes(mask: Any) -> Any:
        return pc.fill_null(mask, False)

    new = pc.is_null(j.column("prev_fp"))
    changed = yes(pc.not_equal(j.column("prev_fp"), j.column("input_fingerprint")))
    other = pc.and_(pc.invert(changed), yes(pc.not_equal(j.column("prev_model"), model_fp)))
    settled = pc.invert(pc.or_(pc.or_(new, changed), other))
    ok = yes(pc.equal(j.column("prev_status"), "ok"))
    gone = pc.invert(pc.is_in(j.column("prev_output"), value_set=outputs))
    missing = pc.and_(pc.and_(settled, ok), gone)
    retry = pc.and_(pc.and_(settled, pc.invert(ok)), pa.scalar(retry_failed))
    masks = dict(zip(REASONS, (new, changed, other, missing, retry), strict=True))
    todo = functools.reduce(pc.or_, masks.values())
    reasons = Counter({k: n for k, m in masks.items() if (n := pc.sum(m).as_py() or 0)})
    return j.filter(todo).select(listing.column_names), reasons


def existing_outputs(store: storage.Store) -> pa.Array:
    """Every output under images/ (one recursive listing)."""
    base = storage.join(store.root, layout.IMAGES)
    try:
        found = store.fs.find(base)
    except FileNotFoundError:
        found = []
    return pa.array([f"{layout.IMAGES}/{p[len(base) :].lstrip('/')}" for p in found], pa.string())


def check_score(score: str) -> None:
    if score not in ("all", "none") and not score.isdigit():
        raise NstError(f"--score {score!r}: give all, none or a number of images")


def score_flags(n: int, score: str, seed: int = 0) -> list[bool]:
    """Which of n images to score: all, none, or a seeded random sample of N."""
    check_score(score)
    if score == "all":
        return [True] * n
    if score == "none":
        return [False] * n
    chosen = set(random.Random(seed).sample(range(n), min(n, int(score))))
    return [i in chosen for i in range(n)]


def run_apply(
    opts: ApplyOptions, listing: pa.Table, model_fp: str, batch_size: int, workers: int | None,
    retry_failed: bool, score: str, progress: Any, start: Callable[[], float],
) -> ApplySummary:  # fmt: skip
    """Plan, then stream what is to do: ``start`` (recording the run and starting Ray, which
    returns the GPUs per actor) is called only when there is something to do."""
    store = storage.Store(opts.out, opts.storage_options)
    done, _ = apply_record.read_all(store)
    todo, reasons = plan(listing, done, existing_outputs(store), model_fp, retry_failed)
    summary = ApplySummary(listing.num_rows, todo.num_rows, reasons=reasons)
    progress.total = todo.num_rows
    progress.bar.update(progress.task, total=todo.num_rows)
    if todo.num_rows:
        todo = todo.append_column("score", pa.array(score_flags(todo.num_rows, score)))
        try:
            gpus = start()
            _stream(todo, opts, batch_size, workers, gpus, summary, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
    final = apply_record.compact(store, listing.column("input"))
    summary.counts = Counter(final.column("status").to_pylist())
    bad = final.filter(pc.equal(final.column("status"), "failed"))
    summary.failed = bad.column("input").to_pylist()
    summary.kept_of_photo = kept_of_photo(
        final.select(["input", "objective", "objective_photo"]).to_pylist()
    )
    return summary


def kept_of_photo(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """input -> objective / objective_photo of every scored output (1: no better than the
    unstyled photo; the optimiser reaches ~0.2 on real pairs)."""
    return {
        r["input"]: r["objective"] / r["objective_photo"]
        for r in rows
        if r.get("objective") is not None and r.get("objective_photo")
    }


def _stream(
    todo: pa.Table, opts: ApplyOptions, batch_size: int, workers: int | None, gpus: float,
    summary: ApplySummary, progress: Any,
) -> None:  # fmt: skip
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    n_workers = workers or _default_workers(gpus)
    ds = ray.data.from_arrow(todo).repartition(max(1, -(-todo.num_rows // batch_size)))
    out = ds.map_batches(
        Stylizer, fn_constructor_args=(opts,), batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_workers),
        num_gpus=gpus, num_cpus=1,
    )  # fmt: skip
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        assert isinstance(batch, pa.Table)
        progress.update(batch.to_pylist(), 0)


def _default_workers(gpus: float) -> int:
    import ray

    res = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(res.get("GPU", 1) / gpus))
    return max(1, int(res.get("CPU", 1)))
