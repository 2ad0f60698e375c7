"""Build manifests/seed_study/manifest.parquet: the experiments of the study in ../shared/seed/.

    python manifests/seed_study/build.py             # offline: shipped VGG19 conv1_1..conv3_1
    python manifests/seed_study/build.py --imagenet  # the study's exact settings (torchvision
                                                     # ImageNet VGG16/VGG19 weights, internet)

Every row starts from the study's settings (the `study` preset: VGG16, average pooling, SGD, white
noise, 1,000 iterations, style resized to the content) and changes only what its experiment
varies. Layers follow the study's convention: conv layers (the tutorial it ran prints losses of
conv layers), for transfer rows and the sweep alike. Offline, the shipped weights stop at
conv3_1 and exist for VGG19 only, so the base network is VGG19 and the layer sets are cut to
conv3_1 (see README.md beside this file for what that changes). Each experiment is one tagged row
(tag_experiment); its list-valued columns are its grid axes. Jobs shared by experiments (the base
configuration) collapse to one job id and appear in each experiment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa

from pipeline.jobs.manifest import write_manifest

HERE = Path(__file__).resolve().parent
IMAGENET = "--imagenet" in sys.argv

if IMAGENET:  # the study: VGG16, Gatys' five style layers as the base, +3 and -2 (seed l.88-114)
    backbone, weights, other_weights, size = "vgg16", "imagenet", "imagenet", 256
    content_layers = ["conv4_2"]
    base = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    more = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv4_1", "conv5_1"]
    fewer = ["conv1_1", "conv2_1", "conv3_1"]
else:  # shipped: real VGG19 conv1_1..conv3_1 only, no VGG16 weights
    backbone, weights, other_weights, size = (
        "vgg19",
        "../weights/vgg19_tv_features_conv1_1-conv3_1.pth",
        "random:0",
        128,
    )
    content_layers = ["conv3_1"]
    base = ["conv1_1", "conv2_1", "conv3_1"]
    more = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]  # every conv up to conv3_1: +2
    fewer = ["conv1_1"]  # -2

# Paths relative to this folder: a manifest's relative paths resolve against its own location.
content = "../images/content/tubingen.jpg"
starry = "../images/style/starry_night.jpg"
wave = "../images/style/great_wave.jpg"

BASE = {
    "content_uri": content,
    "style_uri": starry,
    "mode": "transfer",
    "preset": "study",
    "backbone": [backbone],
    "weights": [weights],
    "content_layers": [content_layers],
    "style_layers": [base],
    "optimizer": ["sgd"],
    "lr": [3e-7],
    "size": [size],
    "log_every": [10],
}


def row(experiment: str, **changes) -> dict:
    return {**BASE, "tag_experiment": experiment, **changes}


rows = [
    # seed l.34 and l.77: SGD (the method) vs Adam (the study found it more realistic)
    row("optimizer"),
    row("optimizer", optimizer=["adam"], lr=[0.02]),
    # VGG16 vs VGG19 (seed l.138). Offline both networks get random:0 weights: architecture only.
    row(
        "backbone",
        backbone=["vgg16", "vgg19"],
        weights=[weights if IMAGENET else other_weights],
        content_layers=[["conv4_2"]],
        style_layers=[["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]],
        # random weights give another loss scale: Adam, whose step does not depend on it
        **({} if IMAGENET else {"optimizer": ["adam"], "lr": [0.02]}),
    ),
    # the base style layers vs more vs fewer (seed l.88-89: +3 "much worse"; l.113-114: -2 "almost
    # the same")
    row("style_layers", style_layers=[base, more, fewer]),
    # average (the study's choice, seed l.34: it "improves the gradient flow") vs max pooling, at
    # the same SGD step, and at a step 100x smaller (max pooling's loss from noise is ~125x avg's)
    row("pooling", pooling=["avg", "max"]),
    row("pooling", pooling=["max"], lr=[3e-9]),
    # ours: the study names alpha and beta (seed l.46-48) but reports no sweep. Adam, whose step
    # does not depend on the loss scale, so one lr serves every beta (SGD's would not)
    row("alpha_beta", style_weight=[1e5, 1e6, 1e7, 1e8], optimizer=["adam"], lr=[0.02]),
    # ours, not the study's: an SGD step too large for this loss scale, to show divergence detection
    row("divergence", lr=[1e-6], iterations=[100]),
    # style reconstruction from white noise for growing layer sets (seed l.140-146), two paintings
    *(
        row("layer_sweep", content_uri=None, style_uri=painting, mode="layer_sweep")
        for painting in (starry, wave)
    ),
]

keys = list(dict.fromkeys(k for r in rows for k in r))
table = pa.Table.from_pylist([{k: r.get(k, BASE.get(k)) for k in keys} for r in rows])
dest = HERE / "manifest.parquet"
write_manifest(table, str(dest))
print(f"wrote {dest.relative_to(Path.cwd()) if dest.is_relative_to(Path.cwd()) else dest}")
