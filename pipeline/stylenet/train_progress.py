"""`nst train`'s live line: step, loss, images/s and time left, as rank 0 reports them through
a Ray queue (a put per step: about a millisecond beside a training step; ray.train.report
costs ~1 s).
A bar on a terminal; elsewhere (cron, CI, `| tee`) a plain line every ``every`` seconds, and
nothing at all with --no-progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def _equal_steps(first: int, last: int) -> float:
    return float(last - first)


class TrainProgress:
    """``work(first, last)``: the cost of steps first+1..last in equal units (coarse steps
    cost less), so the time left holds across a change of crop."""

    def __init__(
        self, steps: int, start: int, enabled: bool, queue: Any, every: float = 30.0,
        work: Callable[[int, int], float] = _equal_steps,
    ):  # fmt: skip
        self.steps, self.start, self.enabled, self.queue, self.every = (
            steps,
            start,
            enabled,
            queue,
            every,
        )
        self.work = work
        self.tty = enabled and sys.stderr.isatty()
        self.last: dict[str, float] = {}
        self.began = self.printed = time.time()
        self.bar = Progress(
            TextColumn("[bold]nst train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[line]}"),
            disable=not self.tty, console=Console(stderr=True),
        )  # fmt: skip
        self.task = self.bar.add_task("train", total=steps, completed=start, line="")

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self.bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            self.bar.stop()

    def line(self) -> str:
        row = self.last
        if not row:
            return "starting the workers"
        step = int(row["step"])
        left = self.work(step, self.steps)
        rate = self.work(self.start, step) / max(time.time() - self.began, 1e-6)
        eta = f"{left / rate / 60:.1f} min left" if rate > 0 else "?"
        return (
            f"step {step}/{self.steps} · loss {row['total']:.4g} · "
            f"{row.get('images_per_s', 0):.2f} images/s · {eta}"
        )

    def follow(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for rank 0's next step and show it (the driver's main
        thread runs this while the training runs, so Ctrl-C reaches it)."""
        if self.queue is None or not self.enabled:
            time.sleep(timeout)
            return
        from ray.util.queue import Empty

        try:
            self.last = self.queue.get(timeout=timeout)
        except Empty:
            return
        self.bar.update(self.task, completed=int(self.last["step"]), line=self.line())
        if not self.tty and time.time() - self.printed >= self.every:
            self.printed = time.time()
            print(f"nst train: {self.line()}", file=sys.stderr, flush=True)
