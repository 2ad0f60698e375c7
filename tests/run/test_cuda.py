"""The CUDA path, where a GPU is present (skipped elsewhere; bench/gpu_check.sh runs these first
on a lent GPU machine). Everything else in the suite runs on the CPU, so this is where a
device-only mistake (a tensor left on the CPU, a layout the kernels reject, an amp cast that
leaks into the losses) would show."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest
import torch
from helpers import committed_records, job_spec, nst, table, write_images

from nst_ops.loop import Status
from nst_ops.transfer import stylize, stylize_batch
from nst_ops.vgg import VGGFeatures

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture
def true_fp32():
    """Convolutions in true fp32 (no TF32), so CPU and GPU differ only by summation order."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_cuda_features_in_channels_last_match_the_cpu_ones(true_fp32):
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    cpu = VGGFeatures("vgg19", layers, seed=0)
    gpu = VGGFeatures("vgg19", layers, seed=0).optimised_for(CUDA)
    assert gpu.channels_last  # the CUDA policy
    got, want = gpu(x.to(CUDA)), cpu(x)
    for name in layers:
        assert got[name].dtype == torch.float32 and got[name].device.type == "cuda"
        assert _relative_error(got[name].cpu(), want[name]) < 1e-4  # fp32 summation order only


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_job_on_cuda_lowers_its_loss_with_and_without_amp(content, style, amp, optimizer):
    spec = job_spec(optimizer=optimizer, amp=amp)
    net = VGGFeatures("vgg19", list(spec.active_layers), seed=0, amp=amp).optimised_for(CUDA)
    out = stylize(spec, net, content, [style])
    assert out.status == Status.OK
    assert out.image.device.type == "cpu" and torch.isfinite(out.image).all()
    assert 0 <= float(out.image.min()) and float(out.image.max()) <= 1
    assert out.final["total"] < 0.9 * out.trace[0]["total"]


def test_batched_lbfgs_on_cuda_matches_each_job_alone(content, style, true_fp32):
    """One history per image on the GPU too: the batch gives every job what it gets alone, up
    to fp32 summation order (cuDNN may pick other algorithms for another batch size)."""
    base = job_spec(optimizer="lbfgs", iterations=8, init="content")
    specs = [dataclasses.replace(base, style_weight=w) for w in (1e2, 1e3, 1e4)]
    net = VGGFeatures("vgg19", list(base.active_layers), seed=0).optimised_for(CUDA)
    together = stylize_batch(specs, net, [content] * 3, [[style]] * 3)
    for spec, got in zip(specs, together, strict=True):
        alone = stylize(spec, net, content, [style])
        assert (got.image - alone.image).abs().max() < 1e-3
        assert got.final["total"] == pytest.approx(alone.final["total"], rel=1e-3)


def test_nst_run_pins_jobs_to_the_gpu_and_batches_them_there(tmp_path):
    """Embedded Ray on a GPU machine: tasks ask for a GPU by default, run on CUDA, and batch
    jobs of one content (the GPU default of up to 8 per task)."""
    pytest.importorskip("ray")
    from conftest import start_ray

    start_ray(num_gpus=torch.cuda.device_count())
    try:
        (c,), (s,) = write_images(tmp_path / "c", 1, "g"), write_images(tmp_path / "s", 1, "g")
        rows = [{"content_uri": c, "style_uri": s, "style_weight": [1e3, 1e4, 1e5]}]
        pq.write_table(table(rows, optimizer="lbfgs"), tmp_path / "m.parquet")
        res = nst("run", tmp_path / "m.parquet", "--out", tmp_path / "o", "--no-progress")
        assert res.exit_code == 0, res.output
        records = committed_records(tmp_path / "o").values()
        assert len(records) == 3 and all(r["status"] == "ok" for r in records)
        assert all(r["device"] == "cuda" and r["ray_gpu_ids"] for r in records)
        assert {r["batch_size"] for r in records} == {3}
    finally:
        start_ray(0)
