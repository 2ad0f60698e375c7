"""A job's peak memory is known before it runs: the estimate follows the measured peak of a real
optimisation, tiles bound its activations, and its parts are derived from the network."""

import json
import subprocess
import sys

import pytest
import torch

from nst_ops import memory
from nst_ops.optimizers import PAIR_RESIDENT
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures

PEAK = """
import ctypes, json, sys, threading, time, torch
from nst_ops import transfer
from nst_ops.spec import JobSpec
from nst_ops.vgg import VGGFeatures
def status(*keys):
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return sum(int(fields[k].split()[0]) * 1024 for k in keys)
torch.set_num_threads(1)
spec = JobSpec.from_dict(json.loads(sys.argv[1]))
ext = VGGFeatures(spec.backbone, spec.active_layers, spec.pooling, seed=0)
content, style = torch.rand(3, spec.size, spec.size), torch.rand(3, spec.size, spec.size)
ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed pages back: the job cannot reuse them unseen
open("/proc/self/clear_refs", "w").write("5")  # the kernel's high-water mark starts here
before, peak, done = status("RssAnon"), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.002)
watcher = threading.Thread(target=sample)
watcher.start()
transfer.stylize(spec, ext, content, [style])
done.set()
watcher.join()
# The high-water mark sees a peak too short for the 2-ms samples; less the file pages held at
# the end (never fewer than at the peak: they only grow here), it is anonymous memory at most.
print(max(peak[0], status("VmHWM") - status("RssFile", "RssShmem")) - before)
"""


def measured_peak(params: dict) -> int:
    """Peak anonymous memory of one job above its process (weights and torch already loaded),
    sampled every 2 ms (a backward's peak lasts far longer)."""
    out = subprocess.run([sys.executable, "-c", PEAK, json.dumps(params)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


def job_part(spec: JobSpec) -> int:
    est = memory.estimate(spec)
    return est.total - est.process - est.weights


def cpu() -> str:
    """The CPU's model, for a failure's message: oneDNN's kernels and so the peaks differ by CPU."""
    lines = open("/proc/cpuinfo").read().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "?")


def bounds(est: int, peak: int) -> bool:
    """Never below the measured peak (a job it admits is not killed), and its per-pixel part
    not above it by more than 25% (at test sizes the fixed workspace is most of the estimate,
    so the ratio of the totals says little)."""
    return peak <= est and est - memory.WORKSPACE <= 1.25 * peak


@pytest.mark.parametrize("size", [128, 256, 320])
def test_the_estimate_bounds_a_measured_peak(size):
    params = {"weights": "random:0", "size": size, "iterations": 2, "init": "content"}
    peak = measured_peak(params)
    est = job_part(JobSpec.from_dict(params))
    assert bounds(est, peak), (size, est / 2**20, peak / 2**20, cpu())


def test_a_tiled_estimate_bounds_the_measured_peak_and_tiles_lower_it():
    layers = {"content_layers": ["relu3_1"], "style_layers": ["relu1_1", "relu2_1", "relu3_1"]}
    params = {"weights": "random:0", "size": 256, "iterations": 2, "init": "content", **layers}
    tiled = {**params, "tile": 64}
    peak, untiled = measured_peak(tiled), measured_peak(params)
    est = job_part(JobSpec.from_dict(tiled))
    assert peak < 0.75 * untiled  # tiles do bound the activations
    assert bounds(est, peak), (est / 2**20, peak / 2**20, cpu())


def test_tiles_bound_the_activations_and_not_the_image_state():
    small, large = (JobSpec.from_dict({"size": s, "tile": 512}) for s in (1024, 8192))
    assert memory.estimate(small).activations == memory.estimate(large).activations
    assert memory.estimate(large).image_state == 64 * memory.estimate(small).image_state


def test_the_lbfgs_history_counts_only_the_steps_it_can_hold():
    few = JobSpec.from_dict({"size": 1024, "iterations": 10})
    full, short = (
        JobSpec.from_dict({"size": 1024}),
        JobSpec.from_dict({"size": 1024, "history_size": 10}),
    )
    per_pair = 2 * 3 * 1024 * 1024 * 4 * PAIR_RESIDENT  # at its resident cost
    saved = memory.estimate(full).optimizer_state - memory.estimate(short).optimizer_state
    assert saved == pytest.approx(90 * per_pair, abs=2)
    assert memory.estimate(few).optimizer_state == memory.estimate(short).optimizer_state


def test_feature_floats_and_weights_are_the_networks_own():
    assert memory.feature_floats("vgg19", "conv5_1") == 611  # 3 + 2x64 + 64 pool ... + 512/256
    net = VGGFeatures("vgg19", ["conv4_2"], seed=0)
    n = sum(p.numel() for p in net.parameters())
    assert memory.weight_bytes("vgg19", "conv4_2") == 4 * n
    h = torch.rand(1, 3, 64, 64)
    outputs = [h := m(h) for m in net.features]
    floats = 3 + sum(o.numel() / 3 for o in outputs) / (64 * 64 / 3)
    assert memory.feature_floats("vgg19", "conv4_2") == pytest.approx(floats)


def test_advice_names_a_size_and_a_tile_that_fit():
    spec = JobSpec.from_dict({"size": 4096, "history_size": 10})
    text = memory.advice(spec, 24 * 2**30)
    size = memory.largest_size(spec, 24 * 2**30)
    assert f"size={size}" in text and "tile=" in text and 2048 < size < 4096
    assert memory.estimate(spec, size).total <= 24 * 2**30 < memory.estimate(spec, size + 16).total


def test_advice_offers_the_largest_tile_that_fits_fewer_margins_being_faster():
    budget = 24 * 2**30
    text = memory.advice(JobSpec.from_dict({"size": 4096, "history_size": 10}), budget)
    tile = int(text.rsplit("tile=", 1)[1])
    assert tile > memory.ADVISED_TILE and tile % memory.TILE_STEP == 0

    def fits(t: int) -> bool:
        spec = JobSpec.from_dict({"size": 4096, "history_size": 10, "tile": t})
        return memory.estimate(spec).total <= budget

    assert fits(tile) and not fits(tile + memory.TILE_STEP)


def test_advice_lowers_the_lbfgs_history_when_tiles_alone_do_not_fit():
    spec = JobSpec.from_dict({"size": 4096})  # L-BFGS, history 100: ~76 GiB resident
    text = memory.advice(spec, 24 * 2**30)
    assert "and history_size=20" in text and "history_dtype" not in text
    tile = int(text.split("tile=")[1].split()[0])
    for t, fits in ((tile, True), (tile + memory.TILE_STEP, False)):  # the largest tile with it
        tiled = JobSpec.from_dict({"size": 4096, "tile": t, "history_size": 20})
        assert (memory.estimate(tiled).total <= 24 * 2**30) is fits
    longer = JobSpec.from_dict({"size": 4096, "tile": 512, "history_size": 50})
    assert memory.estimate(longer).total > 24 * 2**30  # the longest history offered that fits
