"""Image operations shared by every model, metric and the pipeline.

All functions take and return float tensors ``[N,C,H,W]`` (RGB in [0,1] unless stated),
work on batches and are differentiable unless stated otherwise:

* :func:`imresize` — MATLAB-compatible bicubic resize (``imresize(..., 'bicubic')``: cubic
  a = -0.5, kernel widened by 1/scale when shrinking, symmetric border), the "bicubic" of
  IRN, BasicSR and every rescaling paper; :func:`bicubic_down` / :func:`bicubic_up`.
* :func:`rgb_to_ycbcr` / :func:`ycbcr_to_rgb` — BT.601 as MATLAB ``rgb2ycbcr``.
* :func:`gaussian_kernel1d` / :func:`gaussian_blur` — separable, reflect padding
  (:func:`gaussian_blur_array`: the same on a NumPy array, without autograd).
* :func:`haar_forward` / :func:`haar_inverse` — IRN's Haar transform and its exact inverse.
* :func:`round_ste` / :func:`quantize_8bit` — rounding with a straight-through gradient (the
  forward value of the latter: :func:`refscale.format.rounding.round_8bit`).
* :func:`pad_to_multiple` / :func:`crop_to` / :func:`mod_crop` — size handling.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from refscale.errors import ModelError
from refscale.format.rounding import round_8bit

# --------------------------------------------------------------------------- bicubic resize


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


@lru_cache(maxsize=128)
def _resize_weights(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``[out, P]`` into the input axis and weights ``[out, P]`` (float64), as MATLAB's
    ``contributions``: output pixel ``i`` (1-based) maps to ``u = i/scale + (1 - 1/scale)/2``;
    the kernel is stretched by ``1/scale`` when shrinking with antialiasing; out-of-range
    taps are mirrored (symmetric padding); each row of weights sums to one."""
    kernel_width = 4.0
    shrink_aa = antialias and scale < 1
    if shrink_aa:
        kernel_width /= scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if shrink_aa else _cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # drop tap columns that are zero for every output (MATLAB does the same; saves work)
    keep = (w != 0).any(dim=0)
    w, idx = w[:, keep], idx[:, keep]
    # symmetric border: ... 2 1 | 1 2 ... n | n n-1 ...
    period = 2 * in_len
    i0 = torch.remainder(idx.long() - 1, period)
    i0 = torch.where(i0 >= in_len, period - 1 - i0, i0)
    return i0, w


@lru_cache(maxsize=128)
def _resize_blocks(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """The resize matrix of one axis as dense row blocks ``(o0, o1, i0, i1, M[o1-o0, i1-i0])``:
    each block of outputs reads only the input window it needs, so applying it is a few
    small matmuls (fast, and linear in the image size) instead of a gather."""
    idx, w = _resize_weights(in_len, out_len, scale, antialias)
    rows = max(32, int(512 * min(scale, 1.0)))
    blocks = []
    for o0 in range(0, out_len, rows):
        o1 = min(out_len, o0 + rows)
        bi, bw = idx[o0:o1], w[o0:o1]
        i0, i1 = int(bi.min()), int(bi.max()) + 1
        m = torch.zeros(o1 - o0, i1 - i0, dtype=torch.float64).scatter_add_(1, bi - i0, bw)
        blocks.append((o0, o1, i0, i1, m))
    return tuple(blocks)


def _resize_axis(x: torch.Tensor, dim: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Resize ``x`` along ``dim`` (2 = H or 3 = W)."""
    parts = []
    for _, _, i0, i1, m in _resize_blocks(x.shape[dim], out_len, float(scale), bool(antialias)):
        m = m.to(device=x.device, dtype=x.dtype)
        if dim == 2:
            parts.append(torch.matmul(m, x[:, :, i0:i1, :]))
        else:
            parts.append(torch.matmul(x[:, :, :, i0:i1], m.T))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def imresize(x: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None, antialias: bool = True) -> torch.Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` (or ``imresize(x, [H W])``) on a batch ``[N,C,H,W]``.

    Exactly one of ``scale`` (e.g. 0.5 or 4) and ``size`` ``(H, W)``. With ``scale`` the output
    size is ``ceil(H*scale)`` as in MATLAB. Like MATLAB, the axis with the smaller scale is
    resized first. Float in, float out: no clamping and no rounding (callers quantize).
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize needs exactly one of scale and size")
    if x.dim() != 4:
        raise ValueError(f"imresize expects [N,C,H,W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if scale is not None:
        scales = (float(scale), float(scale))
        out = (int(math.ceil(h * scale - 1e-9)), int(math.ceil(w * scale - 1e-9)))
    else:
        out = (int(size[0]), int(size[1]))
        scales = (out[0] / h, out[1] / w)
    if not x.is_floating_point():
        x = x.float()
    x = x.contiguous()
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    for axis in order:
        if out[axis] == x.shape[2 + axis] and scales[axis] == 1.0:
            continue  # identity (the cubic kernel interpolates)
        x = _resize_axis(x, 2 + axis, out[axis], scales[axis], antialias)
    return x


def bicubic_down(x: torch.Tensor, factor: int) -> torch.Tensor:
    """MATLAB bicubic downscale by an integer factor (antialiased)."""
    return imresize(x, scale=1.0 / factor)


def bicubic_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """MATLAB bicubic upscale by an integer factor."""
    return imresize(x, scale=float(factor))


# --------------------------------------------------------------------------- colour

# MATLAB rgb2ycbcr for double input in [0,1]: offset + M @ rgb, M in units of 1/255
_YCBCR_M = torch.tensor([
    [65.481, 128.553, 24.966],
    [-37.797, -74.203, 112.0],
    [112.0, -93.786, -18.214],
], dtype=torch.float64) / 255.0
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0


def rgb_to_ycbcr(x: torch.Tensor, y_only: bool = False) -> torch.Tensor:
    """BT.601 RGB -> YCbCr, MATLAB ``rgb2ycbcr`` convention on [0,1] values:
    Y in [16/255, 235/255], Cb/Cr in [16/255, 240/255]. ``y_only`` returns ``[N,1,H,W]``."""
    m = _YCBCR_M.to(device=x.device, dtype=x.dtype)
    off = _YCBCR_OFFSET.to(device=x.device, dtype=x.dtype)
    if y_only:
        m, off = m[:1], off[:1]
    return torch.einsum("oc,nchw->nohw", m, x) + off.view(1, -1, 1, 1)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (MATLAB ``ycbcr2rgb``)."""
    m_inv = torch.linalg.inv(_YCBCR_M).to(device=x.device, dtype=x.dtype)
    off = _YCBCR_OFFSET.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return torch.einsum("oc,nchw->nohw", m_inv, x - off)


# --------------------------------------------------------------------------- blur


def gaussian_kernel1d(sigma: float, size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian; default size ``2*ceil(3*sigma)+1`` (odd)."""
    if size is None:
        size = 2 * int(math.ceil(3 * sigma)) + 1
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: float, kernel_size: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of each channel with reflect padding (replicate when the
    image is too small to reflect)."""
    k = gaussian_kernel1d(sigma, kernel_size, dtype=x.dtype).to(x.device)
    size = k.numel()
    n, c, h, w = x.shape
    lo, hi = (size - 1) // 2, size // 2
    mode = "reflect" if _reflects(size, h, w) else "replicate"
    y = F.pad(x.reshape(n * c, 1, h, w), (lo, hi, lo, hi), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, size))
    y = F.conv2d(y, k.view(1, 1, size, 1))
    return y.reshape(n, c, h, w)


def _reflects(size: int, h: int, w: int) -> bool:
    """Whether an ``h`` x ``w`` image is large enough to reflect-pad for a kernel of ``size``."""
    return size // 2 < min(h, w)


def gaussian_blur_array(y, sigma: float):
    """:func:`gaussian_blur` (default kernel size) of one 2-D float32 NumPy array, without autograd:
    SciPy's separable correlation with the same kernel and edges (reflect is SciPy's ``mirror``,
    replicate its ``nearest``); equal to about 1e-7 and 3-4x faster on a CPU (0.03 against 0.08 s
    for sigma 4 on 1.27 Mpx, two AVX2 cores). For checks that run on every decoded image."""
    from scipy import ndimage

    k = gaussian_kernel1d(sigma, None, dtype=torch.float32).numpy()
    mode = "mirror" if _reflects(k.size, *y.shape) else "nearest"
    return ndimage.correlate1d(ndimage.correlate1d(y, k, axis=0, mode=mode), k, axis=1, mode=mode)


# --------------------------------------------------------------------------- Haar

#: log|det| of the Haar transform per 2x2 block of one channel (IRN: H/4, |det H| = 16)
HAAR_LOGDET_PER_BLOCK = math.log(1 / 16.0)


def haar_forward(x: torch.Tensor) -> torch.Tensor:
    """IRN's Haar downsampling: ``[N,C,H,W] -> [N,4C,H/2,W/2]``.

    For each 2x2 block ``[[a, b], [c, d]]``: band0 = (a+b+c+d)/4 (the block mean, LL),
    band1 = (a-b+c-d)/4, band2 = (a+b-c-d)/4, band3 = (a-b-c+d)/4. Channel order as IRN:
    ``[band0 of all C, band1 of all C, band2 of all C, band3 of all C]``. H and W must be even.
    """
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"haar_forward needs even H and W, got {tuple(x.shape[-2:])}")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return torch.cat([a + b + c + d, a - b + c - d, a + b - c - d, a - b - c + d], dim=1) / 4


def haar_inverse(y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`haar_forward`: ``[N,4C,h,w] -> [N,C,2h,2w]``."""
    y0, y1, y2, y3 = y.chunk(4, dim=1)
    a = y0 + y1 + y2 + y3
    b = y0 - y1 + y2 - y3
    c = y0 + y1 - y2 - y3
    d = y0 - y1 - y2 + y3
    n, ch, h, w = a.shape
    top = torch.stack([a, b], dim=-1).reshape(n, ch, h, 2 * w)
    bottom = torch.stack([c, d], dim=-1).reshape(n, ch, h, 2 * w)
    return torch.stack([top, bottom], dim=-2).reshape(n, ch, 2 * h, 2 * w)


# --------------------------------------------------------------------------- quantization


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer; the gradient passes straight through (identity)."""
    return x + (torch.round(x) - x).detach()


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """IRN's ``Quantization``: clamp to [0,1] and round to k/255 in the forward pass; the
    backward pass is the identity (straight-through, also outside [0,1], as IRN)."""
    return x + (round_8bit(x) - x).detach()


# --------------------------------------------------------------------------- sizes


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right so H and W are multiples of ``multiple``; returns ``(padded, (H, W))``
    with the original size, for :func:`crop_to`. Reflect falls back to replicate when the
    padding is not smaller than the image side."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    return F.pad(x, (0, pw, 0, ph), mode=padding_mode((h, w), (h + ph, w + pw), mode)), (h, w)


def padding_mode(size: tuple[int, int], padded: tuple[int, int], mode: str = "reflect") -> str:
    """The mode :func:`pad_to_multiple` pads ``size`` to ``padded`` with: reflect falls back to
    replicate when the padding is not smaller than the image side (encoder and decoder agree)."""
    if mode == "reflect" and (padded[0] - size[0] >= size[0] or padded[1] - size[1] >= size[1]):
        return "replicate"
    return mode


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Keep the top-left ``size`` = (H, W) (undoes :func:`pad_to_multiple`)."""
    return x[..., : size[0], : size[1]]


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` (a side shorter than ``size`` is kept whole)."""
    h, w = x.shape[-2:]
    top, left = max(h - size, 0) // 2, max(w - size, 0) // 2
    return x[..., top: top + size, left: left + size]


def mod_crop(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Crop bottom/right to multiples of ``multiple`` (the field's evaluation convention)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % multiple, : w - w % multiple]


def levels_for_scale(scale: int) -> int:
    """Number of factor-2 (Haar) levels of a scale that is a power of two >= 2."""
    levels = int(round(math.log2(scale))) if scale > 1 else 0
    if scale < 2 or 2**levels != scale:
        raise ModelError(f"scale must be a power of two >= 2, got {scale}")
    return levels
