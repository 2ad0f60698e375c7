"""What a long-lived worker keeps (targets, a training worker's photos) stays within its bytes."""

import torch

from pipeline.run.tensor_lru import TensorLRU


def test_the_least_recently_used_tensors_go_first_and_the_newest_always_stays():
    cache = TensorLRU(max_bytes=3 * 400)  # three 100-float tensors
    for k in "abc":
        cache[k] = torch.zeros(100)
    cache["a"]  # used: now the newest of the three
    cache["d"] = torch.zeros(100)
    assert list(cache) == ["c", "a", "d"] and cache.nbytes == 1200
    cache["big"] = torch.zeros(1000)  # over the budget alone: kept, everything else out
    assert list(cache) == ["big"] and cache.nbytes == 4000


def test_replacing_a_tensor_counts_only_the_new_one():
    cache = TensorLRU(max_bytes=10_000)
    cache["a"] = torch.zeros(100)
    cache["a"] = torch.zeros(200)
    assert cache.nbytes == 800
