"""How good a trained network is, on photos it never saw, in the one honest measure: for each
held-aside photo, the job's own loss (nst_ops.job_loss) of the unstyled photo, of the network's
output and of the optimiser's result for the same job, and the gap the network closes
between the first and the last. Written into the model's metadata and printed by `nst train`,
so a user knows before applying it whether the network gives the look the grid chose."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch

from nst_ops.image_ops import fit_longer_side
from nst_ops.job_loss import gap_closure
from nst_ops.spec import JobSpec
from nst_ops.stylenet import TransformerNet
from nst_ops.transfer import stylize
from pipeline.run import images, objective


@torch.no_grad()
def network_output(net: TransformerNet, photo: torch.Tensor, size: int) -> torch.Tensor:
    """What `nst apply --size <the job's size>` writes for ``photo``, as stored (8-bit)."""
    device = next(net.parameters()).device
    y = net.eval()(fit_longer_side(photo, size).to(device)).float()[0].cpu()
    return images.decode(images.encode(y), "output")


def photo_gap(
    net: TransformerNet, spec: JobSpec, photo: torch.Tensor, styles: Sequence[torch.Tensor],
    device: torch.device, storage_options: dict | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The three losses of one photo and the network's gap closure."""
    extractor = objective.job_network(spec, device, storage_options)
    optimised = stylize(spec, extractor, photo, list(styles)).image
    mine = network_output(net, photo, spec.size)
    out, best, bare = objective.objectives(
        spec, [mine, optimised], photo, styles, device, storage_options
    )
    return {"photo": bare, "network": out, "optimised": best,
            "gap_closure": gap_closure(bare, out, best)}  # fmt: skip


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median gap closure and loss ratio over the held-aside photos."""
    closures = [r["gap_closure"] for r in rows if r.get("gap_closure") is not None]
    ratios = [r["network"] / r["optimised"] for r in rows if r.get("optimised")]
    return {
        "median_gap_closure": statistics.median(closures) if closures else None,
        "median_ratio_to_optimised": statistics.median(ratios) if ratios else None,
        "photos": list(rows),
    }


def line(found: dict[str, Any], spec: JobSpec) -> str:
    """One line for the end of `nst train`."""
    c, r = found.get("median_gap_closure"), found.get("median_ratio_to_optimised")
    if c is None or r is None:
        return "held-aside photos: no gap to measure (the optimiser did not improve on them)"
    n = len(found["photos"])
    return (
        f"held-aside photos ({n}): the network closes {c:.0%} of the gap from the unstyled "
        f"photo to the optimiser (its loss {r:.2f}x the optimiser's; the job's own objective at "
        f"{spec.size} px, median)"
    )
