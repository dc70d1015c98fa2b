"""The bicubic baseline: MATLAB bicubic down (antialiased) and up, no side information.

The "Bicubic & Bicubic" row of every rescaling paper (IRN Table 1, FGRN Table 1, RefScale
Table 1). Deterministic, no parameters, no reference.
"""
from __future__ import annotations

import torch

from refscale.ops import bicubic_down, bicubic_up
from refscale.protocol import Rescaler, Side, register


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

