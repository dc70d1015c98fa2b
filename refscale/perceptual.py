"""LPIPS and DISTS in plain torch (no torchvision), with weights read from local files.

* :class:`LPIPS` (Zhang et al. 2018, v0.1 of ``richzhang/PerceptualSimilarity``): inputs in
  [0,1] -> ``2x - 1`` -> the LPIPS scaling layer (shift ``[-.030, -.088, -.188]``, scale
  ``[.458, .448, .450]``) -> VGG16 (relu1_2 .. relu5_3) or AlexNet (relu1 .. relu5) features,
  each unit-normalised over channels (eps 1e-10); squared differences weighted per channel by the
  learned linear heads (1x1 convs, no bias), averaged over space and summed over layers.
* :class:`DISTS` (Ding et al. 2020, ``dingkeyan93/DISTS``): inputs in [0,1], ImageNet mean/std,
  VGG16 with its max-pools replaced by L2 pooling (3x3 Hann window ``[.5, 1, .5]``, normalised,
  stride 2, padding 1); the image itself and the five stage outputs; per channel a texture term
  (means, c1 = 1e-6) and a structure term (variances and covariance, c2 = 1e-6) weighted by the
  learned ``alpha`` and ``beta`` (normalised by their total); ``1 - sum``.

Both return one value per image (``[N]``), are differentiable w.r.t. the images (usable as
losses), and keep their own weights frozen.

**Weights** cannot be downloaded here; give files (arguments) or a folder
(``weights_dir=`` or ``$REFSCALE_PERCEPTUAL_DIR``) holding them under these names:

====================  ==========================================================================
backbone / heads      accepted file names (first found wins)
====================  ==========================================================================
VGG16 (ImageNet)      ``vgg16.safetensors``, ``vgg16-397923af.pth`` (torchvision), ``vgg16.pth``
AlexNet (ImageNet)    ``alexnet.safetensors``, ``alexnet-owt-7be5be79.pth`` (torchvision), ``alexnet.pth``
LPIPS heads (VGG)     ``lpips_vgg.safetensors``, ``lpips_vgg.pth`` (= ``lpips/weights/v0.1/vgg.pth``)
LPIPS heads (Alex)    ``lpips_alex.safetensors``, ``lpips_alex.pth`` (= ``lpips/weights/v0.1/alex.pth``)
DISTS alpha/beta      ``dists.safetensors``, ``dists.pt`` (= ``DISTS_pytorch/weights.pt``)
====================  ==========================================================================

Backbones are read as torchvision state dicts (``features.<i>.weight/bias``; other keys are
ignored); ``.pth``/``.pt`` files with ``torch.load(weights_only=True)``. Heads: the LPIPS
``lin<k>.model.1.weight`` tensors, DISTS ``alpha`` and ``beta``.

Licences (checked in the upstream repositories): the LPIPS heads come with the BSD-2-Clause
licence of ``richzhang/PerceptualSimilarity`` (redistributable with its copyright notice); the
DISTS package declares MIT in its ``setup.py`` but the repository carries no licence file. None
of these files is shipped with refscale: none is available on this machine to verify, and both
sets of heads are useless without the ImageNet backbones, which users obtain themselves.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refscale.errors import ModelError

PERCEPTUAL_DIR_ENV = "REFSCALE_PERCEPTUAL_DIR"

FILE_NAMES: dict[str, tuple[str, ...]] = {
    "vgg16": ("vgg16.safetensors", "vgg16-397923af.pth", "vgg16.pth"),
    "alexnet": ("alexnet.safetensors", "alexnet-owt-7be5be79.pth", "alexnet.pth"),
    "lpips_vgg": ("lpips_vgg.safetensors", "lpips_vgg.pth"),
    "lpips_alex": ("lpips_alex.safetensors", "lpips_alex.pth"),
    "dists": ("dists.safetensors", "dists.pt"),
}
_WHAT = {
    "vgg16": "VGG16 ImageNet weights (torchvision's vgg16-397923af.pth)",
    "alexnet": "AlexNet ImageNet weights (torchvision's alexnet-owt-7be5be79.pth)",
    "lpips_vgg": "LPIPS v0.1 VGG heads (lpips/weights/v0.1/vgg.pth, saved as lpips_vgg.pth)",
    "lpips_alex": "LPIPS v0.1 AlexNet heads (lpips/weights/v0.1/alex.pth, saved as lpips_alex.pth)",
    "dists": "DISTS alpha/beta (DISTS_pytorch/weights.pt, saved as dists.pt)",
}

#: VGG16 ``features`` layout of torchvision: conv channel counts, "M" = pool (index order preserved)
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
#: feature taps: index (in ``features``) of the ReLU after which each layer's output is taken
_VGG_TAPS = (3, 8, 15, 22, 29)
_ALEX_TAPS = (1, 4, 7, 9, 11)
_LPIPS_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
_DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)


# ============================================================================= weights files
def find_weights(kind: str, path: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None) -> Path:
    """The file for ``kind`` (a key of :data:`FILE_NAMES`): ``path`` if given, else the first known
    name in ``weights_dir`` / ``$REFSCALE_PERCEPTUAL_DIR``; a clear :class:`ModelError` otherwise."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelError(f"{_WHAT[kind]} not found: {p}")
        return p
    folder = weights_dir if weights_dir is not None else os.environ.get(PERCEPTUAL_DIR_ENV)
    if folder:
        for name in FILE_NAMES[kind]:
            p = Path(folder).expanduser() / name
            if p.is_file():
                return p
    where = f"in {folder}" if folder else f"(no folder given: set {PERCEPTUAL_DIR_ENV} or weights_dir=)"
    raise ModelError(f"{_WHAT[kind]} not found {where}; they cannot be downloaded here: put one of "
                     f"{', '.join(FILE_NAMES[kind])} there")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a plain ``.pth``/``.pt`` state dict (``weights_only``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file becomes one clear message
        raise ModelError(f"cannot read weights {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    return state


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    if missing:
        raise ModelError(f"{path} lacks {len(missing)} tensors this network needs (e.g. {missing[0]})")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ModelError(f"{path}: tensor {k} has shape {list(tensors[k].shape)}, expected {list(v.shape)}")
    module.load_state_dict({k: tensors[k].float() for k in own}, strict=True)


def _backbone_tensors(path: Path) -> dict[str, torch.Tensor]:
    """torchvision ``features.<i>.*`` tensors, keyed ``<i>.*`` (a bare ``<i>.*`` layout is accepted too)."""
    state = read_state_dict(path)
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return feats or state


# ============================================================================= backbones
class L2Pool(nn.Module):
    """DISTS's L2 pooling: ``sqrt(hann3x3 * x^2 + 1e-12)``, stride 2, padding 1, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])
        g = a[:, None] * a[None, :]
        self.register_buffer("filter", (g / g.sum())[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.conv2d(x * x, self.filter.to(x.dtype), stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


def vgg16_features(pool: str = "max") -> nn.Sequential:
    """torchvision's ``vgg16().features[:30]`` (indices kept, so its state dict keys fit);
    ``pool="l2"`` puts :class:`L2Pool` where the max-pools are (DISTS)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2) if pool == "max" else L2Pool(cin))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features[:12]`` (indices kept)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


def _taps(features: nn.Sequential, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    out = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            out.append(x)
            if i == taps[-1]:
                break
    return out


class _Frozen(nn.Module):
    """Weights never train; eval mode always."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)


# ============================================================================= LPIPS
class LPIPS(_Frozen):
    """LPIPS v0.1 distance, ``forward(a, b) -> [N]`` for images in [0,1] (``net`` = ``"vgg"`` or ``"alex"``)."""

    def __init__(self, net: str = "alex", backbone: str | os.PathLike | None = None, heads: str | os.PathLike | None = None,
                 weights_dir: str | os.PathLike | None = None):
        super().__init__()
        if net not in _LPIPS_CHANNELS:
            raise ModelError(f"LPIPS net must be 'vgg' or 'alex', got {net!r}")
        self.net = net
        self.features = vgg16_features() if net == "vgg" else alexnet_features()
        self.taps = _VGG_TAPS if net == "vgg" else _ALEX_TAPS
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS[net])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        bpath = find_weights("vgg16" if net == "vgg" else "alexnet", backbone, weights_dir)
        hpath = find_weights(f"lpips_{net}", heads, weights_dir)
        _load_into(self.features, _backbone_tensors(bpath), bpath)
        h = read_state_dict(hpath)
        h = {f"{k}.weight": h.get(f"lin{k}.model.1.weight", h.get(f"lin{k}.weight")) for k in range(len(self.lins))}
        _load_into(self.lins, {k: v for k, v in h.items() if v is not None}, hpath)
        self._freeze()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        x = (torch.cat([a, b]).float() * 2 - 1 - self.shift) / self.scale
        total = x.new_zeros(n)
        for feat, lin in zip(_taps(self.features, x, self.taps), self.lins):
            feat = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((feat[:n] - feat[n:]) ** 2).mean(dim=(1, 2, 3))
        return total


# ============================================================================= DISTS
class DISTS(_Frozen):
    """DISTS distance, ``forward(a, b) -> [N]`` for images in [0,1]."""

    def __init__(self, backbone: str | os.PathLike | None = None, heads: str | os.PathLike | None = None,
                 weights_dir: str | os.PathLike | None = None):
        super().__init__()
        self.features = vgg16_features(pool="l2")
        c = sum(_DISTS_CHANNELS)
        self.alpha = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        bpath = find_weights("vgg16", backbone, weights_dir)
        hpath = find_weights("dists", heads, weights_dir)
        _load_into(self.features, _backbone_tensors(bpath), bpath)
        h = read_state_dict(hpath)
        for name, param in (("alpha", self.alpha), ("beta", self.beta)):
            t = h.get(name)
            if t is None or t.numel() != c:
                raise ModelError(f"{hpath} holds no DISTS {name} of {c} values")
            with torch.no_grad():
                param.copy_(t.reshape(1, c, 1, 1).float())
        self._freeze()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        x = torch.cat([a, b]).float()
        feats = [x] + _taps(self.features, (x - self.mean) / self.std, _VGG_TAPS)
        w = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w, _DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / w, _DISTS_CHANNELS, dim=1)
        c1 = c2 = 1e-6
        score = x.new_zeros(n)
        for f, al, be in zip(feats, alphas, betas):
            fa, fb = f[:n], f[n:]
            ma, mb = fa.mean(dim=(2, 3), keepdim=True), fb.mean(dim=(2, 3), keepdim=True)
            s1 = (2 * ma * mb + c1) / (ma * ma + mb * mb + c1)
            va = ((fa - ma) ** 2).mean(dim=(2, 3), keepdim=True)
            vb = ((fb - mb) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (fa * fb).mean(dim=(2, 3), keepdim=True) - ma * mb
            s2 = (2 * cov + c2) / (va + vb + c2)
            score = score + (al * s1).sum(dim=(1, 2, 3)) + (be * s2).sum(dim=(1, 2, 3))
        return 1 - score
