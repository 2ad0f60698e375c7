"""L-BFGS restarts: a blow-up goes back to the best image with a fresh history (and fp32),
a bounded number of times, before a job counts as diverged."""

from pathlib import Path

import pytest
import torch
from helpers import job_spec

from nst_ops.loop import RESTART_AFTER, Terms, forget_state, optimize
from nst_ops.presets import LATEST_DEFAULTS
from nst_ops.spec import JobSpec
from nst_ops.vocab import Status


class SpikingObjective:
    """A quadratic whose loss jumps 1e6x from evaluation ``at`` on and stays there until a
    restart is reported (``heals``), or for good: a blow-up L-BFGS never leaves by itself."""

    def __init__(self, at: int, heals: bool):
        self.calls, self.at, self.heals, self.restarted = 0, at, heals, False
        self.target = torch.full((1, 3, 8, 8), 0.3)

    def __call__(self, x: torch.Tensor) -> Terms:
        self.calls += 1
        loss = ((x - self.target) ** 2).flatten(1).sum(1)
        if self.calls >= self.at and not (self.heals and self.restarted):
            loss = loss * 1e6 + 1e3
        return Terms(loss, {"content": loss})

    def restart(self) -> None:
        self.restarted = True


def _run(restarts: int, heals: bool, iterations: int = 40):
    f = SpikingObjective(at=15, heals=heals)
    spec = job_spec(optimizer="lbfgs", iterations=iterations, restarts=restarts,
                    divergence_patience=50)  # fmt: skip
    x0 = torch.full((1, 3, 8, 8), 0.9)
    (out,) = optimize(f, x0, spec, on_restart=f.restart)
    return out, f


def test_without_restarts_a_blow_up_that_lasts_to_the_end_is_diverged():
    out, _ = _run(restarts=0, heals=True)
    assert out.status == Status.DIVERGED and out.restarts == []


def test_a_restart_goes_back_to_the_best_image_and_the_job_finishes():
    out, f = _run(restarts=2, heals=True)
    assert out.status == Status.OK and f.restarted
    assert out.restarts == [15 + RESTART_AFTER - 1]  # the 5th iteration of the spike
    assert out.final["total"] < 1e-6  # it went on converging from the best image
    assert out.iterations == 40


def test_restarts_are_bounded_and_then_the_job_is_diverged():
    out, _ = _run(restarts=2, heals=False, iterations=60)
    assert len(out.restarts) == 2 and out.status == Status.DIVERGED
    assert out.restarts[1] - out.restarts[0] == RESTART_AFTER


def test_a_restart_forgets_the_lbfgs_history():
    p = torch.zeros(4, requires_grad=True)
    opt = torch.optim.LBFGS([p], max_iter=1)

    def closure():
        opt.zero_grad()
        loss = ((p - 1) ** 2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    assert opt.state[p]["old_dirs"]
    forget_state(opt, [p], 0)
    assert p not in opt.state


def test_the_latest_defaults_give_lbfgs_jobs_restarts_and_others_none():
    assert JobSpec.from_dict({}, defaults=LATEST_DEFAULTS).restarts == 2
    assert JobSpec.from_dict({"optimizer": "adam"}, defaults=LATEST_DEFAULTS).restarts == 0
    assert JobSpec.from_dict({}, defaults=2).restarts == 0  # earlier editions: as before


def test_a_real_pair_that_can_blow_up_late_ends_ok_with_the_latest_defaults(ray_cpu, tmp_path):
    """chelsea x Composition VII at 256 px, the defaults (L-BFGS without line search,
    init=content, beta 1e7, the shipped weights' relu layers, 320 iterations): on the AMD EPYC
    machines here the loss jumped from ~3.4e6 to ~1.6e10 at iteration ~305 and, without
    restarts, stayed there (found by sweeping the 4 shared photos x 5 paintings; 1 of 17 blew
    up). Whether and where it spikes differs between machines and even between two processes
    on one machine (oneDNN picks its kernels per process; on the Intel CI machines it spiked at
    ~305 and came back), so the job is checked against its own trace: it ends ok; a restart
    comes right after RESTART_AFTER - 1 traced iterations above divergence_factor x its best
    (the restart replaces the iteration that triggered it, whose row is not traced); and it
    ends no worse than its best before the spike."""
    import pyarrow.parquet as pq
    from helpers import run_manifest

    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "images"
    weights = Path(__file__).resolve().parents[2] / "manifests/weights"
    if not (shared / "content/chelsea.jpg").exists():
        pytest.skip("the shared sample photos are not beside this checkout")
    job = {"content_uri": str(shared / "content/chelsea.jpg"),
           "style_uri": str(shared / "style/composition_vii.jpg"),
           "weights": str(weights / "vgg19_tv_features_conv1_1-conv3_1.pth"),
           "content_layers": ["relu3_1"], "style_layers": ["relu1_1", "relu2_1", "relu3_1"],
           "size": 256, "iterations": 320, "init": "content", "style_weight": 1e7,
           "optimizer": "lbfgs", "log_every": 1}  # fmt: skip
    r, out = run_manifest(tmp_path, [job], "--evaluator", "none")
    assert r.exit_code == 0, r.output
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    print(f"\n{row['status']}, restarted at {row['restarted_at']}")
    assert row["status"] == "ok" and row["restarts"] == 2
    trace = pq.read_table(out / row["trace_uri"]).to_pylist()
    for first in row["restarted_at"][:1]:
        best_before = min(t["total"] for t in trace if t["iteration"] <= first - RESTART_AFTER)
        spike = [t["total"] for t in trace if first - RESTART_AFTER < t["iteration"] < first]
        assert len(spike) == RESTART_AFTER - 1
        assert all(loss > row["divergence_factor"] * best_before for loss in spike)
        assert row["final_total"] <= best_before
