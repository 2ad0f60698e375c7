"""The project's words for a job's status and mode: one enum each, used everywhere.

They are ``str`` enums, so they compare equal to, print as and serialise to their plain values
("ok", "transfer"): records, tables and job ids are the same as with bare strings.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(str(m.value) for m in cls)


class Status(Choice):
    OK = "ok"
    DIVERGED = "diverged"
    FAILED = "failed"  # bad input, bad weights, a bug, storage that would not take the outputs
    PENDING = "pending"  # not run yet (or interrupted)


# what counts against `--strict`, and what `--retry-failed` redoes
BAD_STATUSES = (Status.FAILED, Status.DIVERGED)


class Mode(Choice):
    """What one job optimises."""

    TRANSFER = "transfer"  # content + style
    STYLE = "style"  # style reconstruction from noise
    CONTENT = "content"  # content reconstruction

    @property
    def uses_content(self) -> bool:
        return self in (Mode.TRANSFER, Mode.CONTENT)

    @property
    def uses_style(self) -> bool:
        return self in (Mode.TRANSFER, Mode.STYLE)


class RowMode(Choice):
    """What a manifest row asks for: a job's mode, or a layer sweep that expands into several
    style reconstructions."""

    TRANSFER = "transfer"
    STYLE = "style"
    CONTENT = "content"
    LAYER_SWEEP = "layer_sweep"

    @property
    def needs_content(self) -> bool:
        return self in (RowMode.TRANSFER, RowMode.CONTENT)

    @property
    def needs_style(self) -> bool:
        return self is not RowMode.CONTENT
