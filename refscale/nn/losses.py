"""Loss reductions of IRN's reference code, shared by IRN and RefScale.

IRN (``ReconstructionLoss``) sums over C, H, W and averages over the batch; its ``'l1'`` is the
Charbonnier penalty ``sqrt(d^2 + 1e-6)``. RefScale's loss weights (1, 4, 1) / (1, 16, 1)
equal IRN's, so RefScale uses the same reductions.
"""
from __future__ import annotations

import torch


def sum_l2(d: torch.Tensor) -> torch.Tensor:
    """``mean_n sum_{c,h,w} d^2`` (IRN ``'l2'``; also the z distribution-matching term)."""
    return (d.float() ** 2).sum(dim=tuple(range(1, d.dim()))).mean()


def sum_charbonnier(d: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``mean_n sum_{c,h,w} sqrt(d^2 + eps)`` (IRN ``'l1'``)."""
    d = d.float()
    return torch.sqrt(d * d + eps).sum(dim=tuple(range(1, d.dim()))).mean()
