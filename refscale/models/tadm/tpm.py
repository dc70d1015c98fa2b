"""TPM: TADM's time-step prediction module, ``t = TPM(z_hat)`` (Sec. 3.3, Fig. 1).

The rescaled latent ``z_hat`` is degraded unevenly (Fig. 3); the TPM estimates from it how much
"noise" the rescaling added, as a diffusion time step, one per input (per training crop, per
tile at inference, Algorithm 1).

*Our choices* (the paper shows the TPM only as a block in Fig. 1): a 3x3 conv and three
stride-2 3x3 convs with SiLU, global average pooling and a linear layer, then
``t = (T - 1) * sigmoid(logit)``, so ``t`` is a real number strictly inside ``(0, T - 1)`` (the
valid DDPM steps ``0 .. T-1``) whatever the input; ``t`` stays continuous so that gradients
reach the TPM through the UNet's time embedding and the learned scheduler (eq. 10). The final
bias starts at ``logit(init_t / (T - 1))``, so an untrained TPM predicts about ``init_t``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class TPM(nn.Module):
    """``forward(z_hat [N,C,h,w]) -> t [N]`` in ``(0, num_train_timesteps - 1)``."""

    def __init__(self, latent_channels: int = 4, nf: int = 64, num_train_timesteps: int = 1000, init_t: float = 200.0):
        super().__init__()
        self.t_max = float(num_train_timesteps - 1)
        if not 0 < init_t < self.t_max:
            raise ValueError(f"init_t must lie strictly between 0 and {self.t_max:g}, got {init_t}")
        act = nn.SiLU()
        self.body = nn.Sequential(
            nn.Conv2d(latent_channels, nf, 3, 1, 1), act,
            nn.Conv2d(nf, nf, 3, 2, 1), act,
            nn.Conv2d(nf, 2 * nf, 3, 2, 1), act,
            nn.Conv2d(2 * nf, 2 * nf, 3, 2, 1), act,
        )
        self.head = nn.Linear(2 * nf, 1)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            p = init_t / self.t_max
            self.head.bias.fill_(math.log(p / (1 - p)))

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        f = self.body(z_hat).float().mean(dim=(2, 3))
        return self.t_max * torch.sigmoid(self.head(f.to(self.head.weight.dtype)).float()).squeeze(1)
