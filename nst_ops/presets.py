"""Named bundles of parameters: a preset fills in every parameter the user did not give.

Each value carries its source, so ``nst params``-style listings and the README can say which
values a study states (with the seed line) and which are ours.

Defaults editions: what a row without a preset gets for what it does not give. A run keeps the
edition it started with (recorded in its jobs.parquet), because job ids hash the resolved
parameters: a default that changed under a running grid would re-id and redo every job. New
runs get the latest edition, so better defaults reach new work without touching old runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .vocab import Mode

SEED = "../shared/seed/000_2e17f2b64bd973bd.txt"


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # "seed l.N: quote" where the study states it, "ours: why" where it does not


GATYS_STYLE = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")

STUDY: dict[str, Setting] = {
    "backbone": Setting(
        "vgg16", "seed l.34: 'the 13 convolutional and 5 pooling layers of the 16 layer VGG'"
    ),
    "weights": Setting("imagenet", "seed l.34 and ref. [3]: the ImageNet-trained VGG-Network"),
    "pooling": Setting("avg", "seed l.34: average pooling 'improves the gradient flow'"),
    "optimizer": Setting("sgd", "seed l.34: 'We used SGD optimizer, instead of Adam.'"),
    "init": Setting("noise", "seed l.32/l.44: the optimisation starts from 'a white noise image'"),
    "iterations": Setting(1000, "seed l.94-103 and l.119-128: the logged runs end at run [1000]"),
    "style_scale": Setting(
        "content", "seed l.150: 'we always resized the style image to the same size as the content'"
    ),
    "content_weight": Setting(1.0, "seed l.46 names alpha without a value; ours: alpha = 1"),
    "style_layer_weights": Setting(
        None, "seed l.68-70 names w_l without values; ours: equal, summing to 1"
    ),
    "content_layers": Setting(
        ("conv4_2",), "not in the seed ('one layer', l.44); ours: Gatys et al. [1], its reference"
    ),
    "style_layers": Setting(
        GATYS_STYLE,
        "not in the seed ('a number of layers', l.44); ours: Gatys et al. [1]'s five, the base the "
        "study adds 3 to and removes 2 from (l.88-89, l.113-114)",
    ),
    "style_weight": Setting(1e7, "not in the seed; ours: beta that stylises at 256 px"),
    "lr": Setting(
        3e-7,
        "not in the seed; ours: the largest of 1e-8, 3e-8, ... 1e-5 with which SGD from noise did "
        "not blow up (shipped VGG19 weights, conv1_1..conv3_1, 128 and 256 px)",
    ),
    "momentum": Setting(0.0, "not in the seed; ours: plain SGD"),
    "size": Setting(256, "not in the seed; ours"),
}

PRESETS: dict[str, dict[str, Setting]] = {"study": STUDY}

FIRST_DEFAULTS, LATEST_DEFAULTS = 1, 4
EDITIONS = (FIRST_DEFAULTS, 2, 3, LATEST_DEFAULTS)
LBFGS_RESTARTS = 2  # edition 3: L-BFGS restarts after a blow-up, at most this many times
AMP_FROM = 256  # px: L-BFGS jobs this large get amp=auto in edition 2 (measured there)
PHOTO_START_FROM = 1024  # px: edition 4 starts L-BFGS transfer jobs this large from the photo


def edition_values(edition: int, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """Edition ``edition``'s values for a job whose parameters, defaults filled in, are
    ``resolved`` (what the row gives wins over them).

    Edition 2 gives L-BFGS jobs of >= 256 px ``amp=auto`` (bf16 convolutions where the device
    has bf16 units), which measured the tutorial's quality 1.7x sooner there, fp32 1.1x
    (bench/run.py, README "Performance"). Adam and SGD keep edition 1: bf16 was not measured
    to keep their quality.

    Edition 3 adds, for L-BFGS jobs, ``restarts=2``: L-BFGS without line search can blow up
    late on a real photo x painting pair and never come back (its history then only points
    further out); going back to the best image with a fresh history, in fp32, lets such a job
    finish instead of ending ``diverged``. A job that never blows up runs as in edition 2.

    Edition 4 starts L-BFGS transfer jobs of >= 1024 px that give no ``init`` from the photo
    (``init=content``): from noise, a whole-size start spends hundreds of full-price iterations
    organising noise; measured at 1024 px (bench/pyramid.py), after 120 iterations it was
    still at twice the unstyled photo's loss, where a start from the photo was at 0.9x (2.3x
    lower at equal cost). A coarse-to-fine pyramid (``multires``) from noise was measured too and
    left a choice: 1.07-1.09x sooner at that budget, no sooner at 256 and 512 px; from the
    photo it reached one level's loss later or never (256 and 512 px)."""
    if edition not in EDITIONS:
        raise PresetError(f"unknown defaults edition {edition!r}; choose one of {list(EDITIONS)}")
    if edition == FIRST_DEFAULTS or resolved["optimizer"] != "lbfgs":
        return {}
    values: dict[str, Any] = {"restarts": LBFGS_RESTARTS} if edition >= 3 else {}
    if resolved["size"] >= AMP_FROM:
        values["amp"] = "auto"
    if edition >= 4:
        values.update(_photo_start(resolved))
    return values


def _photo_start(resolved: Mapping[str, Any]) -> dict[str, Any]:
    big = resolved["size"] >= PHOTO_START_FROM and resolved["mode"] == Mode.TRANSFER.value
    return {"init": "content"} if big else {}


class PresetError(ValueError):
    """An unknown preset name."""


def apply_preset(name: str | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` over the preset's values (what the user gives always wins)."""
    if name is None:
        return dict(params)
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**{k: s.value for k, s in PRESETS[name].items()}, **params}
