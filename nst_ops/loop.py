"""The optimisation loop: optimizer choice, loss trace, divergence detection, best-image keeping.

Works on a batch of images whose losses are separable (one value per image). Every optimizer is
exact per image in a batch: Adam and SGD through one parameter group per image, L-BFGS through
one optimizer (one history) per image. L-BFGS with line search evaluates each image a different
number of times per step, so it runs one image at a time (``optimize`` refuses such a batch).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .optimizers import OPTIMIZERS, Stepper
from .spec import LOOP_FIELDS, JobSpec
from .vocab import Status


@dataclass
class Terms:
    """Per-image losses at one evaluation (each tensor has shape (B,)): the total, every
    registered term by name (``losses.TERMS``), and named details such as ``style_<layer>``."""

    total: Tensor
    terms: dict[str, Tensor]
    details: dict[str, Tensor] = field(default_factory=dict)


Objective = Callable[[Tensor], Terms]


@dataclass
class Outcome:
    """What one image's optimisation produced. ``image`` is the best image seen, (3,H,W) on CPU."""

    image: Tensor
    status: Status  # OK or DIVERGED
    iterations: int
    diverged_at: int | None = None
    converged_at: int | None = None  # early stopping (spec.tol) ended it here, status OK
    reason: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    trace: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    snapshots: list[tuple[int, Tensor]] = field(default_factory=list)  # (iteration, image)
    restarts: list[int] = field(default_factory=list)  # iterations where a blow-up restarted


def make_optimizer(specs: Sequence[JobSpec], params: list[Tensor]) -> Stepper:
    """The spec's optimizer from the registry, per image where batchable."""
    return OPTIMIZERS[specs[0].optimizer].make(specs, params)


RESTART_AFTER = 5  # spike iterations before a restart (JobSpec.restarts)


@dataclass
class Divergence:
    """When to give up on one image.

    A non-finite loss stops at once. A loss above ``factor`` x the best so far stops only when it
    persists for ``patience`` iterations (or lasts until the end): SGD and Adam spikes that
    recover must go on. The study's +3-layer run jumped 123x at iteration 400 and was back near
    its best by 500 (seed lines 94-103); a blow-up keeps rising or turns non-finite.
    """

    factor: float
    patience: int
    since: int | None = None
    peak: float = 0.0
    nonfinite: bool = False

    def check(self, iteration: int, loss: float, best: float) -> str | None:
        """The reason to stop at ``iteration``, or None to go on."""
        if not math.isfinite(loss):
            self.since, self.nonfinite = iteration, True
            return f"non-finite loss at iteration {iteration}"
        if loss <= self.factor * best:
            self.since = None
            return None
        if self.since is None:
            self.since, self.peak = iteration, loss
        self.peak = max(self.peak, loss)
        if iteration - self.since + 1 >= self.patience:
            return self._reason(best, f"for {self.patience} iterations")
        return None

    def blew_up(self, iteration: int) -> bool:
        """A blow-up worth a restart: a non-finite loss, or a spike that has lasted
        RESTART_AFTER iterations (L-BFGS does not come back from those)."""
        if self.since is None:
            return False
        return self.nonfinite or iteration - self.since + 1 >= RESTART_AFTER

    def reset(self) -> None:
        self.since, self.peak, self.nonfinite = None, 0.0, False

    def at_end(self, best: float) -> str | None:
        """A spike still under way when the iterations run out is a divergence too."""
        return None if self.since is None else self._reason(best, "until the last iteration")

    def _reason(self, best: float, how_long: str) -> str:
        return (
            f"loss {self.peak:.4g} from iteration {self.since} exceeds "
            f"{self.factor:g} x best {best:.4g} {how_long}"
        )


@dataclass
class Convergence:
    """Early stopping: an image is done when its best loss improved by less than ``tol`` (a
    fraction) over the last ``window`` iterations. What L-BFGS users ask for most: most of a
    fixed budget is spent where the image no longer changes visibly."""

    tol: float
    window: int
    bests: list[float] = field(default_factory=list)

    def check(self, best: float) -> bool:
        self.bests.append(best)
        if self.tol <= 0 or len(self.bests) <= self.window:
            return False
        before = self.bests[-1 - self.window]
        return math.isfinite(before) and (before - best) <= self.tol * abs(before)


def _row(terms: Terms, i: int, iteration: int, seconds: float) -> dict[str, float]:
    row: dict[str, float] = {
        "iteration": iteration,
        "total": float(terms.total[i].detach()),
        **{k: float(v[i].detach()) for k, v in terms.terms.items()},
        "seconds": seconds,
    }
    row.update({k: float(v[i].detach()) for k, v in terms.details.items()})
    return row


class _Batch:
    """The state of one optimisation over a batch: the images, each one's best so far, which are
    still running, and their outcomes. ``optimize`` drives it; this keeps the bookkeeping."""

    def __init__(self, objective: Objective, x0: Tensor, specs: list[JobSpec], t0: float):
        b = x0.shape[0]
        self.objective, self.specs, self.t0 = objective, specs, t0
        self.xs = [x0[i : i + 1].detach().clone().requires_grad_(True) for i in range(b)]
        self.best = torch.full((b,), math.inf)
        self.best_img = x0.detach().clone()
        self.best_terms: list[dict[str, float] | None] = [None] * b
        self.alive = torch.ones(b, dtype=torch.bool)
        self.outcomes = [Outcome(image=x0[i], status=Status.OK, iterations=0) for i in range(b)]
        self.guards = [Divergence(s.divergence_factor, s.divergence_patience) for s in specs]
        self.converging = [Convergence(s.tol, s.tol_window) for s in specs]
        self.restarts_left = [s.restarts for s in specs]
        self.forget: Callable[[int], None] = lambda i: None  # the optimizer's state of image i
        self.on_restart: Callable[[], None] = lambda: None  # e.g. the network back to fp32

    def evaluate(self, iteration: int, backward: bool) -> Terms:
        """Losses at the current images; keep any image that beats its best; gradients only for
        images still running."""
        x = torch.cat(self.xs) if len(self.xs) > 1 else self.xs[0]
        terms = self.objective(x)
        total = terms.total.detach().cpu()
        ok = torch.isfinite(total)
        for i in (ok & self.alive & (total < self.best)).nonzero().flatten().tolist():
            self.best[i] = total[i]
            self.best_img[i] = self.xs[i].detach()[0]
            self.best_terms[i] = _row(terms, i, iteration, time.perf_counter() - self.t0)
        if backward:
            mask = ok & self.alive
            loss = torch.where(mask.to(x.device), terms.total, torch.zeros_like(terms.total))
            loss.sum().backward()  # type: ignore[no-untyped-call]
            for i in (~mask).nonzero().flatten().tolist():
                grad = self.xs[i].grad
                if grad is not None:
                    grad.zero_()  # a finished image takes no further gradient
        return terms

    def after_step(self, terms: Terms, step: int, iteration: int) -> None:
        """Trace rows and the divergence rule, per image still running."""
        spec, total = self.specs[0], terms.total.detach().cpu()
        now = time.perf_counter() - self.t0
        for i, out in enumerate(self.outcomes):
            if not self.alive[i]:
                continue
            out.iterations = step
            reason = self.guards[i].check(iteration, float(total[i]), float(self.best[i]))
            if step < spec.iterations and self._restart(i, iteration):
                continue
            if reason is None and step == spec.iterations:
                reason = self.guards[i].at_end(float(self.best[i]))
            if step % spec.log_every == 0 or step == 1 or step == spec.iterations or reason:
                out.trace.append(_row(terms, i, iteration, now))
            every = self.specs[i].save_every
            if every and step % every == 0:
                out.snapshots.append((iteration, self.xs[i].detach()[0].clamp(0, 1).cpu()))
            if reason:
                self.alive[i] = False
                out.status, out.diverged_at, out.reason = (
                    Status.DIVERGED,
                    self.guards[i].since,
                    reason,
                )
            elif self.converging[i].check(float(self.best[i])):
                self.alive[i] = False
                out.converged_at = iteration
                if out.trace and out.trace[-1]["iteration"] != iteration:
                    out.trace.append(_row(terms, i, iteration, now))

    def _restart(self, i: int, iteration: int) -> bool:
        """After a blow-up with restarts left: back to the best image, fresh optimizer state."""
        if not self.restarts_left[i] or not self.guards[i].blew_up(iteration):
            return False
        if not math.isfinite(float(self.best[i])):
            return False  # nothing good to go back to
        self.restarts_left[i] -= 1
        with torch.no_grad():
            self.xs[i].copy_(self.best_img[i : i + 1])
        self.forget(i)
        self.guards[i].reset()
        self.outcomes[i].restarts.append(iteration)
        self.on_restart()
        return True

    def finish(self, iteration: int) -> list[Outcome]:
        with torch.no_grad():
            self.evaluate(iteration, backward=False)  # the last step's result is a candidate too
        now = time.perf_counter() - self.t0
        for i, out in enumerate(self.outcomes):
            out.image = self.best_img[i].detach().clamp(0, 1).cpu()
            out.final = self.best_terms[i] or {}
            out.seconds = now
        return self.outcomes


def forget_state(opt: Stepper, params: list[Tensor], i: int) -> None:
    """Drop image ``i``'s optimizer state (L-BFGS history, Adam moments): the next step
    starts afresh from where the image is."""
    for inner in getattr(opt, "inner", [opt]):
        state = getattr(inner, "state", None)
        if state is not None:
            state.pop(params[i], None)


def _check_specs(specs: list[JobSpec], b: int) -> None:
    spec = specs[0]
    if len(specs) != b or any(
        getattr(s, f) != getattr(spec, f) for s in specs for f in LOOP_FIELDS
    ):
        raise ValueError(f"a batch needs one spec per image agreeing on {', '.join(LOOP_FIELDS)}")
    if not spec.batchable_loop and b != 1:
        raise ValueError(
            f"{spec.optimizer}{' with line search' if spec.line_search else ''} cannot share "
            "one evaluation between images: run it one image at a time"
        )


def optimize(
    objective: Objective,
    x0: Tensor,
    specs: JobSpec | Sequence[JobSpec],
    iteration_offset: int = 0,
    clock_start: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_restart: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Minimise ``objective`` from ``x0`` (B,3,H,W), one spec per image (or one for all).

    An image whose loss blows up goes back to its best image with a fresh optimizer state, up
    to ``spec.restarts`` times (``on_restart`` is then called, e.g. to leave bf16); one whose
    loss still diverges (see :class:`Divergence`) stops with status ``diverged`` at the
    iteration the divergence began; its best image so far is what is returned.
    """
    specs = [specs] * x0.shape[0] if isinstance(specs, JobSpec) else list(specs)
    _check_specs(specs, x0.shape[0])
    t0 = time.perf_counter() if clock_start is None else clock_start
    run = _Batch(objective, x0, specs, t0)
    opt = make_optimizer(specs, run.xs)
    run.forget = functools.partial(forget_state, opt, run.xs)
    if on_restart is not None:
        run.on_restart = on_restart
    last: list[Terms] = []

    def closure(iteration: int) -> float:
        opt.zero_grad(set_to_none=False)
        last[:] = [run.evaluate(iteration, backward=True)]
        return float(last[0].total.detach().sum())

    iteration = iteration_offset
    for step in range(1, specs[0].iterations + 1):
        iteration = iteration_offset + step
        opt.step(functools.partial(closure, iteration))
        with torch.no_grad():
            for x in run.xs:
                x.clamp_(0.0, 1.0)
        run.after_step(last[0], step, iteration)
        if on_step is not None:
            on_step(iteration, float(last[0].total.detach().sum()))
        if not run.alive.any():
            break
    return run.finish(iteration)
