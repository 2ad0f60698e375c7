#!/usr/bin/env bash
# Builds manifests/demo.parquet: 2 photos x 2 paintings x style_weight {1e6, 1e7} = 8 L-BFGS
# jobs at 128 px, with the real ImageNet VGG19 weights for conv1_1..conv3_1 shipped beside it (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
nst make-manifest manifests/demo.parquet \
  --content manifests/images/content --style manifests/images/style \
  --set weights=manifests/weights/vgg19_tv_features_conv1_1-conv3_1.pth \
  --set content_layers=relu3_1 --set style_layers=relu1_1,relu2_1,relu3_1 \
  --set size=128 --set iterations=150 --set log_every=10 \
  --set optimizer=lbfgs --set style_weight=1e6,1e7
