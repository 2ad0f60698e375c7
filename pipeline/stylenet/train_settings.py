"""What one training is: the settings `nst train` resolves, which travel to every Ray Train
worker, and the part of them a rerun into the same --out must match."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from pipeline.run import images

# Photos come in these shapes; a network trained on square crops alone learns, with
# style_scale=content, the style squashed into a square, not the target of a 4:3 photo.
DEFAULT_ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3)
# identity keys added after trainings were written with them absent: their value then
ADDED_LATER = {
    "aspects": [1.0], "photo_skip": False, "lr_schedule": "constant", "coarse_crop": 0,
    "coarse_steps": 0,
}  # fmt: skip


class LrSchedule(str, Enum):
    """Adam's learning rate over the steps: constant, or a cosine from --lr down to zero at
    --steps (a run resumed with more --steps continues along the longer cosine)."""

    CONSTANT = "constant"
    COSINE = "cosine"


def coarse_crop_for(given: int | None, crop: int, coarse_steps: int) -> int:
    """Half --crop (a multiple of 4, as the network likes) unless given; 0 with no coarse steps."""
    if not coarse_steps:
        return 0
    return given if given else 4 * round(crop / 8)


def parse_aspects(text: str) -> tuple[float, ...]:
    """'1,4:3,3:4' -> (1.0, 1.333.., 0.75): each w:h (or a number), between 1:4 and 4:1."""
    found = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        w, _, h = item.partition(":")
        try:
            value = float(w) / float(h or 1)
        except ValueError:
            raise ValueError(f"--aspects {text!r}: {item!r} is not w:h or a number") from None
        if not 0.25 <= value <= 4:
            raise ValueError(f"--aspects {text!r}: {item} is outside 1:4 ... 4:1")
        found.append(value)
    if not found:
        raise ValueError("--aspects: give at least one, e.g. 1 (square crops only)")
    return tuple(found)


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
    lr_schedule: str = LrSchedule.CONSTANT.value
    photo_skip: bool = True  # the network changes the photo (nst_ops.stylenet.network)
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
    reference: bool = True  # at the end, optimise each held-aside photo to measure the network
    aspects: tuple[float, ...] = DEFAULT_ASPECTS  # crop shapes (w/h), one drawn per step
    coarse_crop: int = 0  # the first coarse_steps train on crops of this side (0: none)
    coarse_steps: int = 0
    storage_options: dict | None = field(default=None, compare=False)

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to continue this training (steps may grow)."""
        d = asdict(self)
        for k in ("storage_options", "steps", "checkpoint_every", "sample_every", "out", "workers",
                  "use_gpu", "cpus_per_worker", "skipped_photos", "reference"):  # fmt: skip
            d.pop(k)
        return d

    def __post_init__(self) -> None:
        if self.coarse_steps >= self.steps:
            raise ValueError(
                f"--coarse-steps {self.coarse_steps}: must be below --steps {self.steps} "
                "(the last steps train on --crop, the size the network is applied near)"
            )
        if self.coarse_steps and not 16 <= self.coarse_crop < self.crop:
            raise ValueError(  # 16: VGG's conv5 layers see a 16th of the side
                f"--coarse-crop {self.coarse_crop}: must be at least 16 and below --crop "
                f"{self.crop} (the coarse steps cut smaller crops at the same scale)"
            )

    def crop_at(self, step: int) -> int:
        """The shorter side of step's crops: coarse first (the same photo scale and style
        target, a quarter of the pixels at half the side), then --crop."""
        return self.coarse_crop if step <= self.coarse_steps else self.crop

    def work(self, first: int, last: int) -> float:
        """Steps first+1..last in full-crop steps (a coarse step costs its share of pixels):
        what the time left is reckoned in."""
        coarse = max(0, min(last, self.coarse_steps) - first)
        return (last - first - coarse) + coarse * (self.coarse_crop / self.crop) ** 2

    def lr_at(self, step: int) -> float:
        if self.lr_schedule == LrSchedule.COSINE.value:
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(step / self.steps, 1.0)))
        return self.lr
