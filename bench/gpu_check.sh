#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the CUDA tests, then the CUDA benchmarks (512 px
# per-iteration vs the tutorial, GEMM peaks, TFLOP/s, memory, ms per image by batch size).
#
#   OUT=/some/folder bash bench/gpu_check.sh     # logs and bench/results/cuda.* land in $OUT
#
# Made for a GPU machine lent for a few minutes (~6 min planned; its timeouts add up to 580 s,
# inside one 10-minute device call). It runs from the repo root without installing and needs
# python3 with torch, torchvision, pyarrow, fsspec, typer, rich, jinja2, pytest and PIL.
# Without Ray the `nst run` GPU test skips; the rest still runs.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    2>&1 | tee -a "$OUT/gpu.txt"
timeout 100 python3 -m pytest -q -rs -p no:cacheprovider tests/run/test_cuda.py \
    tests/engine/test_lbfgs_history.py 2>&1 \
    | tee "$OUT/tests.log" || status=1
timeout 200 python3 -m bench.run --device cuda --repeats 5 2>&1 | tee "$OUT/run.log" || status=1
cp bench/results/cuda.md bench/results/cuda.json "$OUT"/ 2>/dev/null
for layers in gatys real; do
    timeout 70 python3 -m bench.batching --device cuda --layers "$layers" --sizes 512 \
        --batches 1 2 4 8 16 --steps 5 2>&1 | tee -a "$OUT/batching.log" || status=1
done
# prints (#29): peak GPU memory and s/step, whole-image vs 1024-px tiles, beside the
# estimate; the 4096-px tiled job is the one no 80 GB card holds untiled with L-BFGS
timeout 100 python3 -m bench.prints --device cuda --untiled 1024 2048 --tiled 2048 4096 \
    --tile 1024 --iterations 3 --history-size 20 2>&1 | tee "$OUT/prints.log" || status=1
# the same 4096-px job with its L-BFGS pairs in host memory: s/step against the row above
timeout 40 python3 -m bench.prints --device cuda --untiled --tiled 4096 --tile 1024 \
    --iterations 3 --history-size 20 --history-device host --name prints_host 2>&1 \
    | tee -a "$OUT/prints.log" || status=1
cp bench/results/prints_cuda.md bench/results/prints_host_cuda.md "$OUT"/ 2>/dev/null
exit $status
