"""One job = a validated JobSpec plus its input URIs; its id is a hash of exactly those."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nst_ops.spec import ADDED_LATER, JobSpec

_ABSENT = object()


def job_id(spec: JobSpec, content_uri: str | None, style_uris: tuple[str, ...]) -> str:
    """Deterministic id: the same parameters and inputs always give the same id.

    Names and tags are not part of it, so they can never steer an output path.
    """
    params = {
        k: v for k, v in spec.to_dict().items() if ADDED_LATER.get(k, _ABSENT) != v
    }  # a field added later, at its default, leaves the id (and every existing run) as it was
    canonical = json.dumps(
        {"spec": params, "content_uri": content_uri, "style_uris": list(style_uris)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Job:
    spec: JobSpec
    content_uri: str | None
    style_uris: tuple[str, ...]
    row: int
    job_name: str | None = None
    tags: tuple[tuple[str, Any], ...] = ()
    id: str = field(default="", compare=False)
    sweep_of: str | None = None  # set on jobs a layer_sweep row expanded into
    preset: str | None = None  # the preset that filled the parameters the row left out

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", job_id(self.spec, self.content_uri, self.style_uris))

    @property
    def input_uris(self) -> tuple[str, ...]:
        """Every image the job reads (content, styles, a start image): what is fingerprinted."""
        start = tuple(u for u in (self.spec.init_image, self.spec.init_model) if u)
        return tuple(u for u in (self.content_uri, *self.style_uris, *start) if u)

    def to_record(self) -> dict[str, Any]:
        """A flat row for jobs.parquet / results.parquet (lists kept as lists)."""
        rec: dict[str, Any] = {
            "job_id": self.id,
            "row": self.row,
            "job_name": self.job_name,
            "content_uri": self.content_uri,
            "style_uris": list(self.style_uris),
            "sweep_of": self.sweep_of,
            "preset": self.preset,
        }
        rec.update(self.spec.to_dict())
        rec.update({k: v for k, v in self.tags})
        return rec
