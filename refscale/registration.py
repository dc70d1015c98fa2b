"""Registering the reference to the new image (issue 14, item 3): translation and a small rotation.

:func:`estimate_shift` finds the sub-pixel translation that moves the reference onto the new
image: phase correlation (``skimage.registration.phase_cross_correlation``, phase-normalised,
upsampled by 20 for
sub-pixel refinement) of the two lumas at full resolution, on their central :data:`MAX_SIDE` x
:data:`MAX_SIDE` window for larger images (shifts up to half the window; a 6264 x 3456 scene
costs well under a second). :func:`estimate_transform` also looks for a rotation about the image
centre (:func:`estimate_rotation`: the rotation of the band-passed lumas' Fourier magnitude, found
by phase correlation of its polar resampling, ``skimage.transform.warp_polar``; the magnitude does
not move with a translation), then the translation of the rotated reference, and keeps whichever
of "translation" and "rotation + translation" lines the detail up better. The shift is rounded to
:data:`SHIFT_UNIT` pixels and the angle to :data:`ROTATION_UNIT` degrees, recorded in the
container as integers and applied by :func:`apply_shift` identically at both ends (the decoder
never estimates anything), so encoder and decoder see the same warped reference. The warp is a
cubic spline (``scipy.ndimage``, order 3); the strip it uncovers is filled by :data:`BORDER`
(mirror reflection: the measured choice, docs/reference.md "Registration", the uncovered border).
On an unrelated reference (or a rotation it cannot find) phase correlation still returns a
peak, a spurious shift (up to 278 px for 5-10 degree rotations of the OSCD test references:
benchmarks/misalignment.py, docs/reference.md); a transform is therefore kept only when it makes
the two images' detail agree better (:func:`_improves`), otherwise none is recorded.
Images under :data:`MIN_SIDE` pixels on a side are not registered at all (nothing is estimated,
a warning says so): there is too little detail to estimate from.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from refscale import ops

#: side of the central window of larger images that is correlated
MAX_SIDE = 1024
#: the recorded shift's unit, in pixels, and the recorded rotation's, in degrees (the container stores integers)
SHIFT_UNIT = 0.01
ROTATION_UNIT = 0.01
#: rotations are looked for up to this size (degrees) and treated as none below MIN_ROTATION
MAX_ROTATION = 15.0
MIN_ROTATION = 0.1
#: images (their shorter side) below this are not registered (no estimate, a warning): on crops of
#: the shipped demo pair moved by 1-3 px, below 32 px the estimate misses by 1-2 px or finds
#: spurious rotations (4.4 degrees at 24 px); at 32-64 px it is within 0.5 px, and under 4 px the
#: rotation estimate has no Fourier magnitude to resample at all
MIN_SIDE = 32
#: angular samples of the polar resampling in estimate_rotation (0.25 degree per row, refined 20x)
POLAR_ANGLES = 1440
#: shifts with both components below this (pixels) are treated as none (no warp): the estimate
#: of a registered pair scatters by up to 0.2 px (the 24 OSCD pairs: docs/reference.md)
MIN_SHIFT = 0.25
#: a shift is accepted only if the detail-band correlation it gives reaches this (:func:`_improves`)
MIN_AGREEMENT = 0.2
#: how the warp fills the strip it uncovers (``scipy.ndimage`` mode; normative, see :func:`apply_shift`)
BORDER = "mirror"
#: the border fills compared (benchmarks/misalignment.py --border-modes; docs/reference.md)
BORDERS = ("mirror", "nearest", "constant")


def _luma(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().clamp(0, 1)[0]
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).numpy()


def _peak(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The phase-correlation shift moving luma ``b`` onto luma ``a``, rounded to :data:`SHIFT_UNIT`."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=20, normalization="phase")
    return tuple(round(float(v) / SHIFT_UNIT) * SHIFT_UNIT for v in shift)


def estimate_shift(new: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(dy, dx)`` in pixels of the new image such that ``apply_shift(ref, (dy, dx))`` lies on
    ``new`` (both ``[1,3,H,W]``, the same size), rounded to :data:`SHIFT_UNIT`; ``(0, 0)`` with a
    warning for an image under :data:`MIN_SIDE` pixels on a side."""
    if _too_small(new):
        return (0.0, 0.0)
    shift, rejected = _guarded_shift(new, ref)
    if rejected is not None:
        _warn_rejected(rejected)
    return shift


def _guarded_shift(new: torch.Tensor, ref: torch.Tensor):
    """``(shift, None)``, or ``((0, 0), peak)`` when the correlation peak does not line the detail up."""
    a, b = _luma(ops.centre_crop(new, MAX_SIDE)), _luma(ops.centre_crop(ref, MAX_SIDE))
    peak = _peak(a, b)
    if not is_none(peak) and not _improves(a, b, peak):  # rotation, another place, heavy change
        return (0.0, 0.0), peak
    return peak, None


def _too_small(new: torch.Tensor) -> bool:
    """True (and a warning) when ``new`` is too small to register (:data:`MIN_SIDE`)."""
    h, w = new.shape[-2:]
    if min(h, w) >= MIN_SIDE:
        return False
    warnings.warn(f"registration: the image is {w}x{h}, under {MIN_SIDE} px on a side, too small to estimate a shift "
                  "or rotation from; the reference is used as given", stacklevel=3)
    return True


def _warn_rejected(peak: tuple[float, float]) -> None:
    warnings.warn(f"registration: the best shift ({peak[0]:.2f}, {peak[1]:.2f}) px does not line the reference up with "
                  "the image (rotated, much changed or another place?); no shift applied", stacklevel=3)


def estimate_rotation(new: np.ndarray, ref: np.ndarray) -> float:
    """The angle (degrees, as :func:`apply_shift` takes it) that turns luma ``ref`` like luma
    ``new`` (two square arrays of one size), up to a translation: the shift along the angle axis
    between the polar resamplings of their Fourier magnitudes (band-passed 1-8 px, Hann window;
    scikit-image's log-polar registration recipe without the scale axis). Within +-90 degrees;
    0 for arrays under :data:`MIN_SIDE` on a side (nothing to resample)."""
    if min(new.shape) < MIN_SIDE:
        return 0.0
    from scipy.fft import fft2, fftshift
    from skimage.filters import difference_of_gaussians, window
    from skimage.registration import phase_cross_correlation
    from skimage.transform import warp_polar

    radius = min(new.shape) // 4  # the lower frequencies, where the two dates agree best
    polar = []
    for x in (new, ref):
        mag = np.abs(fftshift(fft2(difference_of_gaussians(x, 1, 8) * window("hann", x.shape))))
        polar.append(warp_polar(mag, radius=radius, output_shape=(POLAR_ANGLES, radius), order=1)[:POLAR_ANGLES // 2])
    shift, _, _ = phase_cross_correlation(polar[0], polar[1], upsample_factor=20, normalization=None)
    return -float(shift[0]) * 360 / POLAR_ANGLES


def estimate_transform(new: torch.Tensor, ref: torch.Tensor) -> tuple[tuple[float, float], float]:
    """``((dy, dx), angle)`` such that ``apply_shift(ref, (dy, dx), angle)`` lies on ``new``: the
    translation alone (:func:`estimate_shift`) or a rotation of :data:`MIN_ROTATION` to
    :data:`MAX_ROTATION` degrees about the image centre followed by a translation, whichever
    correlates the detail better on the central square window (and passes :func:`_improves`).
    ``((0, 0), 0)`` with a warning for an image under :data:`MIN_SIDE` pixels on a side."""
    if _too_small(new):
        return (0.0, 0.0), 0.0
    shift, rejected = _guarded_shift(new, ref)
    (a, b), origin = (_luma(_square(x)) for x in (new, ref)), _square_origin(new)
    angle = round(estimate_rotation(a, b) / ROTATION_UNIT) * ROTATION_UNIT
    if MIN_ROTATION <= abs(angle) <= MAX_ROTATION:
        turned = _warp(b, (0.0, 0.0), angle, order=1)
        local = _peak(a, turned)
        band = _band(a)
        score = lambda sh, an: _correlation(band, _band(_warp(b, sh, an, order=1, mode="mirror")))  # noqa: E731
        if score(local, angle) > score(shift, 0.0) and _improves(a, b, local, angle):
            # the window turned about its own centre; the same turn about the image centre moves by (I - M)(cw - c)
            cw = np.add(origin, (np.array(a.shape) - 1) / 2) - (np.array(new.shape[-2:]) - 1) / 2
            t = np.add(local, cw - _rotation_matrix(angle) @ cw)
            return tuple(round(float(v) / SHIFT_UNIT) * SHIFT_UNIT for v in t), angle
    if rejected is not None:
        _warn_rejected(rejected)
    return shift, 0.0


def _square(x: torch.Tensor) -> torch.Tensor:
    """The central square window of ``x`` (side min(H, W, :data:`MAX_SIDE`))."""
    t, left = _square_origin(x)
    side = min(*x.shape[-2:], MAX_SIDE)
    return x[..., t:t + side, left:left + side]


def _square_origin(x: torch.Tensor) -> tuple[int, int]:
    h, w = x.shape[-2:]
    side = min(h, w, MAX_SIDE)
    return (h - side) // 2, (w - side) // 2


def _rotation_matrix(angle: float) -> np.ndarray:
    """The turn by ``angle`` degrees of (row, column) offsets: counter-clockwise on screen, as
    ``scipy.ndimage.rotate``."""
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    return np.array([[c, -s], [s, c]])


def _warp(a: np.ndarray, shift, angle: float, order: int = 3, mode: str | None = None, output=None) -> np.ndarray:
    """``a`` turned by ``angle`` degrees about its centre, then moved by ``shift`` (scipy.ndimage)."""
    from scipy.ndimage import affine_transform
    from scipy.ndimage import shift as nd_shift

    mode = BORDER if mode is None else mode
    if angle == 0:
        return nd_shift(a, shift, output=output, order=order, mode=mode)
    inv = _rotation_matrix(-angle)
    centre = (np.array(a.shape) - 1) / 2
    offset = centre - inv @ (centre + np.asarray(shift, float))
    return affine_transform(a, inv, offset=offset, output=output, order=order, mode=mode)


def _band(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    d = gaussian_filter(x, 1.0, mode="mirror") - gaussian_filter(x, 4.0, mode="mirror")
    return d - d.mean()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def _improves(new: np.ndarray, ref: np.ndarray, shift: tuple[float, float], angle: float = 0.0) -> bool:
    """True when moving ``ref`` by ``shift`` (after turning it by ``angle``) raises the correlation
    of the two lumas' detail band (a difference of Gaussians, 1-4 px) and brings it to at least
    :data:`MIN_AGREEMENT`. Phase correlation always returns *some* peak; on a rotated reference it
    is spurious (shifts of up to 278 px for 5-10 degree rotations of the OSCD test references).
    :data:`MIN_AGREEMENT` is the
    plausibility check's threshold (``pipeline.MIN_REFERENCE_AGREEMENT``, calibrated on the train
    cities); checked afterwards on the test cities: a true shift of 0.6-2 px reaches 0.54-0.92, a
    reference rotated by 2-10 degrees at most 0.14 whatever shift is tried (docs/reference.md)."""
    a = _band(new)
    before = _correlation(a, _band(ref))
    after = _correlation(a, _band(_warp(ref, shift, angle, order=1, mode="mirror")))
    return after > before and after >= MIN_AGREEMENT


def to_units(shift: tuple[float, float]) -> tuple[int, int]:
    """The shift as the integers the container stores (multiples of :data:`SHIFT_UNIT`)."""
    return tuple(int(round(s / SHIFT_UNIT)) for s in shift)


def from_units(units: tuple[int, int]) -> tuple[float, float]:
    return tuple(u * SHIFT_UNIT for u in units)


def rotation_to_units(angle: float) -> int:
    """The angle (degrees) as the integer the container stores (a multiple of :data:`ROTATION_UNIT`)."""
    return int(round(angle / ROTATION_UNIT))


def rotation_from_units(units: int) -> float:
    return units * ROTATION_UNIT


def is_none(shift: tuple[float, float]) -> bool:
    return abs(shift[0]) < MIN_SHIFT and abs(shift[1]) < MIN_SHIFT


def uncovered(size: tuple[int, int], shift: tuple[float, float], angle: float = 0.0) -> np.ndarray:
    """Boolean ``[H, W]``: the pixels that :func:`apply_shift` fills from outside the reference
    (no reference content there)."""
    if shift[0] == 0 and shift[1] == 0 and angle == 0:
        return np.zeros(size, bool)
    return _warp(np.ones(size), shift, angle, order=1, mode="constant") < 1 - 1e-6


def apply_shift(ref: torch.Tensor, shift: tuple[float, float], angle: float = 0.0) -> torch.Tensor:
    """The reference ``[1,3,H,W]`` turned by ``angle`` degrees about its centre and moved by
    ``shift`` pixels, rounded to 8 bits as every image refscale reads; unchanged when both are
    zero (the encoder records an estimate that :func:`is_none` as zero; the decoder applies
    whatever was recorded). The warp is normative for the ``.rsc`` format, on each channel in
    float32: for ``angle == 0`` ``scipy.ndimage.shift(channel, shift, order=3, mode=BORDER)``,
    otherwise ``scipy.ndimage.affine_transform(channel, M(-angle), offset=c - M(-angle) (c + shift),
    order=3, mode=BORDER)`` with ``c`` the centre ``((H-1)/2, (W-1)/2)`` and ``M(a)`` the turn
    ``[[cos a, -sin a], [sin a, cos a]]`` of (row, column) offsets; clipped to [0, 1] and rounded to 1/255."""
    if shift[0] == 0 and shift[1] == 0 and angle == 0:
        return ref
    a = ref.detach().float().clamp(0, 1)[0].numpy()
    out = np.empty_like(a)
    for c in range(a.shape[0]):  # one channel at a time: a bounded memory peak on large scenes
        _warp(a[c], shift, angle, order=3, output=out[c])
    np.clip(out, 0, 1, out=out)
    return torch.from_numpy(np.round(out * 255) / 255)[None]
