"""TADM's hybrid time scheduler (Sec. 3.3, Fig. 4, eq. 9-10).

* **Fixed scheduler** (eq. 9), the one-step DDPM estimate of the clean latent from the UNet
  output at step ``t`` with ``a = alpha_bar_t`` of the SD noise schedule:

  - epsilon prediction: ``z0 = (z_t - sqrt(1 - a) * eps) / sqrt(a)``  (eq. 9 as printed);
  - v prediction (SD 2.x 768 px models): ``z0 = sqrt(a) * z_t - sqrt(1 - a) * v``;
  - sample prediction: ``z0 = out``.

  ``alpha_bar`` is a table indexed by an integer step, so this part has no gradient w.r.t. ``t``.
* **Learned scheduler** (eq. 10): a small CNN on ``[z_hat, out]`` modulated by an embedding of
  ``t`` (sinusoidal -> MLP -> per-channel scale and shift), ending in a zero-initialised 3x3
  convolution (the paper's zero convolution), so the hybrid scheduler starts as the fixed one
  and gradients reach the TPM through ``t``.

``z0 = S_fixed(z_hat, out, t0) + S_learned(z_hat, out, t)`` (eq. 10). The paper calls ``t0``
"the fixed pre-set time-step" while Fig. 1 and Algorithm 1 feed the predicted ``t`` to the
scheduler. *Our choice*: by default ``t0`` is the predicted ``t`` rounded to an integer step and
detached (``fixed_t=None``), so the fixed part is the exact DDPM step at the step the TPM chose;
``fixed_t=<int>`` gives the literal pre-set reading of eq. 10.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N, dim]`` of real-valued steps ``t [N]`` (differentiable in ``t``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def fixed_x0(z_t: torch.Tensor, out: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Eq. 9 (and its v/sample-prediction forms); ``alpha_bar`` broadcasts against ``z_t`` (e.g. ``[N,1,1,1]``)."""
    a = alpha_bar.to(torch.float32)
    if prediction_type == "epsilon":
        return (z_t.float() - (1 - a).sqrt() * out.float()) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * z_t.float() - (1 - a).sqrt() * out.float()
    if prediction_type == "sample":
        return out.float()
    raise ValueError(f"unknown prediction type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")


class LearnedScheduler(nn.Module):
    """``S_learned(z_hat, out, t)`` of eq. 10; exactly zero at initialisation (zero convolution)."""

    def __init__(self, latent_channels: int = 4, nf: int = 64, num_train_timesteps: int = 1000, temb_dim: int = 128):
        super().__init__()
        self.temb_dim = temb_dim
        self.num_train_timesteps = num_train_timesteps
        self.temb = nn.Sequential(nn.Linear(temb_dim, nf), nn.SiLU(), nn.Linear(nf, 2 * nf))
        self.conv_in = nn.Conv2d(2 * latent_channels, nf, 3, 1, 1)
        self.conv_mid = nn.Conv2d(nf, nf, 3, 1, 1)
        self.zero_conv = nn.Conv2d(nf, latent_channels, 3, 1, 1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)

    def forward(self, z_hat: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.temb(timestep_embedding(t, self.temb_dim).to(self.temb[0].weight.dtype))
        scale, shift = emb[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.conv_in(torch.cat([z_hat, out.to(z_hat.dtype)], 1)))
        h = h * (1 + scale.to(h.dtype)) + shift.to(h.dtype)
        return self.zero_conv(F.silu(self.conv_mid(h))).float()


class HybridScheduler(nn.Module):
    """Eq. 10: ``z0 = fixed_x0(z_hat, out, alpha_bar[t0]) + S_learned(z_hat, out, t)``.

    ``alphas_cumprod`` (``[T]``) and ``prediction_type`` come from the SD scheduler config and are
    not trained (a non-persistent buffer: part of the base model, not of TADM's weights).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", latent_channels: int = 4,
                 nf: int = 64, fixed_t: int | None = None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = int(alphas_cumprod.numel())
        if fixed_t is not None and not 0 <= int(fixed_t) < self.num_train_timesteps:
            raise ValueError(f"fixed_t must be in 0..{self.num_train_timesteps - 1}, got {fixed_t}")
        self.fixed_t = None if fixed_t is None else int(fixed_t)
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float64).clone(), persistent=False)
        self.learned = LearnedScheduler(latent_channels, nf, self.num_train_timesteps)

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        """The integer step ``t0`` the fixed part uses (``[N]``, long, no gradient)."""
        if self.fixed_t is not None:
            return torch.full(t.shape, self.fixed_t, dtype=torch.long, device=t.device)
        return t.detach().round().clamp(0, self.num_train_timesteps - 1).long()

    def fixed(self, z_hat: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[self.step_index(t)].view(-1, 1, 1, 1)
        return fixed_x0(z_hat, out, a, self.prediction_type)

    def forward(self, z_hat: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fixed(z_hat, out, t) + self.learned(z_hat, out, t)
