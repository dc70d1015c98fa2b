"""The bicubic baseline: MATLAB bicubic down (antialiased) and up, no side information.

The "Bicubic & Bicubic" row of every rescaling paper (IRN Table 1, FGRN Table 1, RefScale
Table 1). Deterministic, no parameters, no reference.

For ONNX export the two maps are written as convolutions (:class:`BicubicDownConv`,
:class:`BicubicUpConv`): symmetric padding plus separable (polyphase) depthwise convolutions,
equal to :func:`refscale.ops.imresize` away from float rounding, for sides of at least
``min_side`` pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refscale import ops
from refscale.ops import bicubic_down, bicubic_up
from refscale.protocol import ExportGraphs, Rescaler, Side, register


@register("bicubic-x32", scale=32)
@register("bicubic-x16", scale=16)
@register("bicubic-x4", scale=4)
@register("bicubic-x2", scale=2)
class Bicubic(Rescaler):
    """``downscale(hr) = (bicubic_down(hr, s), {})``, ``upscale(lr) = bicubic_up(lr, s)``;
    values are not clamped here (the pipeline rounds and clamps the stored LR)."""

    arch = "bicubic"

    def downscale(self, hr: torch.Tensor, ref: torch.Tensor | None = None) -> tuple[torch.Tensor, Side]:
        return bicubic_down(hr, self.scale), {}

    def upscale(self, lr: torch.Tensor, side: Side | None = None, ref: torch.Tensor | None = None, *,
                temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        return bicubic_up(lr, self.scale)

    def export_graphs(self) -> ExportGraphs:
        """Both maps as convolutions (imresize has no traceable form for dynamic sizes)."""
        down, up = BicubicDownConv(self.scale), BicubicUpConv(self.scale)
        return ExportGraphs(down, up, min_side=max(down.min_side, up.min_side))


# ----------------------------------------------------------------------------- bicubic as convolutions
def _symmetric_pad(x: torch.Tensor, dim: int, left: int, right: int) -> torch.Tensor:
    """MATLAB's symmetric border (``... 2 1 | 1 2 ... n | n n-1 ...``) along ``dim`` (needs side >= pad)."""
    parts = []
    if left:
        parts.append(torch.flip(x.narrow(dim, 0, left), [dim]))
    parts.append(x)
    if right:
        parts.append(torch.flip(x.narrow(dim, x.shape[dim] - right, right), [dim]))
    return torch.cat(parts, dim) if len(parts) > 1 else x


def _interior_rows(in_len: int, out_len: int, scale: float, rows: list[int]) -> list[tuple[int, np.ndarray]]:
    """``(first input index, weights)`` of interior rows of MATLAB's resize matrix (``ops._resize_weights``)."""
    idx, w = ops._resize_weights(in_len, out_len, scale, True)
    out = []
    for r in rows:
        i, k = idx[r].numpy(), w[r].numpy()
        if not np.all(np.diff(i) == 1):
            raise AssertionError("bicubic export: an interior row reads a mirrored index")
        out.append((int(i[0]), k))
    return out


class BicubicDownConv(nn.Module):
    """``ops.bicubic_down(x, s)`` as symmetric padding + a strided depthwise convolution per axis
    (H first, as imresize): ``(hr, ref) -> (lr, {})``. MATLAB's kernel for an integer shrink factor
    is the same for every output pixel; the border rows mirror indices, which the padding reproduces."""

    def __init__(self, s: int):
        super().__init__()
        n = 64 * s
        m = n // s // 2
        (first, k), = _interior_rows(n, n // s, 1.0 / s, [m])
        c0 = first - s * m
        self.s, self.left, self.right = s, -c0, c0 + len(k) - s
        if self.left < 0 or self.right < 0:
            raise AssertionError("bicubic export: unexpected kernel placement")
        kern = torch.tensor(k, dtype=torch.float32)
        self.register_buffer("kh", kern.view(1, 1, -1, 1).repeat(3, 1, 1, 1))
        self.register_buffer("kw", kern.view(1, 1, 1, -1).repeat(3, 1, 1, 1))
        self.min_side = max(self.left, self.right, s)

    def forward(self, x, ref=None):
        x = F.conv2d(_symmetric_pad(x, 2, self.left, self.right), self.kh, stride=(self.s, 1), groups=3)
        return F.conv2d(_symmetric_pad(x, 3, self.left, self.right), self.kw, stride=(1, self.s), groups=3), {}


class BicubicUpConv(nn.Module):
    """``ops.bicubic_up(x, s)`` as symmetric padding + a polyphase depthwise convolution per axis
    (``s`` phases, interleaved), H first as imresize: ``(lr, side, ref, z) -> hr``."""

    def __init__(self, s: int):
        super().__init__()
        n = 64
        m = n // 2
        rows = _interior_rows(n, n * s, float(s), [s * m + r for r in range(s)])
        offsets = [first - m for first, _ in rows]
        cmin = min(offsets)
        size = max(o + len(k) for o, (_, k) in zip(offsets, rows)) - cmin
        kern = torch.zeros(s, size)
        for r, (o, (_, k)) in enumerate(zip(offsets, rows)):
            kern[r, o - cmin:o - cmin + len(k)] = torch.tensor(k, dtype=torch.float32)
        self.s, self.left, self.right = s, -cmin, cmin + size - 1
        if self.left < 0 or self.right < 0:
            raise AssertionError("bicubic export: unexpected kernel placement")
        self.register_buffer("kh", kern.repeat(3, 1).view(3 * s, 1, size, 1))
        self.register_buffer("kw", kern.repeat(3, 1).view(3 * s, 1, 1, size))
        self.min_side = max(self.left, self.right, 1) * s  # in HR pixels

    def forward(self, x, side=None, ref=None, z=None):
        s = self.s
        n, _, h, w = x.shape
        y = F.conv2d(_symmetric_pad(x, 2, self.left, self.right), self.kh, groups=3)  # [n, 3s, h, w]
        y = y.reshape(n, 3, s, h, w).permute(0, 1, 3, 2, 4).reshape(n, 3, h * s, w)
        y = F.conv2d(_symmetric_pad(y, 3, self.left, self.right), self.kw, groups=3)  # [n, 3s, hs, w]
        return y.reshape(n, 3, s, h * s, w).permute(0, 1, 3, 4, 2).reshape(n, 3, h * s, w * s)

