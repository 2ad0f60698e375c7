"""The job's own objective (nst_ops.job_loss) of outputs as saved, with the unstyled photo as
the zero point: what `nst apply` records for its scored sample, `nst train` for its held-aside
photos, and `nst report --compare` and the benchmarks compare. Measured in fp32 on the job's
network (its backbone, weights and pooling), at the job's size and style preparation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from nst_ops.job_loss import job_losses
from nst_ops.layer_table import deepest
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures
from pipeline.run import weights

_NETS: dict[tuple[Any, ...], VGGFeatures] = {}
COLUMNS = ("objective", "objective_photo")  # an output's and its unstyled photo's


def job_network(
    spec: JobSpec, device: torch.device, storage_options: dict | None = None
) -> VGGFeatures:
    """One fp32 network per process for each backbone, weights, pooling and depth."""
    last = deepest(spec.backbone, spec.active_layers)
    key = (spec.backbone, spec.pooling, spec.weights, last, str(device))
    if key not in _NETS:
        _, seed = weights.parse(spec.weights)
        sd = weights.cached_state_dict(spec.weights, spec.backbone, storage_options)
        net = VGGFeatures(spec.backbone, [last], spec.pooling, state_dict=sd, seed=seed)
        _NETS[key] = net.to(device)
    return _NETS[key]


def objectives(
    spec: JobSpec,
    outputs: Sequence[torch.Tensor],
    photo: torch.Tensor,
    styles: Sequence[torch.Tensor],
    device: torch.device,
    storage_options: dict | None = None,
) -> list[float]:
    """The job's loss of each output (3,H,W), then of the photo itself (the zero point)."""
    net = job_network(spec, device, storage_options)
    return job_losses(net, spec, [*outputs, photo], photo, styles)


def columns(
    spec: JobSpec,
    output: torch.Tensor,
    photo: torch.Tensor,
    styles: Sequence[torch.Tensor],
    device: torch.device,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """``objective`` and ``objective_photo`` of one output (None for both on any problem: a
    measure is extra information, never an image's fate)."""
    try:
        out, bare = objectives(spec, [output], photo, styles, device, storage_options)
    except (ValueError, RuntimeError, OSError):
        return dict.fromkeys(COLUMNS)
    return {"objective": out, "objective_photo": bare}
