"""Run one job: read inputs through fsspec, optimise, write outputs, commit.

Application failures (bad image, divergence, bad weights) become a committed ``failed`` or
``diverged`` record and never raise, so one bad job cannot stop a run. Only the death of the
process itself escapes, which is what Ray's ``max_retries`` is for.
"""

from __future__ import annotations

import contextlib
import platform
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import torch

from nst_ops.evaluator import Evaluator
from nst_ops.loop import Outcome
from nst_ops.spec import batch_key
from nst_ops.tiles import RunnerFactory
from nst_ops.transfer import InputKeys, output_hw, stylize_batch
from nst_ops.vocab import Status
from pipeline.errors import InputError, NstError
from pipeline.jobs.job import Job
from pipeline.run import images, memory_check, model_init, scoring
from pipeline.run.devices import amp_enabled, extractor_for, pick_device
from pipeline.run.options import RunOptions
from pipeline.run.tensor_lru import TensorLRU
from pipeline.store import layout, record, storage

# Exceptions whose message is the whole story for the user (no traceback in the record).
EXPECTED = (NstError, ValueError)


def _trace_table(trace: list[dict]) -> pa.Table:
    return (
        pa.Table.from_pylist(trace) if trace else pa.table({"iteration": pa.array([], pa.int64())})
    )


_TARGETS = TensorLRU(max_bytes=512 * 2**20)


def _fail(error: Exception) -> dict[str, Any]:
    if isinstance(error, EXPECTED):
        return {"error": str(error)}
    return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=8)}


def run_job(
    job: Job,
    opts: RunOptions,
    device: torch.device | None = None,
    placement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one job and return its result row (also written as the commit marker)."""
    return run_group([job], opts, device, placement)[0]


Ready = tuple[Job, torch.Tensor | None, list[torch.Tensor]]
Scorer = Callable[[bytes], dict[str, Any]]


class Inputs:
    """Each input read and decoded once per task, with its fingerprint taken before reading."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.decoded: dict[str, torch.Tensor] = {}
        self.prints: dict[str, str | None] = {}
        self.starts: dict[str, torch.Tensor] = {}  # job id -> its network start (init=model:)

    def image(self, uri: str) -> torch.Tensor:
        if uri not in self.decoded:
            self.decoded[uri] = read_image(uri, self.opts, self.prints)
        return self.decoded[uri]

    def of(self, job: Job) -> Ready:
        uri = job.content_uri
        content = self.image(uri) if uri and job.spec.uses_content else None
        if job.spec.init_image:
            self.image(job.spec.init_image)  # read now: a missing start image fails the job
        if job.spec.init_model and content is not None:
            self.starts[job.id] = self.model_start(job.spec.init_model, content, job.spec.size)
        styles = [self.image(u) for u in job.style_uris]
        h, w = output_hw(job.spec, content, styles)
        if h * w > self.opts.max_pixels:  # the output is bounded as the inputs are
            raise InputError(
                f"the output at size {job.spec.size} would be {w}x{h} = {h * w / 1e6:.1f} MP, "
                f"above --max-pixels {self.opts.max_pixels:,}"
            )
        return job, content, styles

    def model_start(self, uri: str, content: torch.Tensor, size: int) -> torch.Tensor:
        """A trained network's output for the content (a bad model file fails the job)."""
        self.prints[uri] = storage.fingerprint_of(uri, self.opts.storage_options)
        model = model_init.load_model(uri, self.opts.storage_options)
        return model_init.network_start(model, content, size)

    def start(self, job: Job) -> torch.Tensor | None:
        if job.spec.init_model:
            return self.starts[job.id]
        return self.image(job.spec.init_image) if job.spec.init_image else None

    def record(self, job: Job) -> dict[str, Any]:
        uris = [u for u in job.input_uris if self.prints.get(u)]
        return {"inputs": [{"uri": u, "fingerprint": self.prints[u]} for u in uris]}

    def cache_keys(self, job: Job) -> InputKeys:
        """Targets are cached by URI *and* fingerprint: new bytes at a URI are new targets."""

        def key(uri: str | None) -> tuple[str, str] | None:
            fp = self.prints.get(uri) if uri else None
            return (uri, fp) if uri and fp else None

        return key(job.content_uri), [key(u) for u in job.style_uris]


def run_group(
    jobs: Sequence[Job],
    opts: RunOptions,
    device: torch.device | None = None,
    placement: dict[str, Any] | None = None,
    batch_size: int = 1,
) -> list[dict[str, Any]]:
    """Run jobs in one process: inputs read once, targets cached, and compatible jobs of equal
    output size optimised together in batches of up to ``batch_size``.

    Each job is committed on its own; a failure (input, divergence, bug) is that job's (or, for an
    unexpected error inside a batch, that batch's) alone. ``placement`` (e.g. the GPU ids Ray
    assigned) is recorded in every row.
    """
    device = device or pick_device()
    started = time.time()
    store = storage.Store(opts.out, opts.storage_options, opts.storage_attempts)
    extra = {"device": str(device), "host": platform.node(), **(placement or {})}
    rows: dict[str, dict[str, Any]] = {}
    ready: list[Ready] = []
    inputs = Inputs(opts)
    for job in jobs:
        try:
            memory_check.check_on_device(job.spec, device)  # a failed row, never an OOM kill
            ready.append(inputs.of(job))
        except Exception as e:  # noqa: BLE001  (recorded on the job, never fatal to the run)
            info = {**extra, **inputs.record(job), **_fail(e)}
            rows[job.id] = commit_job(job, None, info, started, store)
    for batch in _batches(ready, batch_size):
        rows.update(_run_batch(batch, device, inputs, extra, store))
    return [rows[j.id] for j in jobs]


def _run_batch(
    batch: list[Ready],
    device: torch.device,
    inputs: Inputs,
    extra: dict[str, Any],
    store: storage.Store,
) -> dict[str, dict[str, Any]]:
    """Optimise one batch and commit each of its jobs; an unexpected error fails the batch.
    Out of device memory, the batch is split in halves and each half tried again: the GPU
    default of 8 jobs per task fits a large card but not every image size on every card, and a
    job fails for memory only when it does not fit alone."""
    t0 = time.time()
    jobs = [j for j, _, _ in batch]
    outcomes: list[Outcome] | None
    try:
        with _tile_workers(jobs[0], inputs.opts) as runner:
            outcomes = stylize_batch(
                [j.spec for j in jobs],
                extractor_for(jobs[0], device, inputs.opts.storage_options),
                [c for _, c, _ in batch],
                [s for _, _, s in batch],
                _TARGETS,
                [inputs.cache_keys(j) for j in jobs],
                inits=[inputs.start(j) for j in jobs],
                tile_runner=runner,
            )
    except Exception as e:  # noqa: BLE001
        if not (isinstance(e, torch.cuda.OutOfMemoryError) and len(batch) > 1):
            return {j.id: commit_job(j, None, {**extra, **inputs.record(j), **_fail(e)}, t0, store)
                    for j in jobs}  # fmt: skip
        outcomes = None  # split below, outside the handler: its traceback holds the failed tensors
    if outcomes is None:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the failed attempt's blocks, so the halves can have them
        half = len(batch) // 2
        rows = _run_batch(batch[:half], device, inputs, extra, store)
        return rows | _run_batch(batch[half:], device, inputs, extra, store)
    return {
        item[0].id: commit_job(
            item[0],
            o,
            {
                **extra,
                **inputs.record(item[0]),
                "batch_size": len(batch),
                "amp_used": amp_enabled(item[0].spec.amp, device),
            },  # fmt: skip
            t0,
            store,
            _scorer(inputs.opts, item, device),
            (inputs.opts.image_format, inputs.opts.image_quality),
        )
        for item, o in zip(batch, outcomes, strict=True)
    }


@contextlib.contextmanager
def _tile_workers(job: Job, opts: RunOptions) -> Iterator[RunnerFactory | None]:
    """The helpers of a ``workers_per_job`` job (imported only then: ``nst transfer`` runs
    without Ray and refuses such jobs)."""
    if job.spec.workers_per_job == 1:
        yield None
        return
    from pipeline.run import tile_workers

    with tile_workers.helpers_for(job, opts.storage_options) as helpers:
        yield tile_workers.runner_factory(helpers)


def _scorer(opts: RunOptions, item: Ready, device: torch.device) -> Scorer | None:
    """Scores a result's PNG under the run's evaluator (none: not scored)."""
    if opts.evaluator is None:
        return None
    ev = Evaluator.from_dict(opts.evaluator)
    job, content, styles = item
    so = opts.storage_options
    return lambda png: scoring.score_image(ev, png, job.spec, content, styles, device, so)


def _batches(ready: list[Ready], batch_size: int) -> Iterator[list[Ready]]:
    """Groups sharing a batch key and output size (unbatchable jobs alone), in input order."""
    groups: dict[tuple[Any, ...], list[Ready]] = {}
    for item in ready:
        job, content, styles = item
        spec = job.spec
        key: tuple[Any, ...] = (batch_key(spec), output_hw(spec, content, styles))
        if not spec.batchable or batch_size <= 1:
            key = (*key, job.id)
        groups.setdefault(key, []).append(item)
    for items in groups.values():
        for i in range(0, len(items), max(1, batch_size)):
            yield items[i : i + batch_size]


def commit_job(
    job: Job,
    outcome: Outcome | None,
    info: dict[str, Any],
    started: float,
    store: storage.Store,
    score: Scorer | None = None,
    fmt: tuple[str, int] = ("png", 95),
    names: layout.OutputNames | None = None,
) -> dict[str, Any]:
    """Write a job's image (and snapshots) in ``fmt`` (format, quality), then its result file
    (trace + record), which commits it; return its row. Scores are taken from the image as
    saved. ``names``: where under the store (default: the run's job folder; `nst transfer`
    writes beside the image the user named)."""
    names = names or layout.job_outputs(job.id, images.FORMATS[fmt[0]][1])
    row = record.row(job, Status.FAILED, **info)
    data = images.encode(outcome.image, *fmt) if outcome is not None else b""
    if outcome is not None:
        row.update(record.outcome_fields(outcome, names))
        if score is not None:
            row.update(score(data))
    row["seconds"] = round(time.time() - started, 3)
    try:
        if outcome is not None:
            store.put(row["image_uri"], data)
            for (_, snap), path in zip(outcome.snapshots, row["snapshots"], strict=True):
                store.put(path, images.encode(snap, *fmt))
        trace = _trace_table(outcome.trace if outcome is not None else [])
        result = record.result_file(trace, record.job_json(row, started))
        store.put(names.result, result)  # last: now it counts as done
        row["committed"] = True
    except OSError as e:
        row.update(
            status=Status.FAILED.value, error=f"could not write outputs: {e}", committed=False
        )
        row.pop("image_uri", None), row.pop("trace_uri", None)  # nothing is there to point at
    return row


def read_image(
    uri: str, opts: RunOptions, prints: dict[str, str | None] | None = None
) -> torch.Tensor:
    """An input image, decoded; ``prints`` gets its fingerprint, from the stat the read made."""
    try:
        data, found = storage.read_input_and_print(uri, opts.storage_options, opts.storage_attempts)
    except FileNotFoundError:
        raise NstError(f"{uri}: input not found") from None
    except PermissionError as e:
        raise NstError(f"{uri}: access denied ({e})") from None
    except OSError as e:
        raise NstError(f"{uri}: could not read input ({e})") from None
    if prints is not None:
        prints[uri] = found
    return images.decode(data, uri, opts.max_pixels)
