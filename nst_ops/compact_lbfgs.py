"""L-BFGS with its history in a smaller type: the (s, y) pairs are most of a large job's
memory (100 pairs of image-sized vectors: 10 GB at 2048 px in float32), and bfloat16 halves
them. torch's two-loop recursion reads one pair at a time, so the pairs are stored compact and
each is widened when read: one float32 copy exists at a time, and the curvature 1/(y.s) and
the step itself stay float32 (computed before a pair is stored)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

HISTORY_KEYS = ("old_dirs", "old_stps")  # torch.optim.LBFGS's lists of y and s


class CompactHistory(list[torch.Tensor]):
    """A list that stores tensors in ``dtype`` and hands them back as float32."""

    def __init__(self, items: Iterable[torch.Tensor], dtype: torch.dtype) -> None:
        super().__init__(t.to(dtype) for t in items)
        self.dtype = dtype

    def append(self, t: torch.Tensor) -> None:
        super().append(t.to(self.dtype))

    def __getitem__(self, i: Any) -> Any:
        return super().__getitem__(i).float()


class CompactLBFGS(torch.optim.LBFGS):
    """torch's L-BFGS, its history kept in ``history_dtype``. torch makes plain lists on the
    first iteration (and after a restart drops the state); each step hands them over."""

    def __init__(self, params: Any, history_dtype: torch.dtype, **options: Any) -> None:
        super().__init__(params, **options)
        self.history_dtype = history_dtype

    def step(self, closure: Callable[[], float]) -> Any:  # type: ignore[override]
        loss = super().step(closure)  # type: ignore[no-untyped-call]
        state = self.state[self._params[0]]
        for key in HISTORY_KEYS:
            held = state.get(key)
            if held is not None and not isinstance(held, CompactHistory):
                state[key] = CompactHistory(held, self.history_dtype)
        return loss
