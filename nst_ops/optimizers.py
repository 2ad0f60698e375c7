"""The optimizers a job can name: one entry each (factory, default learning rate, batchable).

Adding one is one entry, e.g. RMSprop:

    "rmsprop": OptimizerKind(per_image("RMSprop", "momentum"), default_lr=0.01, batchable=True),

Factories import torch when called, so this table (and ``JobSpec``) loads without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


class JobSpec(Protocol):
    """What a factory reads of a job's parameters (``nst_ops.spec.JobSpec``, which reads this
    table for its choices and default learning rates: so the shape is named, not imported)."""

    @property
    def learning_rate(self) -> float: ...

    @property
    def line_search(self) -> bool: ...

    @property
    def history_size(self) -> int: ...

    @property
    def history_dtype(self) -> str: ...

    @property
    def history_device(self) -> str: ...

    @property
    def momentum(self) -> float: ...

    @property
    def iterations(self) -> int: ...

    @property
    def total_iterations(self) -> int: ...


class Stepper(Protocol):
    """What the optimisation loop needs of an optimizer (torch's optimizers are Steppers)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self, closure: Callable[[], float]) -> Any: ...


Factory = Callable[["Sequence[JobSpec]", "list[torch.Tensor]"], Stepper]


@dataclass(frozen=True)
class OptimizerKind:
    make: Factory
    default_lr: float
    # True when every image in a batch can get exactly the update it would get alone from one
    # shared evaluation: elementwise updates with one parameter group per image (Adam, SGD,
    # RMSprop...), or one optimizer per image (L-BFGS without line search, see PerImage).
    batchable: bool
    # image-sized vectors the optimizer keeps between steps (nst_ops.memory's estimate): where
    # the image is, and in the host's memory whatever the image's device (L-BFGS's pairs with
    # history_device=host)
    state_vectors: Callable[[JobSpec], float] = lambda spec: 0
    host_vectors: Callable[[JobSpec], float] = lambda spec: 0


def per_image(torch_name: str, *spec_fields: str) -> Factory:
    """``torch.optim.<torch_name>`` with one parameter group per image, each with its own lr
    (and the named JobSpec fields, e.g. momentum)."""

    def make(specs: Sequence[JobSpec], params: list[torch.Tensor]) -> torch.optim.Optimizer:
        import torch

        groups: list[dict[str, Any]] = [
            {"params": [p], "lr": s.learning_rate, **{f: getattr(s, f) for f in spec_fields}}
            for p, s in zip(params, specs, strict=True)
        ]
        cls: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
        cls = getattr(torch.optim, torch_name)  # every per-image optimizer takes param groups
        return cls(groups)

    return make


class PerImage:
    """One optimizer per image, all stepped after one shared evaluation of the batch. For
    optimizers whose state couples all their parameters (L-BFGS's history): each image keeps
    its own state, exactly as alone, while the batch shares the forward/backward. Only for
    optimizers that evaluate once per step (L-BFGS with ``max_iter=1`` and no line search)."""

    def __init__(self, inner: list[torch.optim.Optimizer]) -> None:
        self.inner = inner

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.inner:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], float]) -> float:
        loss = closure()  # every image's gradient, from one forward/backward
        for opt in self.inner:
            opt.step(lambda: loss)  # reads its image's gradient; evaluates nothing
        return loss


HISTORY_DTYPES = {"float32": 4, "bfloat16": 2}  # L-BFGS's history: bytes per value
# where L-BFGS's history lives: with the image, or in host memory (a GPU job's pairs then
# cross PCIe when read; on a CPU job the two are the same place)
HISTORY_DEVICES = ("same", "host")
# Resident memory per byte of L-BFGS pairs over a full-length run, beyond the pairs' own
# buffer: each iteration's image-sized temporaries (y, s, the direction) still pass through
# glibc's heap between the activations. From 3 to 300 iterations a 512-px job's peak rose by
# 1.7x its history's bytes in float32 and 2.07x in bfloat16 (bench/lbfgs_history.py,
# docs/performance.md); a 256-px relu1_1 job, where the history is most of the memory, needs
# at least 1.4x. 2.0 covers them with the square-image assumption's slack.
PAIR_RESIDENT = 2.0
LINE_SEARCH_EVALUATIONS = 25  # at most, per L-BFGS step with line_search


def _lbfgs(specs: Sequence[JobSpec], params: list[torch.Tensor]) -> Stepper:
    """One L-BFGS (own history, own lr) per image; with line search, one image only (it
    evaluates each image a different number of times per step)."""
    import torch

    def one(p: list[torch.Tensor], spec: JobSpec) -> torch.optim.LBFGS:
        from .compact_lbfgs import CompactLBFGS

        dtype, on_host = getattr(torch, spec.history_dtype), spec.history_device == "host"
        return CompactLBFGS(p, dtype, spec.total_iterations, on_host, **options(spec))

    def options(spec: JobSpec) -> dict[str, Any]:
        return dict(
            lr=spec.learning_rate,
            max_iter=1,
            # torch gives the search max_eval - 1 evaluations, and max_eval defaults to
            # max_iter * 5 // 4 = 1: a search with none left takes a zero step whenever the
            # first trial overshoots. 25 is torch's own default for a search.
            max_eval=1 + LINE_SEARCH_EVALUATIONS,
            history_size=spec.history_size,
            line_search_fn="strong_wolfe" if spec.line_search else None,
        )

    if specs[0].line_search:
        return one(params, specs[0])
    return PerImage([one([p], s) for p, s in zip(params, specs, strict=True)])


def _lbfgs_pairs(s: JobSpec) -> float:
    """A pair (s, y) per step up to history_size, in history_dtype, at its resident cost."""
    return (
        2 * min(s.history_size, s.iterations) * PAIR_RESIDENT * HISTORY_DTYPES[s.history_dtype] / 4
    )


def _lbfgs_vectors(s: JobSpec) -> float:
    """The direction, the previous gradient, the step, and the pairs; with the pairs in host
    memory, the one pair read back at a time instead."""
    return 3 + (1 if s.history_device == "host" else _lbfgs_pairs(s))


def _lbfgs_host_vectors(s: JobSpec) -> float:
    return _lbfgs_pairs(s) if s.history_device == "host" else 0


OPTIMIZERS: dict[str, OptimizerKind] = {
    "lbfgs": OptimizerKind(_lbfgs, 1.0, True, _lbfgs_vectors, _lbfgs_host_vectors),
    "adam": OptimizerKind(per_image("Adam"), 0.02, True, lambda s: 2),  # both moments
    "sgd": OptimizerKind(per_image("SGD", "momentum"), 0.1, True, lambda s: int(s.momentum > 0)),
}
