"""Shared test setup: one thread (CI has 2 cores), deterministic seeds, tiny synthetic images."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def synthetic_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth-plus-edges RGB test image [1,3,h,w] in [0,1] (no data files needed)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([
        0.5 + 0.4 * torch.sin(6.0 * xx + 2.0 * yy),
        0.5 + 0.4 * torch.cos(5.0 * yy - 3.0 * xx),
        0.5 + 0.3 * torch.sin(9.0 * xx * yy),
    ])
    blocks = (((xx * 7).floor() + (yy * 5).floor()) % 2) * 0.15
    noise = torch.rand(3, h, w, generator=g) * 0.1
    return (base + blocks + noise - 0.1).clamp(0, 1).unsqueeze(0)


def perturb(module: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Add seeded Gaussian noise to every parameter, so no block is the identity
    (zero-initialised convs included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


@pytest.fixture
def image():
    return synthetic_image
