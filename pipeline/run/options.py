"""The settings of one run that are not job parameters (never part of a job id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.run.images import DEFAULT_MAX_PIXELS
from pipeline.store.storage import DEFAULT_ATTEMPTS


@dataclass(frozen=True)
class RunOptions:
    """Per-run settings that are not job parameters (never part of a job id)."""

    out: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_attempts: int = DEFAULT_ATTEMPTS
    storage_options: dict | None = None  # credentials live here: never written anywhere
    evaluator: dict[str, Any] | None = None  # scores every result (nst_ops.scores); None: not
    image_format: str = "png"  # images.FORMATS
    image_quality: int = 95  # JPEG/WebP
