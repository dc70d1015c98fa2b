"""RefScale: reference-based image rescaling (RefScale paper, Sec. 3; supplement).

Two sub-networks (Fig. 2):

**Ref-Net** (Sec. 3.3, :class:`RefNet`). *One* encoder, shared by the HR image and the
reference: pixel-unshuffle by ``cond_stride`` (2: the resolution of the first INN level), a 3x3
conv, ``n_rrdb`` RRDB blocks (ESRGAN, the paper's backbone) and a trunk conv with a global skip
-> ``F_HR``, ``F_ref`` (``nf`` channels at ``H/cond_stride``). The paper initialises the RRDB by
pre-training on natural images; no pretrained weights can be downloaded here, so Ref-Net is
trained from scratch together with the INN. The paper does not give the feature resolution;
``cond_stride`` = 2 is our choice (3x cheaper). The supplement's FLOPs (Table 1) fit Ref-Net at
twice the LR resolution, i.e. ``cond_stride=1`` at x2 (same parameters, ~3x the compute;
``benchmarks/model_complexity.py``).
Bottleneck: both feature maps pass the same ``log2(1/smap_res)`` stride-2 convs, then the
per-pixel cosine similarity (eq. 3) gives ``S`` at ``smap_res`` of the condition resolution
(paper default 1/2, Table 2 case 5). Negative cosines (anti-correlated features) are treated as
"not similar": ``S = clamp(cos, 0, 1)``.
Quantization: ``S`` is mapped to integer levels ``q = S * (smap_levels - 1)`` (default 16
levels, stored as uint8). Training adds ``U(-0.5, 0.5)`` noise to ``q``; downscaling rounds it
(Sec. 3.3). With ``quantize=False`` (Table 2, case 3) training uses the continuous ``S`` and the
transmitted map has 32768 levels (int16), i.e. practically unquantized.
Condition: ``S`` is de-quantized, upsampled bilinearly to the feature resolution (the paper's
"upsampling layers"; our choice: parameter-free bilinear) and ``F_c = F_ref * S`` (eq. 4).
:meth:`RefScaleNet.condition` computes ``F_c`` from the reference features and the integer map
and is the *only* place that does so, at encode and at decode time, so both sides get
identical conditions (the receiver has only the reference and the transmitted map).

**Conditional INN** (Sec. 3.5). For each factor 2: a Haar squeeze, then ``blocks[i]``
conditional flow blocks ``ActNorm -> InvConv1x1 (LU) -> ConditionalAffineCoupling`` whose
subnet (IRN DenseBlock) sees ``[F_hb, F_c]`` (eq. 10-11); ``F_c`` is resized to each level
(area averaging down, bilinear up). The first 3 output channels are the LR image, the rest is
``z`` (eq. 8-9). Decoding draws ``z ~ t * N(0, I)`` from the caller's generator (t = 0 allowed).

**Losses** (Sec. 3.4, 3.6), summed over C,H,W and averaged over the batch as in IRN:
``hr_rec`` = lambda_HR * L1 (Charbonnier, eps 1e-6, as IRN's 'l1') between HR and the INN
inverse of ``[Q8(LR), z ~ N(0,1)]`` (eq. 12); ``lr_guide`` = lambda_LR * eq. 5 with
``I_blur = gaussian_blur(bicubic(HR), blur_sigma)`` (our choice: sigma 1.5 LR pixels) and ``S``
(the same noisy de-quantized map that built ``F_c``, resized to the LR size; not detached, as
eq. 5 is written); ``z_l2`` = lambda_distr * sum z^2 (eq. 13). Weights (1, 4, 1) at 2x and
(1, 16, 1) at 4x (Sec. 4.1), eq. 14.

**Ablations** (Table 2): ``condition`` = ``"none"`` (case 1: an unconditional Glow-style INN,
no reference needed), ``"reference"`` (case 2: ``F_c = F_ref``), ``"similarity"`` (cases 3-6);
``quantize`` on/off; ``smap_res`` 1, 0.5, 0.25. Without a similarity map the LR guide is the
bicubic image (``S = 0`` in eq. 5).

**A cheaper map** (``smap_pool``, ours; issue 27 item 4): ``S`` is averaged over
``smap_pool x smap_pool`` cells before quantization, and the condition upsamples the coarser map
as it does the full one. The paper's map (``smap_res`` 1/2, 16 levels) costs 0.19-0.20 bpp in
the container (zlib), which at JPEG's rates is most of the file; with ``smap_pool=4`` and 8
levels 0.008 bpp, and the x2 weights shipped before lost 0.0-0.4 dB PSNR-Y under JPEG q 10-50
before any fine-tuning (OSCD aguasclaras, bordeaux); ``configs/refscale-x2-jpeg-cpu.yaml`` trains
with it.

**The INN block** (``inn_block``; ours, not in the paper): ``"glow"`` (default) = the paper's
conditional flow block above. ``"irn"`` = IRN's two-sided block
(:class:`refscale.nn.invertible.AffineCoupling`) whose three subnets also see ``F_c``, through a
zero-initialised conv added to the first conv of each DenseBlock
(:class:`refscale.nn.layers.DenseBlock`, ``cond_channels``): with IRN's ``blocks`` the INN is
IRN's exactly until those weights learn, so :meth:`RefScaleNet.warm_start` can start it from a
trained IRN (step 0 reproduces that IRN's LR and reconstruction). The shipped OSCD weights use
it; why, and what the Glow blocks measured at our budget: docs/training.md, "RefScale on IRN's
blocks".
(Two other switches of ours, a detail-layer Ref-Net input and an identity start of the Glow
blocks, measured no gain and were removed; docs/training.md has the numbers.)

Training-only options (``configure_training``, set by the engine from ``model.train_options``):
``guide_ramp_steps`` ramps the eq. 5 blur in linearly (``S`` in eq. 5 is multiplied by
``min(1, step / guide_ramp_steps)``; ``F_c`` always uses ``S``), so that a saturated ``S`` of a
fresh Ref-Net does not strip a warm-started LR of its detail at once; ``latent_temperature``,
``lr_range_weight``, ``foreign_lr``, ``jpeg_quality`` and ``jpeg_prob`` as IRN's (:class:`refscale.nn.invertible.LatentTraining`). Parameter groups
(:meth:`parameter_groups`, learning-rate multipliers ``optim.lr_mult``): ``refnet``, ``cond``
(the condition weights of the INN) and ``flow`` (the rest).

Choices the paper leaves open are marked above. Sizes (our choice, to land near the
supplement's 2.8M (x2) / 3.5M (x4) parameters): Ref-Net ``nf`` = 64 with 2 RRDBs (1.52M);
conditional INN ``blocks`` = [8] at x2 and [8, 3] at x4, DenseBlock subnets with growth 32:
2,780,704 (x2) and 3,538,384 (x4) parameters; see ``benchmarks/model_complexity.py``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from refscale import ops
from refscale.errors import InputError, ModelError
from refscale.nn.invertible import (
    ActNorm,
    AffineCoupling,
    ConditionalAffineCoupling,
    FlowSequence,
    HaarSqueeze,
    InvConv1x1,
    LatentTraining,
    dense_subnet,
    exact,
    fix_conv1x1,
    sample_latent,
)
from refscale.nn.layers import RRDB, init_convs
from refscale.nn.losses import sum_charbonnier, sum_l2
from refscale.nn.speed import FastInference
from refscale.ops import levels_for_scale
from refscale.protocol import ExportGraphs, Rescaler, SideSpec, register

CONDITIONS = ("none", "reference", "similarity")
#: constructor keys of removed switches, accepted (and dropped) only at their old default so that
#: weights saved with them still load
_REMOVED_SWITCHES = {"ref_highpass": 0.0, "flow_init": "glow"}
INN_BLOCKS = ("glow", "irn")
UNQUANTIZED_LEVELS = 32768  # int16 map when quantize=False


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a feature map: identity, exact area averaging for integer shrink factors, else bilinear."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h % size[0] == 0 and w % size[1] == 0 and h // size[0] == w // size[1]:
        return F.avg_pool2d(x, h // size[0])
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class RefNet(nn.Module):
    """Referencing network (Sec. 3.3): shared encoder + bottleneck + cosine similarity (eq. 3)."""

    def __init__(self, nf: int = 64, n_rrdb: int = 1, gc: int = 32, stride: int = 2, smap_down: int = 1):
        super().__init__()
        self.stride = stride
        self.head = nn.Conv2d(3 * stride * stride, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(n_rrdb)))
        self.trunk = nn.Conv2d(nf, nf, 3, 1, 1)
        down: list[nn.Module] = []
        for i in range(smap_down):
            down.append(nn.Conv2d(nf, nf, 3, 2, 1))
            if i < smap_down - 1:
                down.append(nn.LeakyReLU(0.2, inplace=True))
        self.down = nn.Sequential(*down)
        init_convs([self.head, self.trunk, self.down], "kaiming", 1.0)

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Features ``[N, nf, H/stride, W/stride]`` of an image (the same encoder for HR and reference)."""
        x = F.pixel_unshuffle(img, self.stride) if self.stride > 1 else img
        f = self.head(x)
        return f + self.trunk(self.body(f))

    def similarity(self, f_hr: torch.Tensor, f_ref: torch.Tensor) -> torch.Tensor:
        """Per-pixel cosine similarity of the bottleneck features (eq. 3), clamped to [0, 1]: ``[N,1,h,w]``."""
        a, b = self.down(f_hr).float(), self.down(f_ref).float()
        return F.cosine_similarity(a, b, dim=1, eps=1e-8).unsqueeze(1).clamp(0, 1)


@register("refscale-x4", scale=4, weights="refscale-x4-oscd")
@register("refscale-x2", scale=2, weights="refscale-x2-oscd")
class RefScaleNet(LatentTraining, FastInference, Rescaler):
    """RefScale (``refscale-x2`` / ``refscale-x4``); config keys are the constructor arguments."""

    arch = "refscale"
    needs_reference = True
    stochastic = True
    #: config keys that change no tensor: weights trained with other values load as a training
    #: start (``model.init_weights``), e.g. the shipped map's 16 levels into a pooled 8-level one
    config_without_weights = ("smap_pool", "smap_levels", "blur_sigma", "lambda_hr", "lambda_lr", "lambda_distr")

    def __init__(self, scale: int = 2, blocks: list[int] | None = None, nf: int = 64, n_rrdb: int = 2,
                 gc: int = 32, ref_gc: int = 32, clamp: float = 1.0, cond_stride: int = 2,
                 condition: str = "similarity", quantize: bool = True, smap_res: float = 0.5,
                 smap_levels: int = 16, blur_sigma: float = 1.5, lambda_hr: float = 1.0,
                 lambda_lr: float | None = None, lambda_distr: float = 1.0, inn_block: str = "glow",
                 smap_pool: int = 1, **removed):
        levels = levels_for_scale(int(scale))
        blocks = [8] + [3] * (levels - 1) if blocks is None else [int(b) for b in blocks]
        if len(blocks) != levels:
            raise ModelError(f"RefScale x{scale} needs {levels} entries in blocks, got {blocks}")
        if condition not in CONDITIONS:
            raise ModelError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        smap_down = int(round(-math.log2(smap_res))) if smap_res > 0 else -1
        if smap_down < 0 or 2.0**-smap_down != float(smap_res):
            raise ModelError(f"smap_res must be 1, 1/2, 1/4, ..., got {smap_res}")
        if inn_block not in INN_BLOCKS:
            raise ModelError(f"inn_block must be one of {INN_BLOCKS}, got {inn_block!r}")
        for key, value in removed.items():
            if key not in _REMOVED_SWITCHES:
                raise TypeError(f"RefScaleNet got an unexpected keyword argument {key!r}")
            if value != _REMOVED_SWITCHES[key]:
                raise ModelError(f"the RefScale switch {key}={value!r} was removed (it measured no gain); "
                                 f"only weights with {key}={_REMOVED_SWITCHES[key]!r} still load")
        if not 2 <= int(smap_levels) <= 256:
            raise ModelError(f"smap_levels must be in 2..256, got {smap_levels}")
        if int(smap_pool) < 1 or int(smap_pool) & (int(smap_pool) - 1):
            raise ModelError(f"smap_pool must be 1, 2, 4, ..., got {smap_pool}")
        lambda_lr = float(scale) ** 2 if lambda_lr is None else float(lambda_lr)
        super().__init__(scale, blocks=blocks, nf=nf, n_rrdb=n_rrdb, gc=gc, ref_gc=ref_gc, clamp=clamp,
                         cond_stride=cond_stride, condition=condition, quantize=bool(quantize),
                         smap_res=float(smap_res), smap_levels=int(smap_levels), blur_sigma=float(blur_sigma),
                         lambda_hr=float(lambda_hr), lambda_lr=lambda_lr, lambda_distr=float(lambda_distr),
                         inn_block=inn_block, smap_pool=int(smap_pool))
        self.condition_kind = condition
        self.smap_pool = int(smap_pool)
        self.needs_reference = condition != "none"
        self.quantize = bool(quantize)
        self.levels_q = int(smap_levels) if quantize else UNQUANTIZED_LEVELS
        self.smap_down = smap_down
        self.cond_stride = int(cond_stride)
        self.blur_sigma = float(blur_sigma)
        self.lambda_hr, self.lambda_lr, self.lambda_distr = float(lambda_hr), lambda_lr, float(lambda_distr)
        self.guide_strength = 1.0  # training only: the eq. 5 blur ramp (configure_training)

        bottleneck = smap_down if condition == "similarity" else 0
        self.refnet = (RefNet(nf, n_rrdb, ref_gc, self.cond_stride, bottleneck)
                       if condition != "none" else None)
        cond_channels = nf if condition != "none" else 0
        subnet = dense_subnet(gc)
        self.levels = nn.ModuleList()
        channels = 3
        for n in blocks:
            channels *= 4
            mods = [HaarSqueeze()]
            for _ in range(n):
                if inn_block == "irn":  # IRN's two-sided block, every subnet also sees F_c (no ActNorm/1x1)
                    mods.append(AffineCoupling(channels, 3, subnet, clamp, cond_channels))
                    continue
                norm, conv = ActNorm(channels), InvConv1x1(channels, init="random")
                mods += [norm, conv,
                         ConditionalAffineCoupling(channels, cond_channels, subnet=subnet, clamp=clamp)]
            self.levels.append(FlowSequence(mods))

    # ------------------------------------------------------------------ training set-up
    def configure_training(self, step: int, guide_ramp_steps: int = 0, **latent_options) -> None:
        """Training-only options for ``step`` (the engine calls this before every step); the
        latent temperature and LR range options: :class:`refscale.nn.invertible.LatentTraining`."""
        self.set_latent_training(**latent_options)
        ramp = int(guide_ramp_steps)
        self.guide_strength = 1.0 if ramp <= 0 else min(1.0, step / ramp)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``refnet`` (Ref-Net), ``cond`` (the INN's condition weights) and ``flow`` (the rest)."""
        groups: dict[str, list[nn.Parameter]] = {"refnet": [], "cond": [], "flow": []}
        for name, p in self.named_parameters():
            key = "refnet" if name.startswith("refnet.") else "cond" if ".cond_in." in name else "flow"
            groups[key].append(p)
        return {k: v for k, v in groups.items() if v}

    @torch.no_grad()
    def warm_start(self, source: Rescaler) -> None:
        """Start the INN from a trained IRN of the same scale (``inn_block='irn'``, the same
        ``blocks``, ``gc`` and ``clamp``): every Haar squeeze and coupling takes the IRN's weights,
        the condition weights stay zero, Ref-Net keeps its initialisation. Until the condition
        weights learn, downscale/upscale equal the IRN's (a test checks it)."""
        from refscale.models.irn import IRN

        mine = [m for level in self.levels for m in level.blocks]
        if not isinstance(source, IRN) or self.config["inn_block"] != "irn":
            raise ModelError(f"{self.name} (inn_block={self.config['inn_block']}) can only warm-start from an IRN "
                             f"with inn_block='irn', got {getattr(source, 'name', type(source).__name__)}")
        theirs = list(source.flow.blocks)
        want = {k: source.config[k] for k in ("scale", "blocks", "gc", "clamp")}
        have = {k: self.config[k] for k in ("scale", "blocks", "gc", "clamp")}
        if want != have or len(mine) != len(theirs):
            raise ModelError(f"cannot warm-start {self.name} {have} from {source.name} {want}: scale, blocks, gc and clamp must match")
        for a, b in zip(mine, theirs):
            if type(a) is not type(b):
                raise ModelError(f"cannot warm-start: block {type(a).__name__} vs {type(b).__name__}")
            missing, unexpected = a.load_state_dict(b.state_dict(), strict=False)
            if unexpected or any(".cond_in." not in f".{k}" for k in missing):
                raise ModelError(f"cannot warm-start {self.name} from {source.name}: missing {missing}, unexpected {unexpected}")

    # ------------------------------------------------------------------ sizes
    @property
    def alignment(self) -> int:
        """HR sides must be multiples of the scale, the feature stride and the similarity-map stride."""
        a = self.scale
        if self.condition_kind != "none":
            a = math.lcm(a, self.cond_stride)
        if self.condition_kind == "similarity":
            a = math.lcm(a, self.smap_stride)
        return a

    @property
    def smap_stride(self) -> int:
        """HR pixels per similarity-map value."""
        return self.cond_stride * 2**self.smap_down * self.smap_pool

    def smap_size(self, hr_size: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the transmitted similarity map for an HR image of ``hr_size``."""
        return hr_size[0] // self.smap_stride, hr_size[1] // self.smap_stride

    def side_spec(self) -> dict[str, SideSpec]:
        """The quantized similarity map ``smap`` (one channel at the map's stride), with the
        similarity condition only."""
        if self.condition_kind != "similarity":
            return {}
        dtype = "uint8" if self.levels_q <= 256 else "int16"  # as quantize_smap gives it
        return {"smap": SideSpec(1, self.smap_stride, dtype)}

    # ------------------------------------------------------------------ similarity map
    def quantize_smap(self, s: torch.Tensor, training: bool) -> torch.Tensor:
        """``S`` in [0,1] -> levels ``S * (L-1)``: noisy floats in training, integers otherwise (Sec. 3.3)."""
        q = s * (self.levels_q - 1)
        if training:
            return q + (torch.rand_like(q) - 0.5) if self.quantize else q
        q = torch.round(q)
        return q.to(torch.uint8 if self.levels_q <= 256 else torch.int16)

    def dequantize_smap(self, q: torch.Tensor) -> torch.Tensor:
        return q.float() / (self.levels_q - 1)

    def condition(self, f_ref: torch.Tensor, smap: torch.Tensor | None) -> torch.Tensor | None:
        """``F_c`` (eq. 4) from reference features and the (integer or noisy) similarity-map levels.

        The one function that builds the condition, used by the encoder and the decoder alike.
        """
        if self.condition_kind == "none":
            return None
        if self.condition_kind == "reference":
            return f_ref
        s = self.dequantize_smap(smap)
        return f_ref * resize(s, f_ref.shape[-2:]).to(f_ref.dtype)

    def _level_conditions(self, fc: torch.Tensor | None, hr_size: tuple[int, int]) -> list[torch.Tensor | None]:
        out = []
        for i in range(len(self.levels)):
            f = 2 ** (i + 1)
            out.append(None if fc is None else resize(fc, (hr_size[0] // f, hr_size[1] // f)))
        return out

    def encoder_side(self, hr: torch.Tensor, ref: torch.Tensor | None, training: bool):
        """Ref-Net at the sender: ``(F_c, q)``, the condition of :meth:`flow_forward` and
        :meth:`flow_inverse` and the quantised similarity map's levels (the side tensor ``smap``;
        None without one). ``training``: the quantiser of training (:meth:`quantize_smap`).
        ``(None, None)`` for an unconditioned model."""
        if self.condition_kind == "none":
            return None, None
        self._check_ref(hr, ref)
        f_ref = self.refnet.encode(ref)
        if self.condition_kind == "reference":
            return self.condition(f_ref, None), None
        f_hr = self.refnet.encode(hr)
        s = self.refnet.similarity(f_hr, f_ref)
        s = F.avg_pool2d(s, self.smap_pool) if self.smap_pool > 1 else s
        q = self.quantize_smap(s, training)
        return self.condition(f_ref, q), q

    def _decoder_condition(self, ref: torch.Tensor | None, side, hr_size: tuple[int, int], n: int):
        """Ref-Net at the receiver: ``F_c`` from the reference and the transmitted map only."""
        if self.condition_kind == "none":
            return None
        self._check_ref(None, ref, hr_size)
        smap = None
        if self.condition_kind == "similarity":
            smap = (side or {}).get("smap")
            expected = (n, 1, *self.smap_size(hr_size))
            if smap is None:
                raise ModelError(f"model {self.name} needs the similarity map 'smap' as side information")
            if tuple(smap.shape) != expected:
                raise ModelError(f"similarity map has shape {tuple(smap.shape)}, expected {expected}")
            if smap.is_floating_point() or int(smap.min()) < 0 or int(smap.max()) >= self.levels_q:
                raise ModelError(f"similarity map must hold integers in 0..{self.levels_q - 1}")
        return self.receiver_condition(ref, smap)

    def receiver_condition(self, ref: torch.Tensor | None, smap: torch.Tensor | None) -> torch.Tensor | None:
        """``F_c`` from the reference and the map levels, without the checks of
        ``_decoder_condition`` (which are data-dependent; the exported decoder's form)."""
        if self.condition_kind == "none":
            return None
        return self.condition(self.refnet.encode(ref), smap)

    def _check_ref(self, hr, ref, hr_size=None):
        self.check_reference(ref)
        size = tuple(hr.shape[-2:]) if hr is not None else tuple(hr_size)
        if ref.dim() != 4 or ref.shape[1] != 3 or tuple(ref.shape[-2:]) != size:
            raise InputError(f"reference must be [N,3,{size[0]},{size[1]}] like the HR image, got {tuple(ref.shape)}")

    # ------------------------------------------------------------------ INN
    def flow_forward(self, hr: torch.Tensor, fc: torch.Tensor | None) -> torch.Tensor:
        """``[LR, z] = f(HR | F_c)`` (eq. 8)."""
        x = hr
        for level, cond in zip(self.levels, self._level_conditions(fc, hr.shape[-2:])):
            x, _ = level(x, cond)
        return x

    def flow_inverse(self, y: torch.Tensor, fc: torch.Tensor | None) -> torch.Tensor:
        """``HR = f^-1([LR, z] | F_c)`` (eq. 9)."""
        hr_size = (y.shape[-2] * self.scale, y.shape[-1] * self.scale)
        conds = self._level_conditions(fc, hr_size)
        for level, cond in zip(reversed(self.levels), reversed(conds)):
            y = level.inverse(y, cond)
        return y

    # ------------------------------------------------------------------ protocol
    def downscale(self, hr, ref=None):
        with self.speed_context(hr):
            hr_in = self.speed_input(hr)
            fc, q = self.encoder_side(hr_in, None if ref is None else self.speed_input(ref), training=False)
            y = self.flow_forward(hr_in, fc)
        side = {} if q is None else {"smap": q}
        return y[:, :3].float().clamp(0, 1).contiguous(), side

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        n, _, h, w = lr.shape
        hr_size = (h * self.scale, w * self.scale)
        z = sample_latent((n, 3 * self.scale**2 - 3, h, w), lr, temperature, generator)
        with self.speed_context(lr):
            fc = self._decoder_condition(None if ref is None else self.speed_input(ref), side, hr_size, n)
            hr = self.flow_inverse(self.speed_input(torch.cat([lr.float(), z], 1)), fc)
        return hr.float().clamp(0, 1).contiguous()

    # ------------------------------------------------------------------ ONNX export
    def export_graphs(self) -> ExportGraphs:
        """Encoder: ``downscale``; decoder: ``upscale`` with the latent as the input ``z`` and the
        condition from :meth:`receiver_condition`; fp32, the 1x1 convolutions precomputed
        (:func:`refscale.nn.invertible.fix_conv1x1`, which changes this model: the export calls
        this on its copy). The branches on shapes in the resizing depend
        only on size ratios, the same for every aligned tile, so one trace fits all sizes."""
        self.set_speed()
        fix_conv1x1(self)
        return ExportGraphs(self.downscale, self._export_up, z_channels=3 * self.scale**2 - 3,
                            side_levels={"smap": self.levels_q})

    def _export_up(self, lr, side, ref, z):
        y = torch.cat([lr, z], 1)
        return self.flow_inverse(y, self.receiver_condition(ref, side.get("smap"))).clamp(0, 1)

    @torch.no_grad()
    def forward_latent(self, hr, ref=None):
        fc, q = self.encoder_side(hr, ref, training=False)
        y = self.flow_forward(hr, fc)
        return y[:, :3], y[:, 3:], ({} if q is None else {"smap": q})

    @torch.no_grad()
    def inverse_latent(self, lr, z, side=None, ref=None):
        fc = self._decoder_condition(ref, side, (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale), lr.shape[0])
        return self.flow_inverse(torch.cat([lr, z], 1), fc)

    def training_losses(self, hr, ref=None):
        fc, q = self.encoder_side(hr, ref, training=True)
        y = self.flow_forward(hr, fc)
        lr, z = y[:, :3], y[:, 3:]
        with exact(hr):  # the guides in full precision even under autocast
            bic = ops.bicubic_down(hr.float(), self.scale).detach()
            blur = ops.gaussian_blur(bic, self.blur_sigma) if q is not None else None
        if q is None:  # no similarity map: the bicubic guide everywhere (S = 0 in eq. 5)
            lr_guide = sum_l2(bic - lr)
        else:
            s = resize(self.dequantize_smap(q), lr.shape[-2:]) * self.guide_strength
            lr_guide = sum_l2((bic - lr) * (1 - s)) + sum_l2((blur - lr) * s)  # eq. 5
        z_l2 = sum_l2(z)  # eq. 13
        z_sample = self.training_latent(z)
        lr_in, foreign = self.training_lr(lr, bic)
        hr_hat = self.flow_inverse(torch.cat([lr_in, z_sample], 1), fc)
        hr_rec = sum_charbonnier(self.outside_foreign(hr_hat - hr, foreign))  # eq. 12 (outside foreign LR boxes)
        terms = {"hr_rec": self.lambda_hr * hr_rec, "lr_guide": self.lambda_lr * lr_guide,
                 "z_l2": self.lambda_distr * z_l2}
        if self.lr_range_weight:
            terms["lr_range"] = self.lr_range_loss(lr)
        return {"total": sum(terms.values()), **terms}

