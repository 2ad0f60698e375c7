"""Which network scores a run's results (see nst_ops.scores); torch-free, so the driver can
choose and record it without loading torch."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .layer_table import check_layers
from .spec import JobSpec

# The columns scoring writes: the two scores, then which evaluator and any problem.
SCORES = ("score_content", "score_style")
SCORE_FIELDS = (*SCORES, "score_by", "score_error")


@dataclass(frozen=True)
class Evaluator:
    """Which network measures the results (recorded with the scores). The default layers stop at
    relu3_1, so the evaluator works with the partial ImageNet file this project ships."""

    backbone: str = "vgg19"
    weights: str = "imagenet"
    pooling: str = "max"
    content_layer: str = "relu3_1"
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1")

    def __post_init__(self) -> None:
        check_layers(self.backbone, (self.content_layer, *self.style_layers))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "style_layers": list(self.style_layers)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluator:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown evaluator field(s): {', '.join(sorted(unknown))}")
        fields = {**d}
        if "style_layers" in fields:
            fields["style_layers"] = tuple(fields["style_layers"])
        return cls(**fields)

    @property
    def key(self) -> str:
        """A short id recorded with every score: scores with different keys do not compare."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.content_layer, *self.style_layers)))


def score_key(ev: Evaluator, spec: JobSpec) -> str:
    """What a score was measured by: the evaluator, and how the style was prepared. The
    evaluator prepares each style as the job did (``style_scale=content``: squashed into the
    result's box; ``own``: its aspect kept, longer side at the result's), so a job is scored
    against the target it optimised; scores under different preparations never compare (the
    report ranks one key). ``own`` keeps the evaluator's bare key: the preparation every score
    had before the choice was the job's. (For a job without a content image both preparations
    are the same image; it carries its setting's key so that a run keeps one.)"""
    return ev.key if spec.style_scale == "own" else f"{ev.key}-{spec.style_scale}"


def default_evaluator(specs: Sequence[JobSpec]) -> Evaluator:
    """The backbone and weights most of the run's jobs use (so it works with what the run has,
    e.g. seeded random weights in tests or the shipped partial file), layers up to relu3_1."""
    common = Counter((s.backbone, s.weights) for s in specs).most_common()
    if not common:
        return Evaluator()
    best = max(n for _, n in common)
    backbone, weights = min(k for k, n in common if n == best)  # ties: a stable choice
    return Evaluator(backbone=backbone, weights=weights)
