"""Build manifests/seed_study/manifest.parquet: the experiments of the study in ../shared/seed/.

    python manifests/seed_study/build.py             # offline: shipped VGG19 conv1_1..conv3_1
    python manifests/seed_study/build.py --imagenet  # full VGG16/19 via torchvision (internet)

Each experiment is one tagged row (tag_experiment); its list-valued columns are its grid axes.
Jobs shared by experiments (the base configuration) collapse to one job id.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa

from pipeline.manifest import write_manifest

HERE = Path(__file__).resolve().parent
IMAGENET = "--imagenet" in sys.argv

if IMAGENET:
    weights, vgg16_weights = "imagenet", "imagenet"
    content_layers = ["conv4_2"]
    default = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    more = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv4_1", "conv5_1"]
    fewer = ["conv1_1", "conv2_1", "conv3_1"]
else:  # the shipped file covers conv1_1..conv3_1 only; there are no VGG16 weights offline
    weights = "../weights/vgg19_tv_features_conv1_1-conv3_1.pth"
    vgg16_weights = "random:0"
    content_layers = ["relu3_1"]
    default = ["relu1_1", "relu2_1", "relu3_1"]
    more = ["relu1_1", "relu1_2", "pool1", "relu2_1", "relu2_2", "relu3_1"]
    fewer = ["relu1_1"]

# Paths relative to this folder: a manifest's relative paths resolve against its own location.
content = "../images/content/tubingen.jpg"
starry = "../images/style/starry_night.jpg"
wave = "../images/style/great_wave.jpg"

BASE = {
    "content_uri": content,
    "style_uri": starry,
    "mode": "transfer",
    "backbone": ["vgg19"],
    "weights": [weights],
    "pooling": ["max"],
    "content_layers": [content_layers],
    "style_layers": [default],
    "optimizer": ["lbfgs"],
    "lr": [None],
    "init": ["noise"],
    "style_weight": [1e7],
    "size": [128],
    "iterations": [200],
    "log_every": [10],
    "line_search": [False],
}


def row(experiment: str, **changes) -> dict:
    return {**BASE, "tag_experiment": experiment, **changes}


rows = [
    # SGD vs Adam (and L-BFGS), from the content image; SGD at a step that blows up, as in the study
    row("optimizer", init=["content"], optimizer=["lbfgs"]),
    row("optimizer", init=["content"], optimizer=["adam"], lr=[0.02]),
    row("optimizer", init=["content"], optimizer=["sgd"], lr=[1e-6, 1e-5]),
    # VGG16 vs VGG19. Offline both use random:0 weights (an architecture-only comparison) and
    # Gatys' layers, which reach the blocks where the two networks differ.
    row(
        "backbone",
        backbone=["vgg16", "vgg19"],
        weights=[vgg16_weights],
        style_layers=[["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]],
        content_layers=[["conv4_2"]],
    ),
    # default style layers vs three more vs two fewer
    row("style_layers", style_layers=[default, more, fewer]),
    # max vs average pooling
    row("pooling", pooling=["max", "avg"]),
    # alpha/beta sweep (alpha = 1)
    row("alpha_beta", style_weight=[1e5, 1e6, 1e7, 1e8]),
    # style reconstruction layer sweep from white noise, two paintings (strong-Wolfe line search:
    # plain L-BFGS can overshoot once the loss is nearly zero)
    *(
        row(
            "layer_sweep",
            content_uri=None,
            style_uri=painting,
            mode="layer_sweep",
            style_layers=[[layer.replace("relu", "conv") for layer in default]],
            line_search=[True],
        )
        for painting in (starry, wave)
    ),
]

keys = list(dict.fromkeys(k for r in rows for k in r))
table = pa.Table.from_pylist([{k: r.get(k, BASE.get(k)) for k in keys} for r in rows])
dest = HERE / "manifest.parquet"
write_manifest(table, str(dest))
print(f"wrote {dest.relative_to(Path.cwd()) if dest.is_relative_to(Path.cwd()) else dest}")
