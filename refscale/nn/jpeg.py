"""A differentiable JPEG for training with the codec in the loop (issue 27, item 4).

:func:`simulate_jpeg` is baseline JPEG as Pillow (libjpeg-turbo) writes it with ``quality=q``:
JFIF full-range YCbCr, 4:2:0 chroma subsampling (2 x 2 mean), level shift, 8 x 8 DCT-II,
quantization by the IJG tables of the Annex K scaled by the IJG quality formula
(:func:`quant_tables`), and back (IDCT, the planes rounded and range-limited to 0..255 as
libjpeg's IDCT output, bilinear chroma upsampling, RGB, 8-bit rounding). The roundings and the
range limits pass the gradient straight through (as :func:`refscale.ops.quantize_8bit`, also
outside [0, 1]), as SAIN's (Yang et al., CVPR 2023) and DiffJPEG (Shin & Song, 2017) do in
their straight-through variant; the entropy coder is lossless and needs no model.

Our choices where the real codec differs (measured in ``tests/test_jpeg_sim.py``: within a few
tenths of a dB of Pillow's decode at the qualities trained on): the decoder's "fancy" chroma
upsampling is approximated by bilinear interpolation (libjpeg-turbo's triangle filter), and the
DCT is computed in floating point (libjpeg's islow DCT is integer).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from refscale.ops import round_ste

#: JPEG Annex K.1 luminance and K.2 chrominance quantization tables (quality 50), row-major
_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The luma and chroma tables ``[N, 8, 8]`` for qualities ``[N]`` (rounded, 1..100), as
    libjpeg's ``jpeg_set_quality``: scale ``5000 / q`` in integer division below 50,
    ``200 - 2 q`` above, entries ``floor((base * scale + 50) / 100)`` clamped to 1..255
    (baseline)."""
    q = quality.to(torch.float64).round().clamp(1, 100)
    scale = torch.where(q < 50, torch.floor(5000.0 / q), 200.0 - 2.0 * q).view(-1, 1, 1)
    out = []
    for base in (_LUMA, _CHROMA):
        b = torch.tensor(base, dtype=torch.float64, device=q.device).view(1, 8, 8)
        out.append(torch.floor((b * scale + 50) / 100).clamp(1, 255).float())
    return out[0], out[1]


@lru_cache(maxsize=8)
def _dct_matrix(device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``X = D B D^T``)."""
    d = torch.empty(8, 8, dtype=torch.float64)
    for k in range(8):
        for n in range(8):
            d[k, n] = math.cos(math.pi * (2 * n + 1) * k / 16) * (math.sqrt(0.125) if k == 0 else 0.5)
    return d.float().to(device)


def _clamp_ste(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``x`` clamped to ``[lo, hi]``; the gradient passes straight through (as the roundings')."""
    return x + (x.clamp(lo, hi) - x).detach()


def _sample(x: torch.Tensor) -> torch.Tensor:
    """A plane's 8-bit sample as libjpeg keeps it: rounded and range-limited to 0..255."""
    return round_ste(_clamp_ste(x, 0.0, 255.0))


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` (multiples of 8) -> ``[N, H/8, W/8, 8, 8]``."""
    n, h, w = x.shape
    return x.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    n, bh, bw = b.shape[:3]
    return b.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """One plane ``[N, H, W]`` (0..255, level-shifted inside) through DCT, quantization by
    ``table [N, 8, 8]`` (straight-through rounding) and the inverse DCT."""
    d = _dct_matrix(plane.device).to(plane.dtype)
    t = table.to(plane.dtype).view(-1, 1, 1, 8, 8)
    coef = d @ _blocks(plane - 128.0) @ d.T
    coef = round_ste(coef / t) * t
    return _sample(_unblocks(d.T @ coef @ d) + 128.0)


def simulate_jpeg(x: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """``x [N, 3, H, W]`` in [0, 1] as JPEG at ``quality`` (a number or one per sample, 1..100)
    would decode it, differentiably (module docstring). Returns ``[N, 3, H, W]`` in [0, 1] on the
    8-bit grid; computed in float32 whatever the input's dtype, also under bf16 autocast (a DCT
    coefficient in bf16 is off by more than the finest quantization step)."""
    with torch.autocast(x.device.type, enabled=False):
        return _simulate_jpeg(x, quality)


def _simulate_jpeg(x: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    n, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"simulate_jpeg codes RGB images, got {c} channels")
    q = torch.as_tensor(quality, dtype=torch.float32).flatten()
    q = q.expand(n) if q.numel() == 1 else q
    if q.numel() != n:
        raise ValueError(f"one quality or one per sample ({n}), got {q.numel()}")
    luma_t, chroma_t = quant_tables(q.to(x.device))
    dtype = x.dtype
    rgb = _clamp_ste(x.float(), 0.0, 1.0) * 255.0
    ph, pw = (-h) % 16, (-w) % 16  # whole MCUs (16 x 16 at 4:2:0); libjpeg replicates the edge
    rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate") if (ph or pw) else rgb
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = _sample(0.299 * r + 0.587 * g + 0.114 * b)
    cb = _sample(-0.168735892 * r - 0.331264108 * g + 0.5 * b + 128.0)
    cr = _sample(0.5 * r - 0.418687589 * g - 0.081312411 * b + 128.0)
    chroma = _sample(F.avg_pool2d(torch.stack([cb, cr], 1), 2))  # 4:2:0
    y = _code_plane(y, luma_t)
    cb = _code_plane(chroma[:, 0], chroma_t)
    cr = _code_plane(chroma[:, 1], chroma_t)
    chroma = F.interpolate(torch.stack([cb, cr], 1), scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0] - 128.0, chroma[:, 1] - 128.0
    out = torch.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], 1)
    out = _sample(out)[..., :h, :w] / 255.0
    return out.to(dtype)
