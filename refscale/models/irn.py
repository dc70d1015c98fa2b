"""IRN: Invertible Image Rescaling (Xiao et al., ECCV 2020), as its public reference code.

Architecture (``InvRescaleNet``): for each factor 2, a Haar squeeze then ``blocks[i]``
``InvBlockExp`` couplings (DenseBlock subnets, growth 32, scale clamp 1); x2 = Haar + 8,
x4 = 2 x (Haar + 8). The first 3 output channels are the LR image, the rest is ``z``.
Parameters: 1,667,952 (x2) and 4,355,136 (x4); the paper's 1.668M / 4.355M.

Training losses (``IRN_model.py``, ``train_IRN_x{2,4}.yml``), each summed over C,H,W and
averaged over the batch:

* ``lr_fit``  = lambda_fit * L2(LR, bicubic(HR)), lambda_fit = 4 (x2) / 16 (x4)  (= s^2);
* ``z_l2``    = lambda_ce * sum(z^2), lambda_ce = 1 (distribution matching);
* ``hr_rec``  = lambda_rec * Charbonnier(f^-1([Q(LR), z~N(0,1)]), HR), lambda_rec = 1, where
  Q is the 8-bit quantizer with a straight-through gradient.

Training options of ours (``model.train_options``, :class:`refscale.nn.invertible.LatentTraining`):
the temperature range of the sampled ``z``, a penalty on LR values outside [0, 1] and boxes of
bicubic LR in the decoded LR (``foreign_lr``), the decoded LR through a differentiable JPEG
(``jpeg_quality``, ``jpeg_prob``); the defaults are IRN's recipe.

The optimiser settings of the reference (Adam 2e-4, betas 0.9/0.999, weight decay 1e-5,
learning-rate halving every 100k steps, gradient-norm clipping 10, batch 16 x 144 px) belong
to the training configs, not to this module.
"""
from __future__ import annotations

import torch

from refscale import ops
from refscale.errors import ModelError
from refscale.nn.invertible import (AffineCoupling, FlowSequence, HaarSqueeze, LatentTraining, dense_subnet, exact,
                                    sample_latent)
from refscale.nn.losses import sum_charbonnier, sum_l2
from refscale.nn.speed import FastInference
from refscale.ops import levels_for_scale
from refscale.protocol import ExportGraphs, Rescaler, register


@register("irn-x4", scale=4, weights="irn-x4-oscd")
@register("irn-x2", scale=2, weights="irn-x2-oscd")
class IRN(LatentTraining, FastInference, Rescaler):
    """Invertible Rescaling Net; ``irn-x2`` / ``irn-x4``. Config keys are the constructor arguments."""

    arch = "irn"
    needs_reference = False
    stochastic = True

    def __init__(self, scale: int = 2, blocks: list[int] | None = None, gc: int = 32, clamp: float = 1.0,
                 lambda_fit: float | None = None, lambda_rec: float = 1.0, lambda_ce: float = 1.0,
                 gaussian_scale: float = 1.0):
        levels = levels_for_scale(int(scale))
        blocks = [8] * levels if blocks is None else [int(b) for b in blocks]
        if len(blocks) != levels:
            raise ModelError(f"IRN x{scale} needs {levels} entries in blocks, got {blocks}")
        lambda_fit = float(scale) ** 2 if lambda_fit is None else float(lambda_fit)
        super().__init__(scale, blocks=blocks, gc=gc, clamp=clamp, lambda_fit=lambda_fit,
                         lambda_rec=lambda_rec, lambda_ce=lambda_ce, gaussian_scale=gaussian_scale)
        subnet = dense_subnet(gc)
        modules, channels = [], 3
        for n in blocks:
            modules.append(HaarSqueeze())
            channels *= 4
            modules += [AffineCoupling(channels, 3, subnet, clamp) for _ in range(n)]
        self.flow = FlowSequence(modules)
        self.lambda_fit, self.lambda_rec, self.lambda_ce = lambda_fit, float(lambda_rec), float(lambda_ce)
        self.gaussian_scale = float(gaussian_scale)

    def configure_training(self, step: int, **options) -> None:
        """Training-only options (:class:`refscale.nn.invertible.LatentTraining`)."""
        self.set_latent_training(**options)

    # ------------------------------------------------------------------ protocol
    def downscale(self, hr, ref=None):
        with self.speed_context(hr):
            y, _ = self.flow(self.speed_input(hr))
        return y[:, :3].float().clamp(0, 1).contiguous(), {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        n, _, h, w = lr.shape
        z = sample_latent((n, 3 * self.scale**2 - 3, h, w), lr, temperature, generator)
        y = torch.cat([lr.float(), z], 1)
        with self.speed_context(lr):
            hr = self.flow.inverse(self.speed_input(y))
        return hr.float().clamp(0, 1).contiguous()

    def export_graphs(self) -> ExportGraphs:
        """Encoder: ``downscale``; decoder: ``upscale`` with the latent as the input ``z``; fp32."""
        self.set_speed()
        return ExportGraphs(self.downscale, lambda lr, side, ref, z: self.inverse_latent(lr, z).clamp(0, 1),
                            z_channels=3 * self.scale**2 - 3)

    @torch.no_grad()
    def forward_latent(self, hr, ref=None):
        y, _ = self.flow(hr)
        return y[:, :3], y[:, 3:], {}

    @torch.no_grad()
    def inverse_latent(self, lr, z, side=None, ref=None):
        return self.flow.inverse(torch.cat([lr, z], 1))

    def training_losses(self, hr, ref=None):
        y, _ = self.flow(hr)
        lr, z = y[:, :3], y[:, 3:]
        with exact(hr):  # the guide in full precision even under autocast
            guide = ops.bicubic_down(hr.float(), self.scale).detach()
        lr_fit = self.lambda_fit * sum_l2(lr - guide)
        z_l2 = self.lambda_ce * sum_l2(z)
        z_sample = self.gaussian_scale * self.training_latent(z)
        lr_in, foreign = self.training_lr(lr, guide)
        hr_hat = self.flow.inverse(torch.cat([lr_in, z_sample], 1))
        hr_rec = self.lambda_rec * sum_charbonnier(self.outside_foreign(hr_hat - hr, foreign))
        terms = {"lr_fit": lr_fit, "z_l2": z_l2, "hr_rec": hr_rec}
        if self.lr_range_weight:
            terms["lr_range"] = self.lr_range_loss(lr)
        return {"total": sum(terms.values()), **terms}

