"""TADM: timestep-aware diffusion model for extreme (16x, 32x) rescaling (TADM paper, Fig. 1).

``downscale``: ``x -> z = E(x)`` (SD VAE encoder, latent mean times the VAE's scaling factor)
``-> z_lr = Ge(x, z)`` (eq. 3) ``-> y = F(z_lr)`` (eq. 4; the pipeline stores it as 8 bits).

``upscale``: ``y -> z_lr = F^-1(y) -> z_hat = Gd(z_lr)`` (eq. 5) ``-> z0``: one denoising step of
the SD UNet (with LoRA adapters) at the step ``t = TPM(z_hat)`` through the hybrid scheduler
(eq. 9-10), per latent patch (Algorithm 1: patch 96, stride 64) ``-> x_hat = D(z0)`` (SD VAE
decoder, with LoRA adapters). The UNet is conditioned on the precomputed embedding of the empty
prompt. Deterministic: no randomness at decoding.

Training (Sec. 4.1.2), one stage per run, chosen by the config value ``stage``:

1. DFRM only, eq. 8 (``lambda_rec * rec + lambda_gui * gui``);
2. UNet and VAE-decoder LoRA, TPM and learned scheduler, eq. 11 (``L1 + lambda_pec * (LPIPS +
   DISTS)``) on ``x_hat`` decoded from the quantized LR path, DFRM frozen;
3. all of them jointly, eq. 8 + eq. 11 (with a smaller learning rate in the config).

The frozen base (VAE, UNet weights, noise schedule, null embedding) is not part of TADM's
weights: ``state_dict`` holds only the DFRM, TPM, learned scheduler and LoRA tensors (a few
MB); the base comes from the user's Stable Diffusion folder (``sd_path`` / ``$REFSCALE_SD_PATH``).
:meth:`TADM.weights_hash` covers both (the base by a SHA-256 of its tensors, computed once), so a
container decoded on another base is refused. Machine-local paths (``sd_path``,
``null_embedding``, ``init_weights``, ``perceptual_dir``) are not recorded in the config.

Choices the paper leaves open are documented where they are made (``dfrm.py``, ``tpm.py``,
``scheduler.py``, ``tiles.py``, ``backbone.py``); loss weights ``lambda_rec = lambda_gui =
lambda_pec = 1`` and LPIPS-VGG for the loss are ours.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from refscale import ops
from refscale.errors import ModelError
from refscale.protocol import Rescaler, register
from refscale.weights_io import load_into, read_safetensors
from refscale.models.tadm import backbone, tiles
from refscale.models.tadm.dfrm import DFRM
from refscale.models.tadm.scheduler import HybridScheduler
from refscale.models.tadm.tpm import TPM
from refscale.nn.speed import FastInference

STAGES = (1, 2, 3)
#: constructor arguments that are paths on this machine: used, never recorded in the config
LOCAL_ARGS = ("sd_path", "null_embedding", "init_weights", "perceptual_dir")


def _is_lora(key: str) -> bool:
    return ".lora_" in "." + key


class _FrozenBase:
    """State-dict hooks on TADM: the non-LoRA tensors of its diffusers parts are neither saved nor
    expected (at any nesting, e.g. inside DDP). The parts' own ``state_dict``/``save_pretrained``
    are untouched."""

    def __init__(self, owner: torch.nn.Module, parts: dict[str, torch.nn.Module]):
        self.names = [f"{name}.{k}" for name, part in parts.items() for k in part.state_dict() if not _is_lora(k)]
        self.prefix = ""

        def drop(module, state_dict, prefix, local_metadata):
            for name in self.names:
                state_dict.pop(prefix + name, None)

        def remember_prefix(module, state_dict, prefix, *args):
            self.prefix = prefix

        def forgive(module, incompatible_keys):
            base = {self.prefix + n for n in self.names}
            incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if k not in base]

        owner.register_state_dict_post_hook(drop)
        owner.register_load_state_dict_pre_hook(remember_prefix)
        owner.register_load_state_dict_post_hook(forgive)


@register("tadm-x32", scale=32)
@register("tadm-x16", scale=16)
class TADM(FastInference, Rescaler):
    """TADM rescaler; ``tadm-x16`` / ``tadm-x32``. Config keys are the constructor arguments.

    Base model: ``sd_path`` (default ``$REFSCALE_SD_PATH``), a local diffusers-layout SD 2.1-base
    folder with ``null_text_embedding.safetensors`` in it (or ``null_embedding=<file>``), or
    ``base="sd21-base"`` / ``base={"unet": {...}, "vae": {...}, "scheduler": {...}}`` for a
    randomly initialised base (seed ``base_seed``; tests, speed measurements).
    """

    arch = "tadm"
    export_refusal = ("TADM runs a Stable Diffusion backbone the user supplies, with stochastic per-patch time "
                      "steps; run it on the ground")
    needs_reference = False
    stochastic = False

    def __init__(self, scale: int = 16, *, sd_path: str | None = None, base: str | dict | None = None, base_seed: int = 0,
                 variant: str | None = None, null_embedding: str | None = None, stage: int = 1,
                 dfrm_nf: int = 64, dfrm_blocks: int = 4, flow_cells: int = 2, flow_gc: int = 32,
                 tpm_nf: int = 64, init_t: float = 200.0, scheduler_nf: int = 64, fixed_t: int | None = None,
                 lora_rank: int = 4, vae_lora_rank: int = 4, unet_lora_targets: list[str] | None = None,
                 vae_lora_targets: list[str] | None = None, tile_size: int = 96, tile_stride: int = 64, tile_batch: int = 1,
                 lambda_rec: float = 1.0, lambda_gui: float = 1.0, lambda_pec: float = 1.0, lpips_net: str = "vgg",
                 perceptual_dir: str | None = None, init_weights: str | None = None):
        stage = int(stage)
        if stage not in STAGES:
            raise ModelError(f"TADM training stage must be 1, 2 or 3, got {stage}")
        if min(tile_size, tile_stride, tile_batch) < 0 or (tile_size and not 0 < tile_stride <= tile_size):
            raise ModelError(f"tiles need 0 < tile_stride <= tile_size (latent pixels), got {tile_size}/{tile_stride}")
        if lpips_net not in ("vgg", "alex"):
            raise ModelError(f"lpips_net must be 'vgg' or 'alex', got {lpips_net!r}")
        unet_lora_targets = list(unet_lora_targets or backbone.UNET_LORA_TARGETS)
        vae_lora_targets = list(vae_lora_targets or backbone.VAE_DECODER_LORA_TARGETS)
        super().__init__(scale, base=base, base_seed=int(base_seed), variant=variant, stage=stage, dfrm_nf=int(dfrm_nf),
                         dfrm_blocks=int(dfrm_blocks), flow_cells=int(flow_cells), flow_gc=int(flow_gc), tpm_nf=int(tpm_nf),
                         init_t=float(init_t), scheduler_nf=int(scheduler_nf), fixed_t=fixed_t, lora_rank=int(lora_rank),
                         vae_lora_rank=int(vae_lora_rank), unet_lora_targets=unet_lora_targets,
                         vae_lora_targets=vae_lora_targets, tile_size=int(tile_size), tile_stride=int(tile_stride),
                         tile_batch=max(1, int(tile_batch)), lambda_rec=float(lambda_rec), lambda_gui=float(lambda_gui),
                         lambda_pec=float(lambda_pec), lpips_net=lpips_net)
        # -- the frozen base --
        if base is not None:
            parts = backbone.build_random(base, base_seed, null_embedding)
        else:
            parts = backbone.load_pretrained(sd_path, null_embedding, variant)
        self.base_source = parts.source
        self.unet, self.vae = parts.unet, parts.vae
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.register_buffer("null_embedding", parts.null_embedding, persistent=False)
        vcfg = self.vae.config
        self.latent_factor = 2 ** (len(vcfg.block_out_channels) - 1)
        self.latent_channels = int(vcfg.latent_channels)
        self.scaling_factor = float(vcfg.scaling_factor)
        self.shift_factor = float(getattr(vcfg, "shift_factor", None) or 0.0)
        if self.scale % self.latent_factor or self.scale // self.latent_factor < 2:
            raise ModelError(f"TADM x{self.scale} needs a scale of at least twice the VAE factor {self.latent_factor}")
        # -- TADM's own modules --
        self.dfrm = DFRM(self.scale, self.latent_factor, self.latent_channels, dfrm_nf, dfrm_blocks, flow_cells, flow_gc)
        try:
            self.tpm = TPM(self.latent_channels, tpm_nf, int(parts.alphas_cumprod.numel()), init_t)
            self.scheduler = HybridScheduler(parts.alphas_cumprod, parts.prediction_type, self.latent_channels,
                                             scheduler_nf, fixed_t)
        except ValueError as e:
            raise ModelError(f"TADM: {e}") from None
        # -- LoRA (always present, so every stage has the same weights layout) --
        backbone.inject_lora(self.unet, lora_rank, unet_lora_targets)
        backbone.inject_lora(self.vae.decoder, vae_lora_rank, vae_lora_targets)
        self._frozen = _FrozenBase(self, {"unet": self.unet, "vae": self.vae})
        self._base_fingerprint: str | None = None
        self._perceptual: dict[str, torch.nn.Module] = {}
        self.perceptual_dir = perceptual_dir
        self.tile_size, self.tile_stride, self.tile_batch = (self.config[k] for k in ("tile_size", "tile_stride", "tile_batch"))
        self.lambda_rec, self.lambda_gui, self.lambda_pec = float(lambda_rec), float(lambda_gui), float(lambda_pec)
        self.stage = stage
        self.set_stage(stage)
        if init_weights:
            self.load_weights(init_weights)

    # ------------------------------------------------------------------ parameter groups
    def lora_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {k: p for k, p in self.named_parameters() if _is_lora(k)}

    def set_stage(self, stage: int) -> None:
        """Which parameters train (Sec. 4.1.2): 1 = DFRM; 2 = LoRA, TPM, scheduler; 3 = all of these."""
        if stage not in STAGES:
            raise ModelError(f"TADM training stage must be 1, 2 or 3, got {stage}")
        self.stage = stage
        self.dfrm.requires_grad_(stage in (1, 3))
        for module in (self.tpm, self.scheduler):
            module.requires_grad_(stage in (2, 3))
        for p in self.lora_parameters().values():
            p.requires_grad_(stage in (2, 3))

    # ------------------------------------------------------------------ SD parts
    def vae_encode(self, x: torch.Tensor) -> torch.Tensor:
        """``z = E(x)``: the latent mean, scaled for the UNet (``x`` in [0,1])."""
        z = self.vae.encode(x * 2 - 1).latent_dist.mode()
        return ((z.float() - self.shift_factor) * self.scaling_factor)

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        """``x_hat = D(z)`` in [0,1] (not clamped, for the losses)."""
        x = self.vae.decode(z / self.scaling_factor + self.shift_factor).sample
        return (x.float() + 1) / 2

    def denoise(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on whole inputs: ``t = TPM(z_hat)``, ``out = UNet(z_hat, t)``, ``z0`` by eq. 10. Returns ``(z0, t)``."""
        t = self.tpm(z_hat)
        text = self.null_embedding.expand(z_hat.shape[0], -1, -1)
        out = self.unet(z_hat, t, encoder_hidden_states=text).sample
        return self.scheduler(z_hat, out, t), t

    def enhance(self, z_hat: torch.Tensor, tile: int | None = None, stride: int | None = None,
                return_timesteps: bool = False):
        """Algorithm 1, lines 3-11: denoise latent patches (each with its own ``t``) and merge them.

        ``tile``/``stride`` in latent pixels (default: the model's, 96/64); ``tile=0`` denoises the
        whole latent at once with one ``t``. With ``return_timesteps`` also returns the merged map
        of per-patch steps ``[N,1,h,w]``.
        """
        tile = self.tile_size if tile is None else int(tile)
        stride = self.tile_stride if stride is None else int(stride)
        size = tuple(z_hat.shape[-2:])
        if tile <= 0:
            tile, stride = max(size), max(size)
        (ph, pw), origins = tiles.grid(size, tile, stride)
        if len(origins) == 1:
            z0, t = self.denoise(z_hat)
            tmap = t.view(-1, 1, 1, 1).expand(-1, 1, *size)
        else:
            n = z_hat.shape[0]
            outs, ts = [], []
            for i in range(0, len(origins), self.tile_batch):
                chunk = origins[i:i + self.tile_batch]
                z0_b, t_b = self.denoise(torch.cat([z_hat[..., y:y + ph, x:x + pw] for y, x in chunk]))
                outs += list(z0_b.split(n))
                ts += [t.view(-1, 1, 1, 1).expand(-1, 1, ph, pw) for t in t_b.split(n)]
            z0 = tiles.merge(outs, origins, size)
            tmap = tiles.merge(ts, origins, size)
        return (z0, tmap) if return_timesteps else z0

    # ------------------------------------------------------------------ protocol
    def downscale(self, hr, ref=None):
        with self.speed_context(hr):
            x = self.speed_input(hr)
            y = self.dfrm.to_image(self.dfrm.encode(x, self.vae_encode(x)))
        return y.float().clamp(0, 1).contiguous(), {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        with self.speed_context(lr):
            z_hat = self.dfrm.decode(self.dfrm.from_image(self.speed_input(lr.float())))
            hr = self.vae_decode(self.enhance(z_hat))
        return hr.float().clamp(0, 1).contiguous()

    def training_losses(self, hr, ref=None):
        """Stage 1: eq. 8; stage 2: eq. 11; stage 3: eq. 8 + eq. 11 (see the module doc)."""
        with torch.no_grad():
            z = self.vae_encode(hr)
        out: dict[str, torch.Tensor] = {}
        total = hr.new_zeros(())
        if self.stage in (1, 3):
            res = self.dfrm.losses(hr, z, self.lambda_rec, self.lambda_gui)
            total = total + res["res"]
            out.update(res)
        if self.stage in (2, 3):
            with torch.set_grad_enabled(self.stage == 3 and torch.is_grad_enabled()):
                y = self.dfrm.to_image(self.dfrm.encode(hr, z))
                z_hat = self.dfrm.decode(self.dfrm.from_image(ops.quantize_8bit(y)))
            z0, t = self.denoise(z_hat)
            x_hat = self.vae_decode(z0)
            l1 = (x_hat - hr.float()).abs().mean()
            enh = l1
            out["l1"] = l1
            if self.lambda_pec:
                lp, ds = self.perceptual_losses(x_hat, hr)
                enh = enh + self.lambda_pec * (lp + ds)
                out.update(lpips=lp, dists=ds)
            out.update(enh=enh, t_mean=t.detach().float().mean())
            total = total + enh
        out["total"] = total
        return out

    def perceptual_losses(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch means of LPIPS and DISTS (eq. 11); the metrics load their weights on first use."""
        if not self._perceptual:
            from refscale import perceptual

            self._perceptual["lpips"] = perceptual.LPIPS(self.config["lpips_net"], weights_dir=self.perceptual_dir).to(x.device)
            self._perceptual["dists"] = perceptual.DISTS(weights_dir=self.perceptual_dir).to(x.device)
        return self._perceptual["lpips"](x_hat, x).mean(), self._perceptual["dists"](x_hat, x).mean()

    # ------------------------------------------------------------------ weights
    def base_fingerprint(self) -> str:
        """SHA-256 of the frozen base (UNet/VAE tensors, noise schedule, null embedding); computed once."""
        if self._base_fingerprint is None:
            h = hashlib.sha256(self.scheduler.prediction_type.encode())
            named = {**dict(self.named_parameters()), **dict(self.named_buffers())}
            tensors = [("alphas_cumprod", self.scheduler.alphas_cumprod), ("null_embedding", self.null_embedding)]
            tensors += [(n, named[n]) for n in self._frozen.names if n in named]
            for name, t in tensors:
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy())
            self._base_fingerprint = h.hexdigest()
        return self._base_fingerprint

    def weights_hash(self) -> str:
        """TADM's own weights (``Rescaler.weights_hash``) and the base fingerprint."""
        return hashlib.sha256((super().weights_hash() + self.base_fingerprint()).encode()).hexdigest()

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load TADM weights written by ``refscale.zoo.save_weights`` (e.g. the previous stage's run)."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"TADM weights not found: {path}")
        tensors, meta = read_safetensors(path)
        if meta.get("arch") not in (None, f"{self.arch}-x{self.scale}"):
            raise ModelError(f"{path} holds {meta.get('arch')} weights, not {self.arch}-x{self.scale}")
        load_into(self, tensors, path, "this TADM configuration")

    def save_lora(self, path: str | os.PathLike) -> None:
        """Write the UNet and VAE-decoder LoRA tensors (only them) to a safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: p.detach().to("cpu").contiguous() for k, p in self.lora_parameters().items()}
        meta = {"format": "refscale-tadm-lora", "lora_rank": str(self.config["lora_rank"]),
                "vae_lora_rank": str(self.config["vae_lora_rank"]),
                "targets": json.dumps({"unet": self.config["unet_lora_targets"], "vae": self.config["vae_lora_targets"]})}
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, path)

    def load_lora(self, path: str | os.PathLike) -> None:
        """Load LoRA tensors written by :meth:`save_lora`; names and shapes must match exactly."""
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"LoRA file not found: {path}")
        tensors, meta = read_safetensors(path)
        own = self.lora_parameters()
        if meta.get("format") != "refscale-tadm-lora":
            raise ModelError(f"{path} is not a TADM LoRA file (save it with TADM.save_lora)")
        if set(tensors) != set(own):
            missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
            raise ModelError(f"{path} does not fit this model's LoRA layers ({len(missing)} missing, {len(extra)} unexpected, "
                             f"e.g. {(missing or extra)[0]})")
        for k, p in own.items():
            if tuple(tensors[k].shape) != tuple(p.shape):
                raise ModelError(f"{path}: LoRA tensor {k} has shape {list(tensors[k].shape)}, the model needs {list(p.shape)}")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(tensors[k])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base={self.base_source!r}, stage={self.stage}"
