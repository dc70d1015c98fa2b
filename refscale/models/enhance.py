"""Learned decoders on top of the inter-frame codec: ``enhance-x1`` and ``enhance-x2`` (issue 27);
the same network after a still codec: ``enhance-x1-avif`` and ``enhance-x2-avif`` (issue 27, item 3:
on board AVIF at full resolution, or bicubic x2 + AVIF, where there is no inter codec; the
reference is still at the ground, so the network has the same inputs).

On board nothing is learned: ``downscale`` is the identity at scale 1 (the image is coded as a
P-frame predicted from the reference, exactly the ``inter-hevc`` model) and MATLAB bicubic down
at scale 2 (exactly ``-m bicubic-x2 --codec hevc-inter``: the LR is the P-frame, predicted from
the reference at the LR's size); no side information, ``default_codec = "hevc-inter"``. At the
ground, after the codec has decoded the LR, a small network rebuilds the HR image from the
decoded LR and the full-resolution registered reference::

    base = d                                  (scale 1; d = the decoded LR)
         = bicubic_up(d, s)                   (scale s > 1)
    hr   = base + shuffle(net(inputs))        (a residual; the last conv starts at zero, so the
                                               untrained model *is* the plain codec's decode)

Inputs of ``net``, all computed at the decoder (they cost no bits), on a grid of stride
``grid`` HR pixels (pixel-unshuffle; our choice ``grid = 2``: at scale 2 that is the LR grid, at
scale 1 it quarters the cost, so the network can be deeper for the same speed):

* ``base`` and the reference ``ref`` at HR size;
* at scale > 1, the reference brought to the LR grid and back, ``bicubic_up(bicubic_down(ref))``
  -- about what the codec could predict from; ``ref`` minus it is the detail only the reference has;
* two change maps: the local RMS difference between ``base`` and that predictable reference
  (mean over RGB, over 3x3 and 9x9 grid cells, x4). Where the scene changed it is large, and
  the network learns from real revisits (OSCD cities with their changes, NAIP dates) to ignore
  the reference there instead of pasting the old scene in.

Our choices: ``nf = 48`` features, ``blocks = 5`` residual blocks (conv3x3-ReLU-conv3x3), ~230k
parameters, ~55k multiply-adds per HR pixel at either scale (aim: >= 0.2 Mpx/s on two AVX2
cores in fp32; bf16 + channels_last where the CPU has it natively, as the other learned models;
in fp32 channels_last too, ``fp32_channels_last``: 1.7-2.1 s against 2.5-3.7 s for 1.27 Mpx at
scale 1 on two cores of an AVX2 AMD EPYC).
The network is **blind to the codec quality**: ``upscale`` is given no quality
(the protocol passes none), so one model serves every rate and is trained on decodes at a
spread of qualities (``scripts/build_codec_cache.py``). Training needs those decodes:
``training_losses(hr, ref, coded=d)`` (``data.coded: true`` in the training config); the loss is
Charbonnier (L1) on RGB. The codec is never differentiated through.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refscale.errors import ModelError
from refscale.nn.speed import FastInference
from refscale.ops import bicubic_down, bicubic_up
from refscale.protocol import Rescaler, Side, register

CHARBONNIER_EPS = 1e-3


class _ResBlock(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


@register("enhance-x2-avif", scale=2, codec="avif", weights="enhance-x2-avif-oscd")
@register("enhance-x1-avif", scale=1, codec="avif", weights="enhance-x1-avif-oscd")
@register("enhance-x2", scale=2, codec="hevc-inter", weights="enhance-x2-hevc-oscd")
@register("enhance-x1", scale=1, codec="hevc-inter", weights="enhance-x1-hevc-oscd")
class InterEnhance(FastInference, Rescaler):
    """Codec-decoded LR + reference -> HR (module doc); identity / bicubic down on board."""

    arch = "enhance"
    needs_reference = True
    fp32_channels_last = True  # module doc: 1.5-1.8x faster in fp32 on an AVX2 CPU
    export_refusal = ("on board it is the inter codec (nothing learned runs there); its network runs at the "
                      "ground after the codec's decode")

    def __init__(self, scale: int = 1, nf: int = 48, blocks: int = 5, grid: int = 2, codec: str = "hevc-inter"):
        if int(scale) not in (1, 2):
            raise ModelError(f"enhance models are scale 1 or 2, got {scale}")
        if int(grid) < 1 or (int(scale) > 1 and int(grid) % int(scale)):
            raise ModelError(f"enhance grid {grid} must be a positive multiple of the scale {scale}")
        super().__init__(int(scale), nf=int(nf), blocks=int(blocks), grid=int(grid), codec=codec)
        self.default_codec = codec
        #: after a still codec a lossy default (its own default is lossless, which leaves nothing to
        #: restore): AVIF q 25, the middle of the training cache's qualities (~0.26 bpp on OSCD)
        self.default_quality = 25 if codec == "avif" else None
        self.grid = int(grid)
        g2 = self.grid ** 2
        images = 2 if self.scale == 1 else 3  # base, ref (, the reference's predictable part)
        self.head = nn.Conv2d(3 * images * g2 + 2, nf, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(nf) for _ in range(int(blocks))])
        self.tail = nn.Conv2d(nf, 3 * g2, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # untrained: exactly the codec's decode (bicubic-upscaled at x2)
        nn.init.zeros_(self.tail.bias)

    # ------------------------------------------------------------------ protocol
    @property
    def context(self) -> int:
        """The receptive radius in HR pixels (:attr:`refscale.protocol.Rescaler.context`): the
        network's 3x3 convolutions (``2 + 2 * blocks`` cells of ``grid`` pixels) after the 9-cell
        error map (4 cells), one more cell for the pixel (un)shuffle, and at x2 the bicubic
        resamplings before it (the reference's predictable part, down then up: 8 HR pixels)."""
        n_blocks = len(self.body)
        return self.grid * (2 + 2 * n_blocks + 4 + 1) + (8 if self.scale > 1 else 0)

    @property
    def alignment(self) -> int:
        """HR sides are multiples of the grid (2), so that tiles keep the pixel-unshuffle's phase
        (at scale 1 an odd side is reflect-padded by one pixel before coding, as for any model)."""
        return int(math.lcm(self.scale, self.grid))

    def downscale(self, hr: torch.Tensor, ref: torch.Tensor | None = None) -> tuple[torch.Tensor, Side]:
        return (hr if self.scale == 1 else bicubic_down(hr, self.scale)), {}

    def upscale(self, lr: torch.Tensor, side: Side | None = None, ref: torch.Tensor | None = None, *,
                temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_reference(ref)
        size = (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
        if tuple(ref.shape[-2:]) != size:
            raise ModelError(f"{self.name}: reference is {ref.shape[-1]}x{ref.shape[-2]}, expected {size[1]}x{size[0]} (the HR size)")
        return self.rebuild(lr, ref)

    def warm_start(self, other: Rescaler) -> None:
        """Copy the network of the same decoder trained after another codec (``model.init_weights``:
        ``enhance-x1-avif`` from ``enhance-x1-hevc-oscd``); anything else is refused."""
        same = {k: v for k, v in getattr(other, "config", {}).items() if k != "codec"}
        if getattr(other, "arch", None) != self.arch or same != {k: v for k, v in self.config.items() if k != "codec"}:
            raise ModelError(f"{self.name} starts only from an enhance model of the same scale and size, "
                             f"not {getattr(other, 'name', type(other).__name__)}")
        self.load_state_dict(other.state_dict(), strict=True)

    # ------------------------------------------------------------------ the network
    def rebuild(self, coded: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """HR from the decoded LR ``coded`` ``[N,3,h,w]`` and the reference ``[N,3,h*s,w*s]``."""
        s, g = self.scale, self.grid
        base = coded if s == 1 else bicubic_up(coded, s)
        pred = ref if s == 1 else bicubic_up(bicubic_down(ref, s), s)
        h, w = base.shape[-2:]
        pad = (0, -w % g, 0, -h % g)  # odd sizes at scale 1: replicate to the grid, crop back
        images = [base, ref] if s == 1 else [base, ref, pred]
        x = F.pad(torch.cat(images, 1), pad, mode="replicate") if any(pad) else torch.cat(images, 1)
        err = (x[:, :3] - x[:, -3:]).pow(2).mean(1, keepdim=True)  # base against the predictable reference
        err = F.avg_pool2d(err, g) if g > 1 else err
        maps = [4 * (F.avg_pool2d(err, k, stride=1, padding=k // 2, count_include_pad=False) + 1e-6).sqrt() for k in (3, 9)]
        x = F.pixel_unshuffle(x - 0.5, g) if g > 1 else x - 0.5
        x = self.speed_input(torch.cat([x, *maps], 1))
        with self.speed_context(x):  # the convolutions in bf16 where the pipeline asks for it
            res = self.tail(self.body(self.head(x))).float()
        res = F.pixel_shuffle(res, g) if g > 1 else res
        return base + res[..., :h, :w]

    def training_losses(self, hr: torch.Tensor, ref: torch.Tensor | None = None,
                        coded: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Charbonnier (L1) on RGB between ``rebuild(coded, ref)`` and ``hr``; ``coded`` is the codec's
        decode of ``downscale(hr)`` (cached, no gradient through the codec). ``codec_l1`` (logged,
        not minimised): the same loss of the plain decode."""
        self.check_reference(ref)
        if coded is None:
            raise ModelError(f"{self.name} trains on the codec's decoded images: build them with "
                             "scripts/build_codec_cache.py and set data.coded: true")
        out = self.rebuild(coded, ref)
        total = torch.sqrt((out - hr).pow(2) + CHARBONNIER_EPS**2).mean()
        with torch.no_grad():
            base = coded if self.scale == 1 else bicubic_up(coded, self.scale)
            plain = torch.sqrt((base - hr).pow(2) + CHARBONNIER_EPS**2).mean()
        return {"total": total, "codec_l1": plain}
