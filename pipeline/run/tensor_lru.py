"""A byte-bounded LRU of tensors, for what a long-lived worker keeps between jobs or steps."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch


class TensorLRU(OrderedDict[Any, torch.Tensor]):
    """Tensors kept per worker process, bounded by their bytes, least recently used out first
    (the newest always stays): a worker's content features and style Grams, a training
    worker's decoded photos."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes, self.nbytes = max_bytes, 0

    def __getitem__(self, key: Any) -> torch.Tensor:
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key: Any, value: torch.Tensor) -> None:
        if key in self:
            old = super().__getitem__(key)
            self.nbytes -= old.numel() * old.element_size()
        super().__setitem__(key, value)
        self.nbytes += value.numel() * value.element_size()
        while self.nbytes > self.max_bytes and len(self) > 1:
            _, old = self.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
