"""Image quality metrics with the field's (BasicSR / IRN) conventions.

Inputs are float RGB tensors ``[N,3,H,W]`` in [0,1]; every metric returns one value per
image (``Tensor[N]``, float64).

* :func:`psnr`, :func:`ssim` — BasicSR's ``calculate_psnr`` / ``calculate_ssim``: both images
  rounded to 8 bits, ``crop_border`` pixels removed on every side, then either the Y channel
  (BT.601, MATLAB ``rgb2ycbcr``, in 0-255 units, not rounded) or the three RGB channels, as
  float64 in 0-255. SSIM uses an 11x11 Gaussian window (sigma 1.5) over the *valid* region
  only (no padding), C1 = (0.01*255)^2, C2 = (0.03*255)^2; RGB SSIM is the mean over channels.
  (BasicSR keeps Y in float32; we stay in float64 — differences are below 1e-4 dB.)
* :func:`spatial_information` — SI of RefScale eq. (15): the Sobel magnitude
  ``sqrt(s_h^2 + s_v^2)`` of the Y channel in [0,1] (MATLAB ``rgb2ycbcr`` scale), unnormalised
  3x3 Sobel kernels, valid region only (the 1-pixel border is excluded), averaged over pixels
  ("mean", the default, which gives RefScale Table 1's 0.17-0.57 range) or its standard
  deviation ("std", the ITU-T P.910 form).
* :func:`fraction_off` — the colour check PSNR hides: the fraction of pixels (8-bit, border
  cropped as for PSNR) where any RGB channel is off by more than ``levels`` (default 40) levels;
  ``refscale.evaluate`` reports it per image as ``frac_off40``.
* :func:`bits_per_pixel` — real encoded bytes * 8 / (H * W) of the original image.
* :func:`reference_agreement` — how well a transmitted LR image agrees with a reference brought
  to LR size: the correlation of their band-passed luma (the decoder's plausibility check).
* :func:`grey_luma` — greyscale image files (Set14's bridge): the benchmark
  tables (MATLAB scripts) apply ``rgb2ycbcr`` only to 3-channel files, so a greyscale image's
  "Y" is its grey value in 0-255, not ``16 + 219/255 v`` (which would add
  20 log10(255/219) = 1.32 dB to its PSNR). ``refscale.evaluate`` computes the Y metrics of an
  HR stored as greyscale on :func:`grey_luma` of both images to follow that convention.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from refscale.format.rounding import to_uint8
from refscale.ops import gaussian_kernel1d, rgb_to_ycbcr


def _prepare(x: torch.Tensor, crop_border: int, y_channel: bool) -> torch.Tensor:
    """8-bit round, crop the border, optionally Y; float64 in 0-255."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    v = to_uint8(x).to(torch.float64)
    if crop_border:
        v = v[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel and v.shape[1] == 3:
        v = rgb_to_ycbcr(v / 255.0, y_only=True) * 255.0
    return v


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, crop_border: int = 0, y_channel: bool = True) -> torch.Tensor:
    """PSNR in dB per image (``inf`` for identical images), BasicSR ``calculate_psnr``."""
    _check_pair(a, b)
    x, y = _prepare(a, crop_border, y_channel), _prepare(b, crop_border, y_channel)
    mse = ((x - y) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)  # mse == 0 -> inf


def fraction_off(a: torch.Tensor, b: torch.Tensor, crop_border: int = 0, levels: int = 40) -> torch.Tensor:
    """Fraction of pixels per image (``Tensor[N]``, float64, 0-1) where any channel of the 8-bit
    images differs by more than ``levels``, ``crop_border`` pixels on every side left out."""
    _check_pair(a, b)
    x, y = _prepare(a, crop_border, False), _prepare(b, crop_border, False)
    return ((x - y).abs() > levels).any(dim=1).flatten(1).to(torch.float64).mean(dim=1)


def psnr_y_masked(a: torch.Tensor, b: torch.Tensor, mask, crop_border: int = 0) -> float:
    """PSNR-Y in dB (as :func:`psnr`) of one image pair ``[1,3,H,W]`` over the pixels where ``mask``
    ``[H, W]`` (bool tensor or array) is true, ``crop_border`` pixels on every side left out; a
    float (not ``Tensor[N]``), ``nan`` when no pixel is left."""
    _check_pair(a, b)
    if a.shape[0] != 1:
        raise ValueError(f"psnr_y_masked scores one image pair, got a batch of {a.shape[0]}")
    x, y = _prepare(a, crop_border, True), _prepare(b, crop_border, True)
    m = torch.as_tensor(np.asarray(mask, dtype=bool))
    if crop_border:
        m = m[crop_border:-crop_border, crop_border:-crop_border]
    if not bool(m.any()):
        return float("nan")
    mse = float(((x - y)[0, 0][m] ** 2).mean())
    return 10.0 * math.log10(255.0**2 / mse) if mse > 0 else math.inf


def _ssim_map_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the valid region, per image and channel: ``[N,C]``."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = gaussian_kernel1d(1.5, 11, dtype=torch.float64).to(x.device)
    n, c, h, w = x.shape
    if h < 11 or w < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {h}x{w}")

    def filt(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t.reshape(n * c, 1, *t.shape[-2:]), k.view(1, 1, 1, 11))
        return F.conv2d(t, k.view(1, 1, 11, 1))

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return m.flatten(1).mean(dim=1).reshape(n, c)


def ssim(a: torch.Tensor, b: torch.Tensor, crop_border: int = 0, y_channel: bool = True) -> torch.Tensor:
    """SSIM per image, BasicSR ``calculate_ssim`` (11x11 Gaussian, sigma 1.5; RGB: channel mean)."""
    _check_pair(a, b)
    x, y = _prepare(a, crop_border, y_channel), _prepare(b, crop_border, y_channel)
    return _ssim_map_mean(x, y).mean(dim=1)


def grey_luma(x: torch.Tensor) -> torch.Tensor:
    """Full-range BT.601 luma ``(Y - 16/255) * 255/219`` of the 8-bit-rounded image, ``[N,1,H,W]``
    float64 in [0,1]: exactly the grey value when R == G == B. Feed it to :func:`psnr` /
    :func:`ssim` (a 1-channel input is used as Y as is)."""
    v = to_uint8(x).to(torch.float64) / 255.0
    return (rgb_to_ycbcr(v, y_only=True) - 16.0 / 255.0) * (255.0 / 219.0)


_SOBEL_H = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)


def spatial_information(x: torch.Tensor, variant: str = "mean") -> torch.Tensor:
    """SI (RefScale eq. 15) per image: Sobel magnitude of Y in [0,1], border excluded;
    ``variant`` "mean" (default) or "std". A 1-channel input is taken as Y already."""
    if variant not in ("mean", "std"):
        raise ValueError(f"unknown SI variant {variant!r} (mean or std)")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x.detach().to(torch.float64)
    y = rgb_to_ycbcr(x, y_only=True) if x.shape[1] == 3 else x
    kh = _SOBEL_H.to(y.device)
    k = torch.stack([kh, kh.T]).unsqueeze(1)  # [2,1,3,3]: horizontal and vertical gradient
    g = F.conv2d(y, k)
    mag = torch.sqrt((g**2).sum(dim=1)).flatten(1)
    return mag.mean(dim=1) if variant == "mean" else mag.std(dim=1, unbiased=False)


def bits_per_pixel(num_bytes: int, height: int, width: int) -> float:
    """``num_bytes * 8 / (height * width)``: bits per pixel of the original image."""
    return float(num_bytes) * 8.0 / (int(height) * int(width))


def reference_agreement(lr: torch.Tensor, ref: torch.Tensor, scale: int, sigmas: tuple[float, float] = (1.0, 4.0)) -> float:
    """Correlation (-1..1) of the mid-frequency structure of an LR image ``[1,3,h,w]`` and of a
    reference ``[1,3,h*scale,w*scale]`` bicubic-downscaled to the LR size: luma (BT.601) through a
    difference of Gaussians of ``sigmas`` LR pixels, then the Pearson correlation over all pixels.
    The same place seen on another date keeps its roads, fields and buildings, so its structure
    correlates with the LR; another place's does not (about 0). A band rather than the finest
    detail, because a reference-based LR (RefScale eq. 5) is deliberately blurred where the
    reference is similar (finest-detail correlation fell to 0.02 there). ``nan`` for a flat image.
    The decoder runs this on every image, so the bands are filtered in float32 without autograd
    (:func:`refscale.ops.gaussian_blur_array`: 1.2-1.3 s of a 1.26 Mpx decode in float64 torch on an
    AVX2 CPU, 0.05 s so, plus 0.3 s to import SciPy's ndimage once; the correlation agrees to about
    1e-7)."""
    from refscale.ops import bicubic_down, gaussian_blur_array as blur

    def band(x: torch.Tensor) -> torch.Tensor:
        y = rgb_to_ycbcr(x.float().clamp(0, 1), y_only=True)[0, 0].numpy()
        d = torch.from_numpy(blur(y, sigmas[0]) - blur(y, sigmas[1])).double()
        return (d - d.mean()).flatten()

    a, b = band(lr), band(bicubic_down(ref.float(), scale))
    if a.shape != b.shape:
        raise ValueError(f"LR {tuple(lr.shape)} and reference {tuple(ref.shape)} do not match at scale {scale}")
    den = torch.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")
