"""The optimisation loop: optimizer choice, loss trace, divergence detection, best-image keeping.

Works on a batch of images whose losses are separable (one value per image). Adam and SGD are
exact per image in a batch; L-BFGS keeps one history for all parameters, so it runs one image at
a time (``optimize`` refuses an L-BFGS batch).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .spec import JobSpec


@dataclass
class Terms:
    """Per-image loss terms at one evaluation (each tensor has shape (B,))."""

    total: Tensor
    content: Tensor
    style: Tensor
    tv: Tensor
    style_layers: dict[str, Tensor]


Objective = Callable[[Tensor], Terms]


@dataclass
class Outcome:
    """What one image's optimisation produced. ``image`` is the best image seen, (3,H,W) on CPU."""

    image: Tensor
    status: str  # "ok" or "diverged"
    iterations: int
    diverged_at: int | None = None
    reason: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    trace: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(specs: Sequence[JobSpec], params: list[Tensor]) -> torch.optim.Optimizer:
    """One parameter group per image, so each keeps its own lr/momentum (Adam/SGD are
    elementwise: a batch then gives every image exactly the update it would get alone)."""
    spec = specs[0]
    if spec.optimizer == "lbfgs":
        return torch.optim.LBFGS(
            params,
            lr=spec.learning_rate,
            max_iter=1,
            history_size=100,
            line_search_fn="strong_wolfe" if spec.line_search else None,
        )
    if spec.optimizer == "adam":
        groups = [
            {"params": [p], "lr": s.learning_rate} for p, s in zip(params, specs, strict=True)
        ]
        return torch.optim.Adam(groups)
    groups = [
        {"params": [p], "lr": s.learning_rate, "momentum": s.momentum}
        for p, s in zip(params, specs, strict=True)
    ]
    return torch.optim.SGD(groups)


LOOP_FIELDS = (
    "optimizer",
    "iterations",
    "log_every",
    "divergence_factor",
    "divergence_patience",
    "line_search",
)


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

    def check(self, iteration: int, loss: float, best: float) -> str | None:
        """The reason to stop at ``iteration``, or None to go on."""
        if not math.isfinite(loss):
            self.since = iteration
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

    def at_end(self, best: float) -> str | None:
        """A spike still under way when the iterations run out is a divergence too."""
        return None if self.since is None else self._reason(best, "until the last iteration")

    def _reason(self, best: float, how_long: str) -> str:
        return (
            f"loss {self.peak:.4g} from iteration {self.since} exceeds "
            f"{self.factor:g} x best {best:.4g} {how_long}"
        )


def _row(terms: Terms, i: int, iteration: int, seconds: float) -> dict[str, float]:
    row: dict[str, float] = {
        "iteration": iteration,
        "total": float(terms.total[i].detach()),
        "content": float(terms.content[i].detach()),
        "style": float(terms.style[i].detach()),
        "tv": float(terms.tv[i].detach()),
        "seconds": seconds,
    }
    row.update({f"style_{k}": float(v[i].detach()) for k, v in terms.style_layers.items()})
    return row


def optimize(
    objective: Objective,
    x0: Tensor,
    specs: JobSpec | Sequence[JobSpec],
    iteration_offset: int = 0,
    clock_start: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[Outcome]:
    """Minimise ``objective`` from ``x0`` (B,3,H,W), one spec per image (or one for all).

    An image whose loss diverges (see :class:`Divergence`) stops with status ``diverged`` at the
    iteration the divergence began; its best image so far is what is returned.
    """
    b = x0.shape[0]
    specs = [specs] * b if isinstance(specs, JobSpec) else list(specs)
    spec = specs[0]
    if len(specs) != b or any(
        getattr(s, f) != getattr(spec, f) for s in specs for f in LOOP_FIELDS
    ):
        raise ValueError(f"a batch needs one spec per image agreeing on {', '.join(LOOP_FIELDS)}")
    if spec.optimizer == "lbfgs" and b != 1:
        raise ValueError("L-BFGS shares its history across parameters: run it one image at a time")
    t0 = time.perf_counter() if clock_start is None else clock_start
    xs = [x0[i : i + 1].detach().clone().requires_grad_(True) for i in range(b)]
    opt = make_optimizer(specs, xs)
    best = torch.full((b,), math.inf)
    best_img = x0.detach().clone()
    best_terms: list[dict[str, float] | None] = [None] * b
    alive = torch.ones(b, dtype=torch.bool)
    outcomes = [Outcome(image=x0[i], status="ok", iterations=0) for i in range(b)]
    guards = [Divergence(s.divergence_factor, s.divergence_patience) for s in specs]
    last: list[Terms] = []

    def evaluate(iteration: int, backward: bool) -> Terms:
        x = torch.cat(xs) if b > 1 else xs[0]
        terms = objective(x)
        total = terms.total.detach().cpu()
        ok = torch.isfinite(total)
        better = ok & alive & (total < best)
        for i in better.nonzero().flatten().tolist():
            best[i] = total[i]
            best_img[i] = xs[i].detach()[0]
            best_terms[i] = _row(terms, i, iteration, time.perf_counter() - t0)
        if backward:
            mask = ok & alive
            loss = torch.where(mask.to(x.device), terms.total, torch.zeros_like(terms.total))
            loss.sum().backward()  # type: ignore[no-untyped-call]
            for i in (~mask).nonzero().flatten().tolist():
                xs[i].grad.zero_()  # a finished image takes no further gradient
        return terms

    iteration = iteration_offset
    for step in range(1, spec.iterations + 1):
        iteration = iteration_offset + step

        def closure(iteration: int) -> float:
            opt.zero_grad(set_to_none=False)
            terms = evaluate(iteration, backward=True)
            last[:] = [terms]
            return float(terms.total.detach().sum())

        opt.step(functools.partial(closure, iteration))
        with torch.no_grad():
            for x in xs:
                x.clamp_(0.0, 1.0)
        terms = last[0]
        total = terms.total.detach().cpu()
        now = time.perf_counter() - t0
        for i in range(b):
            if not alive[i]:
                continue
            outcomes[i].iterations = step
            reason = guards[i].check(iteration, float(total[i]), float(best[i]))
            if reason is None and step == spec.iterations:
                reason = guards[i].at_end(float(best[i]))
            if step % spec.log_every == 0 or step == 1 or step == spec.iterations or reason:
                outcomes[i].trace.append(_row(terms, i, iteration, now))
            if reason:
                alive[i] = False
                outcomes[i].status = "diverged"
                outcomes[i].diverged_at = guards[i].since
                outcomes[i].reason = reason
        if on_step is not None:
            on_step(iteration, float(total.sum()))
        if not alive.any():
            break

    with torch.no_grad():
        evaluate(iteration, backward=False)  # the last step's result is a candidate too
    now = time.perf_counter() - t0
    for i, out in enumerate(outcomes):
        out.image = best_img[i].detach().clamp(0, 1).cpu()
        out.final = best_terms[i] or {}
        out.seconds = now
    return outcomes
