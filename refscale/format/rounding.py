"""The 8-bit rounding rule: how a float image in [0, 1] becomes the 8-bit LR the container stores
(docs/format.md), written once.

    level = round_half_to_even(clamp(x, 0, 1) * 255)      in x's dtype, then uint8

:func:`levels` is the rule; every 8-bit image refscale makes goes through it: the stored LR (the
encoder's tiles, the bicubic fallback blocks of the verifying encoder, the on-board wrap), the
reference at the LR's size of an inter-frame codec and the reference fingerprint, image files
written (:func:`refscale.io.image.write_image`), the metrics' 8-bit domain (BasicSR
``tensor2img``), the forward value of the models' 8-bit quantizers (:func:`round_8bit`, through
:func:`refscale.ops.quantize_8bit`) and the 8-bit data of training. Changing it changes every
container and every reconstruction: it is part of the format.
"""
from __future__ import annotations

import numpy as np
import torch

#: the rule as text (ONNX export metadata: what the on-board side must do with the LR before rounding)
RULE = "uint8 = round_half_to_even(clamp(lr, 0, 1) * 255)"


def levels(x: torch.Tensor) -> torch.Tensor:
    """``round(clamp(x, 0, 1) * 255)``: the 8-bit level 0..255 of each value, in ``x``'s dtype
    (float; ``torch.round`` rounds half to even; ``x`` is not detached)."""
    return torch.round(x.clamp(0, 1) * 255)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """:func:`levels` of ``x`` (detached) as a uint8 tensor of the same shape."""
    return levels(x.detach()).to(torch.uint8)


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """The first image of ``[N,3,H,W]`` as uint8 ``[H, W, 3]`` (the layout of a stored LR)."""
    return to_uint8(x)[0].permute(1, 2, 0).contiguous().numpy()


def round_8bit(x: torch.Tensor) -> torch.Tensor:
    """``levels(x) / 255`` in ``x``'s dtype: the value an 8-bit image holds for ``x`` (the forward
    value of the 8-bit quantizers, :func:`refscale.ops.quantize_8bit`), without a gradient trick."""
    return levels(x) / 255
