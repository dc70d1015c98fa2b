"""Latent tiles for TADM's tiled inference (Algorithm 1: ToPatch, Merge).

``ToPatch(z_hat, p, s)``: square patches of ``p`` latent pixels with stride ``s`` (the paper: 96
and 64, Sec. 4.4.1); the last patch of each axis is moved back to end at the border, so every
patch has the same size ``min(p, side)`` and patches can be batched. A latent no larger than
``p`` is one patch: tiled and untiled inference are then the same computation.

``Merge``: the paper does not say how overlapping patches are combined. *Our choice*: the
Gaussian-weighted average StableSR uses for the same stride (weights
``exp(-((i - c) / p)^2 / (2 * 0.01))`` per axis, centred on each patch), which hides seams
between patches denoised at different time steps.
"""
from __future__ import annotations

import torch


def starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis (the last patch ends at ``length``)."""
    if patch <= 0 or stride <= 0:
        raise ValueError(f"patch and stride must be positive, got {patch}/{stride}")
    if length <= patch:
        return [0]
    out = list(range(0, length - patch, stride))
    return out + [length - patch]


def grid(size: tuple[int, int], patch: int, stride: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """``((ph, pw), [(y, x), ...])``: the patch size and the origins covering a latent of ``size``."""
    h, w = size
    ph, pw = min(patch, h), min(patch, w)
    return (ph, pw), [(y, x) for y in starts(h, patch, stride) for x in starts(w, patch, stride)]


def gaussian_weights(ph: int, pw: int, var: float = 0.01, device=None) -> torch.Tensor:
    """StableSR's patch weights ``[ph, pw]`` (positive everywhere, largest at the centre)."""
    def axis(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64, device=device)
        return torch.exp(-(((i - (n - 1) / 2) / n) ** 2) / (2 * var))

    return (axis(ph)[:, None] * axis(pw)[None, :]).float()


def merge(patches: list[torch.Tensor], origins: list[tuple[int, int]], size: tuple[int, int]) -> torch.Tensor:
    """Weighted average of ``patches`` (each ``[N,C,ph,pw]``) placed at ``origins`` into ``[N,C,*size]``."""
    n, c, ph, pw = patches[0].shape
    w = gaussian_weights(ph, pw, device=patches[0].device)
    acc = patches[0].new_zeros((n, c, *size), dtype=torch.float32)
    norm = patches[0].new_zeros(size, dtype=torch.float32)
    for p, (y, x) in zip(patches, origins):
        acc[..., y:y + ph, x:x + pw] += p.float() * w
        norm[y:y + ph, x:x + pw] += w
    return acc / norm
