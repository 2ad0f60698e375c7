"""L-BFGS with its history in one preallocated buffer, in float32 or a smaller type.

The (s, y) pairs are most of a large job's memory (100 pairs of image-sized vectors: 10 GB at
2048 px in float32). torch's LBFGS keeps them as separate tensors, each allocated in a
different iteration between the evaluations' activations; glibc's heap then cannot return
the holes the activations leave, and a 300-iteration job's peak grew far past its live
tensors (docs/performance.md). Here the pairs live in one ring buffer per list, allocated
once: the same values (float32: the very numbers torch would read), no long-lived small
blocks. In bfloat16 the buffer takes half the memory; torch's two-loop recursion reads one
pair at a time, so each is widened to float32 when read (one float32 copy at a time), and
the curvature 1/(y.s) and the step itself stay float32 (computed before a pair is stored).

On a GPU the buffer can live in host memory instead (``on_host``, pinned): the GPU then holds
no history, and every pair crosses PCIe twice per step (the two-loop recursion reads s and y
in each of its two loops: 4 x history x 12 bytes per pixel in float32, 8 GB per step at 4096
px with history 10, ~0.3 s at 25 GB/s; half in bfloat16)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

HISTORY_KEYS = ("old_dirs", "old_stps")  # torch.optim.LBFGS's lists of y and s


class PairHistory:
    """What torch's LBFGS does with its lists (len, append, pop(0), [i]) over a ring buffer
    of ``capacity`` rows in ``dtype``; rows read back as float32 on the vectors' device,
    stored there or (``on_host``) in host memory."""

    def __init__(self, capacity: int, dtype: torch.dtype, on_host: bool = False) -> None:
        self.capacity, self.dtype, self.on_host = capacity, dtype, on_host
        self.rows: torch.Tensor | None = None
        self.device = torch.device("cpu")  # the vectors' device, set by the first pair
        self.start = self.count = 0

    def __len__(self) -> int:
        return self.count

    def append(self, t: torch.Tensor) -> None:
        if self.rows is None:
            self.device = t.device
            self.rows = self._allocate(t.numel())
        if self.count == self.capacity:  # torch pops first (its ro list must stay aligned)
            raise IndexError(f"L-BFGS's history is full ({self.capacity} pairs)")
        self.rows[(self.start + self.count) % self.capacity].copy_(t.reshape(-1))
        self.count += 1

    def pop(self, index: int = 0) -> None:
        if index != 0 or not self.count:
            raise IndexError("L-BFGS's history drops only its oldest pair")
        self.start, self.count = (self.start + 1) % self.capacity, self.count - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.count:
            raise IndexError(i)
        assert self.rows is not None
        row = self.rows[(self.start + i) % self.capacity]
        return row.to(self.device, non_blocking=True).float()  # on the device, float32: itself

    def _allocate(self, numel: int) -> torch.Tensor:
        """Pinned host memory for a GPU's pairs (copies to and from it are DMA); else with the
        vectors."""
        shape, away = (self.capacity, numel), self.on_host and self.device.type != "cpu"
        if not away:
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        return torch.empty(shape, dtype=self.dtype, pin_memory=self.device.type == "cuda")


class CompactLBFGS(torch.optim.LBFGS):
    """torch's L-BFGS, its history in PairHistory buffers of ``history_dtype`` with room for
    ``capacity`` pairs (a job's iterations, when fewer than its history_size: the buffer is
    allocated whole). torch makes plain lists on the first iteration (and after a restart
    drops the state); each step hands them over while they are still empty."""

    def __init__(
        self,
        params: Any,
        history_dtype: torch.dtype,
        capacity: int,
        on_host: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(params, **options)
        self.history_dtype, self.capacity = history_dtype, min(capacity, options["history_size"])
        self.on_host = on_host

    def step(self, closure: Callable[[], float]) -> Any:  # type: ignore[override]
        loss = super().step(closure)  # type: ignore[no-untyped-call]
        state = self.state[self._params[0]]
        for key in HISTORY_KEYS:
            held = state.get(key)
            if held is not None and not isinstance(held, PairHistory):
                history = PairHistory(self.capacity, self.history_dtype, self.on_host)
                for t in held:
                    history.append(t)
                state[key] = history
        return loss
