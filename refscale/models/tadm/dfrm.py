"""DFRM: TADM's decoupled feature rescaling module (TADM Sec. 3.2, Fig. 2, eq. 3-8).

Two chains (Sec. 3.2.1): feature rescaling ``(x, z) -> z_lr -> z_hat`` with the CNNs Ge and Gd,
and LR-image generation ``z_lr <-> y`` with an invertible network F:

* **Ge** (eq. 3) ``z_lr = Ge(x, z)``: the SD latent ``z`` ``[N,4,H/8,W/8]`` and the HR image
  ``x`` -> the compact 3-channel ``z_lr`` ``[N,3,H/s,W/s]``. Latent branch: 3x3 conv, residual
  blocks, then per factor 2 between the latent and the LR grid a squeeze (``pixel_unshuffle``,
  lossless as FGRN's Gd) and a 3x3 conv, then residual blocks. *Pixel guidance branch*: the
  MATLAB-bicubic LR image ``bicubic(x)`` (3x3 conv + residual blocks), fused with the latent
  branch by concatenation, a 1x1 conv, residual blocks and a 3x3 conv to 3 channels.
  *Our choices* (the paper shows the module only as a figure): the pixel branch takes
  ``bicubic(x)`` (the guidance target of eq. 7) rather than the full-resolution image, and
  ``z_lr = bicubic(x) + tail(...)`` with a zero-initialised tail, so an untrained DFRM already
  yields the bicubic LR image (like FGRN's box-filter start).
* **F** (eq. 4): ``flow_cells`` IRN/FGRN flow cells on the 3 channels (the shared
  :class:`~refscale.nn.invertible.AffineCoupling`, first channel vs. the other two, Dense-Block
  subnets) -- the "separate INN" the paper borrows from FGRN. ``y = Q(F(z_lr))`` with IRN's 8-bit
  quantizer (straight-through gradient); upscaling uses ``F^-1(y)``.
* **Gd** (eq. 5) ``z_hat = Gd(z_lr)``: 3x3 conv, residual blocks, per factor 2 a conv and
  ``PixelShuffle(2)``, residual blocks, 3x3 conv to the latent channels.

Losses: eq. 6 (reconstruction with and without the quantized F round trip), eq. 7 (guidance on
``F(Ge(x, z))``), eq. 8 (their weighted sum). Reductions are means (the paper's L1).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from refscale import ops
from refscale.errors import ModelError
from refscale.nn.invertible import AffineCoupling, FlowSequence, dense_subnet, exact
from refscale.nn.layers import ResidualTrunk, init_convs


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, 1, k // 2)


def _levels(factor: int) -> int:
    levels = int(round(math.log2(factor))) if factor >= 1 else -1
    if levels < 1 or 2**levels != factor:
        raise ModelError(f"the scale must be the latent factor times a power of two >= 2 (got a ratio of {factor})")
    return levels


class Encoder(nn.Module):
    """Ge (eq. 3): ``(x, z) -> z_lr``, with the pixel guidance branch (see the module doc)."""

    def __init__(self, scale: int, latent_factor: int, latent_channels: int, nf: int, n_blocks: int):
        super().__init__()
        self.scale = scale
        levels = _levels(scale // latent_factor if scale % latent_factor == 0 else 0)
        self.latent_head = nn.Sequential(_conv(latent_channels, nf), ResidualTrunk(nf, n_blocks))
        down = []
        for _ in range(levels):
            down += [nn.PixelUnshuffle(2), _conv(4 * nf, nf), nn.LeakyReLU(0.2, inplace=True)]
        self.latent_down = nn.Sequential(*down, ResidualTrunk(nf, n_blocks))
        self.pixel = nn.Sequential(_conv(3, nf), ResidualTrunk(nf, n_blocks))
        self.fuse = nn.Sequential(_conv(2 * nf, nf, 1), ResidualTrunk(nf, n_blocks))
        self.tail = _conv(nf, 3)
        init_convs([self.tail], "zero")  # z_lr starts as bicubic(x) (our choice, see module doc)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with exact(x):
            guide = ops.bicubic_down(x.float(), self.scale)
        f = self.latent_down(self.latent_head(z))
        g = self.pixel(guide)
        return guide + self.tail(self.fuse(torch.cat([f, g.to(f.dtype)], 1))).float()


class Decoder(nn.Module):
    """Gd (eq. 5): ``z_lr -> z_hat`` (conv, residual blocks, conv + PixelShuffle per factor 2, conv)."""

    def __init__(self, scale: int, latent_factor: int, latent_channels: int, nf: int, n_blocks: int):
        super().__init__()
        levels = _levels(scale // latent_factor if scale % latent_factor == 0 else 0)
        up = []
        for _ in range(levels):
            up += [_conv(nf, 4 * nf), nn.PixelShuffle(2), nn.LeakyReLU(0.2, inplace=True)]
        self.body = nn.Sequential(_conv(3, nf), ResidualTrunk(nf, n_blocks), *up, ResidualTrunk(nf, n_blocks),
                                  _conv(nf, latent_channels))

    def forward(self, z_lr: torch.Tensor) -> torch.Tensor:
        return self.body(z_lr).float()


class DFRM(nn.Module):
    """Decoupled feature rescaling module: Ge (eq. 3), F (eq. 4), Gd (eq. 5) and the eq. 6-8 losses.

    ``scale``: HR -> LR factor (16, 32); ``latent_factor``: HR -> latent factor of the VAE (8
    for Stable Diffusion). Sizes are our choice (the paper gives none): ``nf`` = 64 features,
    ``n_blocks`` = 4 residual blocks per trunk, ``flow_cells`` = 2 cells with growth 32 (FGRN's F).
    """

    def __init__(self, scale: int, latent_factor: int = 8, latent_channels: int = 4, nf: int = 64,
                 n_blocks: int = 4, flow_cells: int = 2, gc: int = 32, clamp: float = 1.0):
        super().__init__()
        if min(nf, flow_cells, gc) < 1 or n_blocks < 0:
            raise ModelError(f"DFRM sizes must be positive: nf={nf}, n_blocks={n_blocks}, flow_cells={flow_cells}, gc={gc}")
        self.scale = int(scale)
        self.encoder = Encoder(self.scale, latent_factor, latent_channels, nf, n_blocks)
        self.flow = FlowSequence([AffineCoupling(3, 1, dense_subnet(gc), clamp) for _ in range(flow_cells)])
        self.decoder = Decoder(self.scale, latent_factor, latent_channels, nf, n_blocks)

    # ------------------------------------------------------------------ the maps
    def encode(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``z_lr = Ge(x, z)`` (eq. 3)."""
        return self.encoder(x, z)

    def to_image(self, z_lr: torch.Tensor) -> torch.Tensor:
        """``F(z_lr)`` (eq. 4) before quantization."""
        return self.flow(z_lr)[0]

    def from_image(self, y: torch.Tensor) -> torch.Tensor:
        """``F^-1(y)`` (eq. 4): the compact latent recovered from an LR image."""
        return self.flow.inverse(y)

    def decode(self, z_lr: torch.Tensor) -> torch.Tensor:
        """``z_hat = Gd(z_lr)`` (eq. 5)."""
        return self.decoder(z_lr)

    # ------------------------------------------------------------------ eq. 6-8
    def losses(self, x: torch.Tensor, z: torch.Tensor, lambda_rec: float = 1.0, lambda_gui: float = 1.0) -> dict[str, torch.Tensor]:
        """``{"res", "rec", "gui"}``: eq. 8 = ``lambda_rec * rec + lambda_gui * gui`` with eq. 6 and 7."""
        z = z.float()
        z_lr = self.encode(x, z)
        y = self.to_image(z_lr)
        direct = (self.decode(z_lr) - z).abs().mean()
        through_lr = (self.decode(self.from_image(ops.quantize_8bit(y))) - z).abs().mean()
        rec = direct + through_lr  # eq. 6
        with exact(x):
            guide = ops.bicubic_down(x.float(), self.scale).detach()
        gui = (y.float() - guide).abs().mean()  # eq. 7
        return {"res": lambda_rec * rec + lambda_gui * gui, "rec": rec, "gui": gui}
