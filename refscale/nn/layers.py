"""Convolutional sub-networks shared by the models.

* :class:`DenseBlock` — IRN's ``DenseBlock`` subnet of the coupling layers (5 conv3x3, growth
  ``gc`` = 32, LeakyReLU 0.2, dense concatenation). IRN initialises the first four convs with
  Xavier-normal scaled by 0.1 and the last conv with zeros, so a coupling block built on it
  starts as the identity.
* :class:`RRDB` — ESRGAN's residual-in-residual dense block (three residual dense blocks, each
  a :class:`DenseBlock` with a 0.2-scaled residual; Kaiming init scaled 0.1 as ESRGAN), the
  backbone of RefScale's Ref-Net (RefScale Sec. 4.1).
* :class:`ResidualBlock` — conv-ReLU-conv with identity skip (EDSR/IRN ``ResidualBlock_noBN``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import init


def init_convs(modules, kind: str = "xavier", scale: float = 1.0) -> None:
    """Initialise every Conv2d in ``modules``: ``"xavier"`` normal, ``"kaiming"`` normal (fan_in)
    or ``"zero"``; weights multiplied by ``scale``, biases zeroed (IRN/ESRGAN ``initialize_weights``)."""
    for module in modules:
        for m in module.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if kind == "zero":
                init.zeros_(m.weight)
            elif kind == "xavier":
                init.xavier_normal_(m.weight)
            elif kind == "kaiming":
                init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                raise ValueError(f"unknown init {kind!r}")
            m.weight.data.mul_(scale)
            if m.bias is not None:
                init.zeros_(m.bias)


class DenseBlock(nn.Module):
    """Five 3x3 convs with dense connections: ``x -> cout`` (IRN ``DenseBlock``, ESRGAN RDB body).

    ``init="xavier"`` (IRN) or ``"kaiming"`` (ESRGAN) for the first four convs, scaled by
    ``init_scale`` (0.1 in both); ``zero_last`` zero-initialises the fifth conv (IRN subnets)
    instead of using the same init as the others (ESRGAN).

    ``cond_channels`` > 0 adds a condition input ``c``: a zero-initialised 3x3 conv
    (``cond_in``, no bias) whose output is added to the first conv's, i.e. ``c`` is extra input
    channels of the first conv whose weights start at zero. Such a block computes exactly what
    the block without a condition computes until ``cond_in`` has learned something, so a
    conditional model can start from an unconditional one's weights (RefScale warm-started
    from IRN); the features of the first conv carry ``c`` into every later conv.
    """

    def __init__(self, cin: int, cout: int, gc: int = 32, init: str = "xavier", init_scale: float = 0.1,
                 zero_last: bool = True, bias: bool = True, cond_channels: int = 0):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin + i * gc, gc, 3, 1, 1, bias=bias) for i in range(4))
        self.last = nn.Conv2d(cin + 4 * gc, cout, 3, 1, 1, bias=bias)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        init_convs(list(self.convs), init, init_scale)
        init_convs([self.last], "zero" if zero_last else init, init_scale)
        self.cond_in = nn.Conv2d(cond_channels, gc, 3, 1, 1, bias=False) if cond_channels else None
        if self.cond_in is not None:
            nn.init.zeros_(self.cond_in.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if (cond is None) != (self.cond_in is None):
            raise ValueError("DenseBlock: a condition must be given exactly when cond_channels > 0")
        if torch.is_autocast_enabled(x.device.type):  # keep the concatenations in the low precision
            x = x.to(torch.get_autocast_dtype(x.device.type))
        feats = [x]
        for i, conv in enumerate(self.convs):
            h = conv(torch.cat(feats, 1))
            if i == 0 and self.cond_in is not None:
                h = h + self.cond_in(cond.to(h.dtype))
            feats.append(self.act(h))
        return self.last(torch.cat(feats, 1))


class ResidualDenseBlock(nn.Module):
    """ESRGAN ``ResidualDenseBlock_5C``: ``x + 0.2 * DenseBlock(x)``."""

    def __init__(self, nf: int = 64, gc: int = 32, res_scale: float = 0.2):
        super().__init__()
        self.body = DenseBlock(nf, nf, gc, init="kaiming", init_scale=0.1, zero_last=False)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class RRDB(nn.Module):
    """ESRGAN residual-in-residual dense block: three residual dense blocks, ``x + 0.2 * body(x)``."""

    def __init__(self, nf: int = 64, gc: int = 32, res_scale: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(*(ResidualDenseBlock(nf, gc) for _ in range(3)))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class ResidualBlock(nn.Module):
    """conv3x3-ReLU-conv3x3 with identity skip, no batch norm (EDSR; Kaiming init scaled 0.1)."""

    def __init__(self, nf: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.act = nn.ReLU(inplace=True)
        init_convs([self.conv1, self.conv2], "kaiming", 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class ResidualTrunk(nn.Module):
    """``n`` residual blocks with a long skip: ``f + blocks(f)`` (EDSR body without its last conv)."""

    def __init__(self, nf: int, n: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualBlock(nf) for _ in range(n)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.blocks(f)
