"""How a parameter is declared: its rules live beside its JobSpec field (nst_ops.spec), and
everything that needs them (validation, `nst params`, manifests, batching, job ids) reads them
from there. Adding a parameter is one field."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
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
    and job ids read them from here (``nst_ops.spec.PARAMS``)."""

    help: str
    role: Role = Role.JOB
    choices: Callable[[], tuple[str, ...]] | None = None  # a registry may grow: read when asked
    only_choices: bool = True  # False: the choices are named values beside free ones (init)
    minimum: float | None = None  # numbers: the smallest allowed value, checked finite
    maximum: float | None = None
    integer: bool = False
    # Added after job ids were published: at its default, a job's id stays what it was before
    # the parameter existed.
    added_later: bool = False


def param(default: Any, help: str, **rules: Any) -> Any:
    """A JobSpec field with its rules (see Param)."""
    return field(default=default, metadata={"param": Param(help, **rules)})


@dataclass(frozen=True)
class FieldType:
    """What a parameter holds, read off its type hint: the scalar kinds it takes (amp: bool and
    str) and whether its value is itself a list (layers, layer weights, blend). Manifests read
    it to type their columns, the results schema to type its own."""

    kinds: tuple[type, ...]
    is_seq: bool


def field_types(cls: type) -> dict[str, FieldType]:
    """Every dataclass field's FieldType (None-able fields: what they hold when set)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        if len(args) == 1 and typing.get_origin(args[0]) is tuple:
            out[f.name] = FieldType((typing.get_args(args[0])[0],), True)
        else:
            out[f.name] = FieldType(tuple(args), False)
    return out


class SpecError(ValueError):
    """A parameter value that can never give a valid job."""


def finite_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise SpecError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise SpecError(f"{name} must be finite and >= 0, got {value!r}")


def check_bounds(name: str, value: Any, rules: Param) -> None:
    """A number within the parameter's declared bounds (integers also integral)."""
    lo = -math.inf if rules.minimum is None else rules.minimum
    hi = math.inf if rules.maximum is None else rules.maximum
    if not rules.integer:
        if lo == 0:
            return finite_nonneg(name, value)  # the message the nonnegative weights have had
        if not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise SpecError(f"{name} must be finite and within [{lo:g}, {hi:g}], got {value!r}")
        return
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        span = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise SpecError(f"{name} must be an integer {span}, got {value!r}")
