"""L-BFGS's history in one preallocated buffer (the very numbers torch's lists would hold, in
float32), or in bfloat16 (history_dtype): half the bytes, the same steps up to bf16 rounding
of the stored pairs, counted as such by the memory estimate and its advice."""

import pytest
import torch

from nst_ops import compact_lbfgs, memory, transfer
from nst_ops.compact_lbfgs import HISTORY_KEYS, CompactLBFGS, PairHistory
from nst_ops.optimizers import OPTIMIZERS, PAIR_RESIDENT
from nst_ops.spec import JobSpec, SpecError
from nst_ops.vgg import VGGFeatures

DIM = 4096


def quadratic() -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) = 1/2 x'Ax - b'x, A diagonal with condition number 10: minimum at b / a."""
    g = torch.Generator().manual_seed(0)
    return 1 + 9 * torch.rand(DIM, generator=g), torch.randn(DIM, generator=g)


def descend(opt_of, steps: int) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    a, b = quadratic()
    x = torch.zeros(DIM, requires_grad=True)
    opt = opt_of([x])

    def closure() -> float:
        opt.zero_grad()
        f = 0.5 * (a * x * x).sum() - (b * x).sum()
        f.backward()
        return float(f.detach())

    for _ in range(steps):
        opt.step(closure)
    return x.detach(), opt


def test_a_bfloat16_history_holds_bfloat16_pairs_and_converges_as_float32_does():
    options = {"lr": 1.0, "max_iter": 1, "history_size": 10}
    compact, opt = descend(lambda p: CompactLBFGS(p, torch.bfloat16, 30, **options), 30)
    exact, _ = descend(lambda p: torch.optim.LBFGS(p, **options), 30)
    state = opt.state[opt._params[0]]
    for key in HISTORY_KEYS:
        rows = state[key].rows  # as stored, not as read
        assert len(state[key]) == 10 and rows.dtype == torch.bfloat16 and rows.shape == (10, DIM)
    a, b = quadratic()
    x_star = b / a
    # both converge to the minimum; bf16 pairs perturb each direction by ~2^-9 relative, a
    # preconditioner still positive definite: the same linear convergence, not the same digits
    for x in (compact, exact):
        assert float((x - x_star).norm()) < 1e-4 * float(x_star.norm())


def test_the_first_steps_before_any_pair_is_read_are_identical():
    options = {"lr": 1.0, "max_iter": 1, "history_size": 10}
    compact, _ = descend(lambda p: CompactLBFGS(p, torch.bfloat16, 1, **options), 1)
    exact, _ = descend(lambda p: torch.optim.LBFGS(p, **options), 1)
    assert torch.equal(compact, exact)


def test_a_float32_buffer_gives_exactly_the_job_torchs_own_lists_give(monkeypatch):
    spec = JobSpec.from_dict({"weights": "random:0", "size": 48, "iterations": 40,
                              "history_size": 7, "style_weight": 1e3})  # fmt: skip
    net = VGGFeatures(spec.backbone, spec.active_layers, spec.pooling, seed=0)
    g = torch.Generator().manual_seed(1)
    content, style = torch.rand(3, 48, 48, generator=g), torch.rand(3, 48, 48, generator=g)
    ours = transfer.stylize(spec, net, content, [style])
    monkeypatch.setattr(compact_lbfgs.CompactLBFGS, "step", torch.optim.LBFGS.step)
    torchs = transfer.stylize(spec, net, content, [style])
    assert torch.equal(ours.image, torchs.image) and ours.trace == [
        r | {"seconds": o["seconds"]} for r, o in zip(torchs.trace, ours.trace, strict=True)
    ]


def test_the_buffer_keeps_the_newest_pairs_in_order_and_only_as_many_as_the_job_takes():
    history = PairHistory(3, torch.float32)
    for k in range(5):
        if len(history) == 3:
            history.pop(0)
        history.append(torch.full((2, 2), float(k)))
    assert [float(history[i][0]) for i in range(len(history))] == [2.0, 3.0, 4.0]
    with pytest.raises(IndexError, match="full"):  # never drops a pair torch's ro list keeps
        history.append(torch.zeros(2, 2))
    x = [torch.zeros(3, 8, 8, requires_grad=True)]
    short = JobSpec.from_dict({"iterations": 3})  # history_size 100: room for 3 pairs
    opt = OPTIMIZERS["lbfgs"].make([short], x).inner[0]
    assert isinstance(opt, CompactLBFGS) and opt.capacity == 3


def test_a_bfloat16_history_is_a_choice_and_nothing_else_is():
    x = [torch.zeros(3, 8, 8, requires_grad=True)]
    bf16 = JobSpec.from_dict({"history_dtype": "bfloat16"})
    assert OPTIMIZERS["lbfgs"].make([bf16], x).inner[0].history_dtype == torch.bfloat16
    with pytest.raises(SpecError, match="unknown history_dtype 'float16'; choose one of float32"):
        JobSpec.from_dict({"history_dtype": "float16"})


def test_the_estimate_counts_a_bfloat16_history_at_half_and_advice_offers_it():
    pair = 2 * 3 * 1024 * 1024 * 4 * PAIR_RESIDENT  # at its resident cost
    full, compact = (JobSpec.from_dict({"size": 1024, "history_dtype": d})
                     for d in ("float32", "bfloat16"))  # fmt: skip
    saved = memory.estimate(full).optimizer_state - memory.estimate(compact).optimizer_state
    assert saved == pytest.approx(100 * pair / 2, abs=2)
    spec = JobSpec.from_dict({"size": 4096})
    budget = memory.estimate(JobSpec.from_dict({"size": 4096, "tile": 512,
                                                "history_dtype": "bfloat16"})).total  # fmt: skip
    assert "tile=512 and history_dtype=bfloat16" in memory.advice(spec, budget)  # just fits


def test_a_history_in_host_memory_is_a_choice_and_on_a_cpu_job_the_very_same_steps():
    options = {"lr": 1.0, "max_iter": 1, "history_size": 10}
    host, opt = descend(lambda p: CompactLBFGS(p, torch.float32, 30, True, **options), 30)
    same, _ = descend(lambda p: CompactLBFGS(p, torch.float32, 30, False, **options), 30)
    assert torch.equal(host, same)  # a CPU job's host memory is where its image is
    assert opt.state[opt._params[0]]["old_dirs"].rows.device.type == "cpu"
    x = [torch.zeros(3, 8, 8, requires_grad=True)]
    spec = JobSpec.from_dict({"history_device": "host"})
    assert OPTIMIZERS["lbfgs"].make([spec], x).inner[0].on_host
    with pytest.raises(SpecError, match="unknown history_device 'disk'; choose one of same"):
        JobSpec.from_dict({"history_device": "disk"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_jobs_history_in_host_memory_is_pinned_and_steps_as_on_the_gpu():
    def on_gpu(on_host: bool):
        a, b = (t.cuda() for t in quadratic())
        x = torch.zeros(DIM, device="cuda", requires_grad=True)
        opt = CompactLBFGS([x], torch.float32, 30, on_host, lr=1.0, max_iter=1, history_size=10)

        def closure() -> float:
            opt.zero_grad()
            f = 0.5 * (a * x * x).sum() - (b * x).sum()
            f.backward()
            return float(f.detach())

        for _ in range(30):
            opt.step(closure)
        return x.detach(), opt.state[x]["old_stps"].rows

    (host, rows), (same, gpu_rows) = on_gpu(True), on_gpu(False)
    assert rows.device.type == "cpu" and rows.is_pinned() and gpu_rows.device.type == "cuda"
    assert torch.equal(host, same)  # the same float32 pairs, read back on the GPU


def test_the_estimate_moves_a_host_history_off_the_gpu_and_advice_offers_it_on_gpus():
    same, host = (JobSpec.from_dict({"size": 2048, "history_size": 20, "history_device": d})
                  for d in ("same", "host"))  # fmt: skip
    pairs = 2 * 20 * 3 * 2048 * 2048 * 4 * PAIR_RESIDENT
    vector = 3 * 2048 * 2048 * 4
    a, b = memory.estimate(same), memory.estimate(host)
    assert a.host_state == 0 and b.host_state == pytest.approx(pairs, abs=2)
    assert a.on_gpu - b.on_gpu == pytest.approx(pairs - vector, abs=2)  # one pair read back
    assert b.total - a.total == pytest.approx(vector, abs=2)  # on a CPU: the same place
    big = {"size": 4096, "tile": 1024}  # history 100: 80 GB of pairs, most of the job
    gpu = memory.estimate(JobSpec.from_dict(big | {"history_device": "host"})).on_gpu + 2**20
    text = memory.advice(JobSpec.from_dict(big), gpu, on_gpu=True)
    assert "GiB a GPU has; fits with size=" in text and text.endswith(" or history_device=host")
    assert "history_device" not in memory.advice(JobSpec.from_dict(big), gpu)  # a CPU: no other
