"""How a parameter is declared: its rules live beside its JobSpec field (nst_ops.spec), and
everything that needs them (validation, `nst params`, manifests, batching, job ids) reads them
from there. Adding a parameter is one field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Role(str, Enum):
    """What a parameter means for batching (nst_ops.transfer.stylize_batch)."""

    JOB = "job"  # may differ between the images of one batch (weights' scale, lr, seed, inputs)
    BATCH = "batch"  # shared by every image of a batch: one forward/backward for all of them
    LOOP = "loop"  # shared by the optimisation loop too: one optimizer step for the batch


@dataclass(frozen=True)
class Param:
    """A parameter's rules, declared once beside its field: validation, `nst params`, batching
    and job ids read them from here (``JobSpec.params()``)."""

    help: str
    role: Role = Role.JOB
    choices: Callable[[], tuple[str, ...]] | None = None  # a registry may grow: read when asked
    only_choices: bool = True  # False: the choices are named values beside free ones (init)
    minimum: float | None = None  # numbers: the smallest allowed value, checked finite
    maximum: float | None = None
    integer: bool = False
    added_later: bool = False  # added after job ids were published: at its default, a job's id


def param(default: Any, help: str, **rules: Any) -> Any:
    """A JobSpec field with its rules (see Param)."""
    return field(default=default, metadata={"param": Param(help, **rules)})
