"""Shared fixtures: tiny random images and a tiny seeded network, nothing from outside."""

import pytest
import torch


@pytest.fixture
def content() -> torch.Tensor:
    return torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def style() -> torch.Tensor:
    return torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(2))
