"""What one training is: the settings `nst train` resolves, which travel to every Ray Train
worker, and the part of them a rerun into the same --out must match."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.run import images


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training worker needs (plain values: it travels to Ray workers). The
    storage options are credentials: never written anywhere."""

    out: str
    spec: dict[str, Any]
    style_uris: list[str]
    photos: list[str]
    holdout: list[str]
    steps: int = 2000
    batch_size: int = 4
    crop: int = 256
    lr: float = 1e-3
    width: int = 32
    residual_blocks: int = 5
    checkpoint_every: int = 100
    sample_every: int = 100
    seed: int = 0
    workers: int = 1
    use_gpu: bool | None = None  # None: GPUs when the Ray cluster has any
    cpus_per_worker: float = 1.0
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    from_job: dict[str, str] | None = None
    skipped_photos: list[str] = field(default_factory=list)  # refused by the probe, with why
    storage_options: dict | None = field(default=None, compare=False)

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to continue this training (steps may grow)."""
        d = asdict(self)
        for k in ("storage_options", "steps", "checkpoint_every", "sample_every", "out", "workers",
                  "use_gpu", "cpus_per_worker", "skipped_photos"):  # fmt: skip
            d.pop(k)
        return d
