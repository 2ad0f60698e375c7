"""The optimizers a job can name: one entry each (factory, default learning rate, batchable).

Adding one is one entry, e.g. RMSprop:

    "rmsprop": OptimizerKind(per_image("RMSprop", "momentum"), default_lr=0.01, batchable=True),

Factories import torch when called, so this table (and ``JobSpec``) loads without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .spec import JobSpec

Factory = Callable[["Sequence[JobSpec]", "list[torch.Tensor]"], "torch.optim.Optimizer"]


@dataclass(frozen=True)
class OptimizerKind:
    make: Factory
    default_lr: float
    # True when the update is elementwise per parameter group: one group per image then gives
    # every image in a batch exactly the update it would get alone (Adam, SGD, RMSprop...).
    batchable: bool


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


def _lbfgs(specs: Sequence[JobSpec], params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """One history for all parameters: never batched."""
    import torch

    spec = specs[0]
    return torch.optim.LBFGS(
        params,
        lr=spec.learning_rate,
        max_iter=1,
        history_size=100,
        line_search_fn="strong_wolfe" if spec.line_search else None,
    )


OPTIMIZERS: dict[str, OptimizerKind] = {
    "lbfgs": OptimizerKind(_lbfgs, default_lr=1.0, batchable=False),
    "adam": OptimizerKind(per_image("Adam"), default_lr=0.02, batchable=True),
    "sgd": OptimizerKind(per_image("SGD", "momentum"), default_lr=0.1, batchable=True),
}
