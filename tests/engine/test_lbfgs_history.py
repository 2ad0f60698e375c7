"""L-BFGS's history in bfloat16 (history_dtype): half the bytes of float32, the same steps up
to bf16 rounding of the stored pairs, counted as such by the memory estimate and its advice."""

import pytest
import torch

from nst_ops import memory
from nst_ops.compact_lbfgs import HISTORY_KEYS, CompactLBFGS
from nst_ops.optimizers import OPTIMIZERS, PAIR_RESIDENT
from nst_ops.spec import JobSpec, SpecError

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
    compact, opt = descend(lambda p: CompactLBFGS(p, torch.bfloat16, **options), 30)
    exact, _ = descend(lambda p: torch.optim.LBFGS(p, **options), 30)
    state = opt.state[opt._params[0]]
    for key in HISTORY_KEYS:
        held = list.__iter__(state[key])  # as stored, not as read
        assert len(state[key]) == 10 and all(t.dtype == torch.bfloat16 for t in held)
    a, b = quadratic()
    x_star = b / a
    # both converge to the minimum; bf16 pairs perturb each direction by ~2^-9 relative, a
    # preconditioner still positive definite: the same linear convergence, not the same digits
    for x in (compact, exact):
        assert float((x - x_star).norm()) < 1e-4 * float(x_star.norm())


def test_the_first_steps_before_any_pair_is_read_are_identical():
    options = {"lr": 1.0, "max_iter": 1, "history_size": 10}
    compact, _ = descend(lambda p: CompactLBFGS(p, torch.bfloat16, **options), 1)
    exact, _ = descend(lambda p: torch.optim.LBFGS(p, **options), 1)
    assert torch.equal(compact, exact)


def test_a_job_with_a_bfloat16_history_builds_the_compact_optimizer_and_float32_torchs():
    x = [torch.zeros(3, 8, 8, requires_grad=True)]
    bf16 = JobSpec.from_dict({"history_dtype": "bfloat16"})
    assert isinstance(OPTIMIZERS["lbfgs"].make([bf16], x).inner[0], CompactLBFGS)
    plain = OPTIMIZERS["lbfgs"].make([JobSpec()], x).inner[0]
    assert type(plain) is torch.optim.LBFGS
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
    assert "tile=512 and history_dtype=bfloat16" in memory.advice(spec, budget)
