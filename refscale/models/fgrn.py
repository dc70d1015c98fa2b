"""FGRN: flow-guidance rescaling network (FGRN paper, Sec. 3; Fig. 1-2).

Three parts, all at the LR resolution (Fig. 1):

* **Gd** (downscaling module, Sec. 3.3): squeeze ``s x s`` pixels into channels
  (``pixel_unshuffle``, Fig. 2a), a shallow 3x3 conv to ``nf`` features, ``down_blocks``
  residual blocks (EDSR ``ResidualBlock``, :mod:`refscale.nn.layers`) with a long feature skip
  and a 3x3 conv to the 3-channel representation ``x`` (eq. 3).
  *Our choice:* ``x`` is a residual on the ``s x s`` block mean of the HR image
  (``avg_pool2d``) and the last conv starts at zero, so an untrained Gd is the box filter. The
  paper puts no constraint on ``x`` and none is added: the skip only makes ``x`` start inside
  [0, 1], the range of its 8-bit quantizer (:func:`quantize_representation`).
* **Gu** (upscaling module): a 3x3 conv to ``nf`` features, ``up_blocks`` residual blocks with a
  long skip, ``log2(s)`` stages of conv + ``PixelShuffle(2)`` (EDSR's upsampler) and a 3x3 conv
  to RGB.
* **F** (flow guidance module, eq. 4-6): ``flow_cells`` flow cells on the 3 channels of ``x``,
  each the shared :class:`~refscale.nn.invertible.AffineCoupling` (IRN's ``InvBlockExp``, the
  cell the paper cites): ``l1 += alpha(l2)``; ``l2 = l2 * exp(beta(l1)) + phi(l1)`` with Dense
  Block subnets (growth ``gc``). Choices the paper leaves open: ``l1`` is the first channel
  (``split_len1 = 1``), ``l2`` the other two; ``beta`` is bounded with IRN's soft clamp
  ``clamp * (2 sigmoid - 1)`` (the shared block; the paper writes a bare ``exp(beta)``).

Quantization (Sec. 3.3): the LR image ``F(x)`` passes IRN's 8-bit quantizer with a
straight-through gradient (:func:`refscale.ops.quantize_8bit`); ``x`` passes the same rounding
after a clamp that keeps its true gradient (:func:`quantize_representation`, our choice, see there).
Downscaling: ``lr = F(Q(Gd(hr)))``. Upscaling: ``hr = Gu(Q(F^-1(lr)))``; re-quantizing after
``F^-1`` makes the representation exact again whenever the LR's 8-bit rounding moved it by less
than half a level (the paper's reason for quantizing ``x``: a lossless F).

Training (Sec. 3.4), two objectives on disjoint parameter groups inside one ``total``:

* ``rec`` (eq. 7) = ``mean |Gu(Q(Gd(y))) - y|`` -> gradients into Gd and Gu only (F is not on
  this path: the paper trains Gu on ``x`` itself, Fig. 1a);
* ``guide`` (eq. 9) = ``mean |Q(F(x')) - bicubic(y)| - gamma * logdet F(x') / (3 h w)`` with
  ``x' = Q(Gd(y)).detach()`` -> gradients into F only. The detach stops eq. 9 from steering Gd
  (the point of the paper: no LR guidance on the downscaling module). Both eq. 9 terms are
  divided by the number of LR values, so ``gamma`` weighs them as in the paper's sums (eq. 8-9);
  ``gamma = 1e-3`` (Sec. 3.4, 4.5).

``total = rec + guide``: since the two terms share no parameters, one optimizer on ``total``
gives each group exactly the gradient of its own objective, and Adam (per-parameter
normalisation) then behaves like the paper's two optimizers with the same settings. Only a
*global* gradient-norm clip would couple them, so the FGRN configs leave ``grad_clip`` off (the
paper clips nothing). Reductions are means (the paper's "L1 loss"); with Adam the scale of a
term does not matter, only the ratio inside eq. 9.

Sizes (our choice; the paper gives only the totals 1.33M / 3.35M): ``nf`` = 64, ``flow_cells``
= 2 with growth 32 (176,699 parameters each) at both scales (F works on LR images whatever the
scale); ``down_blocks/up_blocks`` = 5/6 at x2 and 18/18 at x4: 1,325,756 (x2, -0.3%) and
3,340,604 (x4, -0.3%) parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refscale import ops
from refscale.errors import ModelError
from refscale.nn.invertible import AffineCoupling, FlowSequence, dense_subnet, exact
from refscale.nn.layers import ResidualTrunk, init_convs
from refscale.nn.speed import FastInference
from refscale.ops import levels_for_scale
from refscale.protocol import ExportGraphs, Rescaler, register

#: default (down_blocks, up_blocks) per scale: our choice, to land on the paper's 1.33M / 3.35M parameters
DEFAULT_BLOCKS = {2: (5, 6), 4: (18, 18)}


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class Downscaler(nn.Module):
    """Gd: squeeze -> conv -> residual blocks -> conv to 3 channels, plus the block mean (see module doc)."""

    def __init__(self, scale: int, nf: int, n_blocks: int):
        super().__init__()
        self.scale = scale
        self.head = _conv(3 * scale * scale, nf)
        self.trunk = ResidualTrunk(nf, n_blocks)
        self.tail = _conv(nf, 3)
        init_convs([self.tail], "zero")  # x starts as the block mean (our choice, like IRN's zero-init subnets)

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        f = self.trunk(self.head(F.pixel_unshuffle(hr, self.scale)))
        return F.avg_pool2d(hr.float(), self.scale) + self.tail(f).float()


class Upscaler(nn.Module):
    """Gu: conv -> residual blocks -> (conv + PixelShuffle(2)) x log2(s) -> conv to RGB."""

    def __init__(self, scale: int, nf: int, n_blocks: int):
        super().__init__()
        self.head = _conv(3, nf)
        self.trunk = ResidualTrunk(nf, n_blocks)
        up = []
        for _ in range(levels_for_scale(scale)):
            up += [_conv(nf, 4 * nf), nn.PixelShuffle(2)]
        self.up = nn.Sequential(*up)
        self.tail = _conv(nf, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.up(self.trunk(self.head(x)))).float()


def quantize_representation(x: torch.Tensor) -> torch.Tensor:
    """8-bit quantizer for the representation: a *true* clamp to [0, 1] (zero gradient outside),
    then rounding to k/255 with the straight-through gradient (:func:`refscale.ops.round_ste`).

    IRN's quantizer (:func:`refscale.ops.quantize_8bit`, used for the LR) passes the gradient
    through its clamp as well; that is harmless for an LR image pulled towards the bicubic
    image, but ``x`` has no guidance: with it, values beyond [0, 1] kept receiving gradients
    that cannot change the (clamped) output and drifted without bound in our overfit runs.
    """
    return ops.round_ste(x.float().clamp(0, 1) * 255) / 255


@register("fgrn-x4", scale=4, weights="fgrn-x4-natural")
@register("fgrn-x2", scale=2, weights="fgrn-x2-natural")
class FGRN(FastInference, Rescaler):
    """Flow-guidance rescaling network; ``fgrn-x2`` / ``fgrn-x4``. Config keys are the constructor arguments."""

    arch = "fgrn"
    needs_reference = False
    stochastic = False

    def __init__(self, scale: int = 2, nf: int = 64, down_blocks: int | None = None, up_blocks: int | None = None,
                 flow_cells: int = 2, gc: int = 32, clamp: float = 1.0, gamma: float = 1e-3):
        scale = int(scale)
        levels_for_scale(scale)  # a power of two >= 2
        d_default, u_default = DEFAULT_BLOCKS.get(scale, DEFAULT_BLOCKS[4])
        down_blocks = d_default if down_blocks is None else int(down_blocks)
        up_blocks = u_default if up_blocks is None else int(up_blocks)
        if min(nf, flow_cells, gc) < 1 or min(down_blocks, up_blocks) < 0:
            raise ModelError(f"FGRN sizes must be positive: nf={nf}, flow_cells={flow_cells}, gc={gc}, "
                             f"down_blocks={down_blocks}, up_blocks={up_blocks}")
        super().__init__(scale, nf=int(nf), down_blocks=down_blocks, up_blocks=up_blocks, flow_cells=int(flow_cells),
                         gc=int(gc), clamp=float(clamp), gamma=float(gamma))
        self.gamma = float(gamma)
        self.down = Downscaler(scale, nf, down_blocks)
        self.up = Upscaler(scale, nf, up_blocks)
        subnet = dense_subnet(gc)
        self.flow = FlowSequence([AffineCoupling(3, 1, subnet, clamp) for _ in range(flow_cells)])

    # ------------------------------------------------------------------ the three maps
    def represent(self, hr: torch.Tensor) -> torch.Tensor:
        """The quantized downscaled representation ``Q(Gd(hr))`` (eq. 3, Sec. 3.3)."""
        return quantize_representation(self.down(hr))

    def to_lr(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``F(x)`` (eq. 4-5) before quantization and its log-determinant ``[N]``."""
        lr, logdet = self.flow(x.float())
        return lr.float(), logdet.float()

    def from_lr(self, lr: torch.Tensor) -> torch.Tensor:
        """``Q(F^-1(lr))`` (eq. 6), the representation Gu expects."""
        return quantize_representation(self.flow.inverse(lr.float()).float())

    # ------------------------------------------------------------------ protocol
    def downscale(self, hr, ref=None):
        with self.speed_context(hr):
            lr, _ = self.to_lr(self.represent(self.speed_input(hr)))
        return lr.clamp(0, 1).contiguous(), {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        with self.speed_context(lr):
            hr = self.up(self.speed_input(self.from_lr(self.speed_input(lr))))
        return hr.float().clamp(0, 1).contiguous()

    # ------------------------------------------------------------------ ONNX export
    def export_graphs(self) -> ExportGraphs:
        """The two maps with the quantizers' forward value (:func:`refscale.ops.round_8bit`) in
        place of their straight-through form, in fp32."""
        self.set_speed()
        return ExportGraphs(self._export_down, self._export_up)

    def _export_down(self, hr, ref=None):
        lr, _ = self.flow(ops.round_8bit(self.down(hr)))  # F(Q(Gd(hr))), as downscale
        return lr.clamp(0, 1), {}

    def _export_up(self, lr, side=None, ref=None, z=None):
        return self.up(ops.round_8bit(self.flow.inverse(lr))).clamp(0, 1)  # Gu(Q(F^-1(lr))), as upscale

    def training_losses(self, hr, ref=None):
        x = self.represent(hr)
        rec = (self.up(x) - hr.float()).abs().mean()  # eq. 7: Gd + Gu
        lr, logdet = self.to_lr(x.detach())  # eq. 9: F only
        with exact(hr):  # the guide in full precision even under autocast
            guide_img = ops.bicubic_down(hr.float(), self.scale).detach()
        fit = (ops.quantize_8bit(lr) - guide_img).abs().mean()
        logdet_per_value = logdet.mean() / lr[0].numel()
        guide = fit - self.gamma * logdet_per_value
        return {"total": rec + guide, "rec": rec, "guide": guide, "lr_l1": fit, "logdet": logdet_per_value}

