"""Optimizers and loss terms are registries: adding one is one entry (plus its test)."""

import dataclasses

import pytest
import torch
from helpers import job_spec

from nst_ops import optimizers
from nst_ops.spec import JobSpec
from nst_ops.transfer import stylize, stylize_batch
from nst_ops.vgg import VGGFeatures

LAYERS = ("relu1_1", "relu2_1")


@pytest.fixture(scope="module")
def net():
    return VGGFeatures("vgg19", LAYERS, seed=0)


def images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 16, 20, generator=g) for _ in range(n)]


def spec(**kw):
    return job_spec(content_layers=("relu2_1",), style_layers=LAYERS, size=20, iterations=5, **kw)


def test_an_optimizer_added_as_one_entry_runs_and_batches(net, monkeypatch):
    entry = optimizers.OptimizerKind(
        optimizers.per_image("RMSprop", "momentum"), default_lr=0.01, batchable=True
    )
    monkeypatch.setitem(optimizers.OPTIMIZERS, "rmsprop", entry)
    s = spec(optimizer="rmsprop")
    assert s.learning_rate == 0.01 and s.batchable
    (c1, c2), (st,) = images(2, 1), images(1, 2)
    out = stylize(s, net, c1, [st])
    assert out.status == "ok" and out.final["total"] < out.trace[0]["total"]
    other = dataclasses.replace(s, lr=0.02, seed=3)
    together = stylize_batch([s, other], net, [c1, c2], [[st], [st]])
    assert together[0].final["total"] == pytest.approx(out.final["total"], rel=1e-4)


def test_an_unregistered_optimizer_is_refused_listing_the_registered_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; choose one of lbfgs"):
        spec(optimizer="rmsprop")


def test_a_loss_term_added_as_one_entry_is_in_the_trace_and_the_results(monkeypatch):
    """A term that pulls the mean brightness to 0.5, weighted 10 for every job: one entry.
    The worker's trace and result row pick it up by name, and it changes the optimisation."""
    import fsspec
    import pyarrow.parquet as pq
    from helpers import TINY, png_bytes

    from nst_ops import losses
    from pipeline.jobs.job import Job
    from pipeline.run.options import RunOptions
    from pipeline.run.task import run_job
    from pipeline.store.storage import Store

    def brightness(i: losses.TermInputs):
        return (i.x.mean(dim=(1, 2, 3)) - 0.5).pow(2) * 1e3, {}

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/reg/c.png", png_bytes(seed=1))
    fs.pipe_file("/reg/s.png", png_bytes(seed=2))
    job_spec = JobSpec(**{**TINY, "content_layers": ("relu2_1",), "style_layers": ("relu1_1",)})
    job = Job(job_spec, "memory://reg/c.png", ("memory://reg/s.png",), 0)
    plain = run_job(job, RunOptions(out="memory://reg/out0"))
    monkeypatch.setitem(losses.TERMS, "brightness", losses.LossTerm(brightness, lambda s: 10.0))
    row = run_job(job, RunOptions(out="memory://reg/out1"))
    assert row["status"] == "ok" and "final_brightness" in row and "final_brightness" not in plain
    trace = pq.read_table(fs.open(f"/reg/out1/{row['trace_uri']}", "rb")).to_pylist()
    assert all("brightness" in r for r in trace) and trace[0]["brightness"] > 0
    assert row["final_total"] != plain["final_total"]
    assert Store("memory://reg/out1").committed()[job.id]["final_brightness"] >= 0
