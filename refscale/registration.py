"""Registering the reference to the new image (issue 14, item 3): translation only.

:func:`estimate_shift` finds the sub-pixel translation that moves the reference onto the new
image: phase correlation (``skimage.registration.phase_cross_correlation``, phase-normalised,
upsampled by 20 for
sub-pixel refinement) of the two lumas at full resolution, on their central :data:`MAX_SIDE` x
:data:`MAX_SIDE` window for larger images (shifts up to half the window; a 6264 x 3456 scene
costs well under a second). The shift is
rounded to :data:`SHIFT_UNIT` pixels, recorded in the container as integers and applied by
:func:`apply_shift` identically at both ends (the decoder never estimates anything), so encoder
and decoder see the same warped reference. The warp is a cubic spline (``scipy.ndimage.shift``,
order 3) in float64 with reflected borders: the strip the shift uncovers is filled with the
mirrored image rather than a constant, so Ref-Net does not see an artificial edge there (our
choice; the similarity map is free to fall there). Rotation is not estimated. On a rotated (or
unrelated) reference phase correlation still returns a peak, a spurious shift (up to 278 px for
5-10 degree rotations of the OSCD test references: benchmarks/misalignment.py, docs/results.md);
a shift is therefore kept only when it makes the two images' detail agree better
(:func:`_improves`), otherwise none is recorded.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

#: side of the central window of larger images that is correlated
MAX_SIDE = 1024
#: the recorded shift's unit, in pixels (the container stores integers)
SHIFT_UNIT = 0.01
#: shifts with both components below this (pixels) are treated as none (no warp): the estimate
#: of a registered pair scatters by up to 0.2 px (the 24 OSCD pairs: docs/results.md)
MIN_SHIFT = 0.25
#: a shift is accepted only if the detail-band correlation it gives reaches this (:func:`_improves`)
MIN_AGREEMENT = 0.2


def _luma(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().clamp(0, 1)[0]
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).numpy()


def _centre(x: torch.Tensor, side: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    t, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return x[..., t:t + side, left:left + side]


def estimate_shift(new: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(dy, dx)`` in pixels of the new image such that ``apply_shift(ref, (dy, dx))`` lies on
    ``new`` (both ``[1,3,H,W]``, the same size), rounded to :data:`SHIFT_UNIT`."""
    from skimage.registration import phase_cross_correlation

    a, b = _luma(_centre(new, MAX_SIDE)), _luma(_centre(ref, MAX_SIDE))
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=20, normalization="phase")
    dy, dx = (round(float(s) / SHIFT_UNIT) * SHIFT_UNIT for s in shift)
    if not is_none((dy, dx)) and not _improves(a, b, (dy, dx)):  # rotation, another place, heavy change
        warnings.warn(f"registration: the best shift ({dy:.2f}, {dx:.2f}) px does not line the reference up with the "
                      "image (rotated, much changed or another place?); no shift applied")
        return 0.0, 0.0
    return dy, dx


def _band(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    d = gaussian_filter(x, 1.0, mode="mirror") - gaussian_filter(x, 4.0, mode="mirror")
    return d - d.mean()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def _improves(new: np.ndarray, ref: np.ndarray, shift: tuple[float, float]) -> bool:
    """True when moving ``ref`` by ``shift`` raises the correlation of the two lumas' detail band
    (a difference of Gaussians, 1-4 px) and brings it to at least :data:`MIN_AGREEMENT`. Phase
    correlation always returns *some* peak; on a rotated reference it is spurious (shifts of up
    to 278 px for 5-10 degree rotations of the OSCD test references). :data:`MIN_AGREEMENT` is the
    plausibility check's threshold (``pipeline.MIN_REFERENCE_AGREEMENT``, calibrated on the train
    cities); checked afterwards on the test cities: a true shift of 0.6-2 px reaches 0.54-0.92, a
    reference rotated by 2-10 degrees at most 0.14 whatever shift is tried (docs/results.md)."""
    from scipy.ndimage import shift as nd_shift

    a = _band(new)
    before = _correlation(a, _band(ref))
    after = _correlation(a, _band(nd_shift(ref, shift, order=1, mode="mirror")))
    return after > before and after >= MIN_AGREEMENT


def to_units(shift: tuple[float, float]) -> tuple[int, int]:
    """The shift as the integers the container stores (multiples of :data:`SHIFT_UNIT`)."""
    return tuple(int(round(s / SHIFT_UNIT)) for s in shift)


def from_units(units: tuple[int, int]) -> tuple[float, float]:
    return tuple(u * SHIFT_UNIT for u in units)


def is_none(shift: tuple[float, float]) -> bool:
    return abs(shift[0]) < MIN_SHIFT and abs(shift[1]) < MIN_SHIFT


def apply_shift(ref: torch.Tensor, shift: tuple[float, float]) -> torch.Tensor:
    """The reference ``[1,3,H,W]`` moved by ``shift`` pixels, rounded to 8 bits as every image
    refscale reads; unchanged for a zero shift (the encoder records shifts that :func:`is_none` as
    zero; the decoder applies whatever was recorded). The warp is normative for the ``.rsc``
    format: ``scipy.ndimage.shift(channel, shift, order=3, mode="mirror")`` on each channel in
    float32 (cubic B-spline with its prefilter), clipped to [0, 1] and rounded to 1/255."""
    if shift[0] == 0 and shift[1] == 0:
        return ref
    from scipy.ndimage import shift as nd_shift

    a = ref.detach().float().clamp(0, 1)[0].numpy()
    out = np.empty_like(a)
    for c in range(a.shape[0]):  # one channel at a time: a bounded memory peak on large scenes
        nd_shift(a[c], shift, output=out[c], order=3, mode="mirror")
    np.clip(out, 0, 1, out=out)
    return torch.from_numpy(np.round(out * 255) / 255)[None]
