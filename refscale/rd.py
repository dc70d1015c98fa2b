"""Bjontegaard deltas between two rate-distortion curves (issue 15).

A curve is a list of ``(bpp, psnr)`` points, one per codec quality. :func:`bd` returns

* ``bd_rate``: the average rate difference (%) of ``test`` against ``anchor`` at equal PSNR,
  negative = ``test`` needs fewer bits; integrated over the PSNR interval both curves cover
  (``psnr_range``);
* ``bd_psnr``: the average PSNR difference (dB) at equal rate, positive = ``test`` is better;
  integrated over the log-rate interval both cover (``bpp_range``).

Both come from the maintained ``bjontegaard`` package (piecewise cubic Hermite interpolation,
``pchip``, of PSNR against log-rate; the package's default method for new work), not a
hand-written fit. It is an optional dependency (the ``report`` extra). When the curves do not
overlap the delta is ``None`` (extrapolation is never used).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

from refscale.errors import InputError

Curve = Sequence[tuple[float, float]]

#: interpolation of ``bjontegaard``: piecewise cubic Hermite (monotone, no overshoot)
METHOD = "pchip"


def _sorted(curve: Curve, what: str) -> tuple[list[float], list[float]]:
    pts = sorted((float(r), float(d)) for r, d in curve)
    if len(pts) < 4:
        raise InputError(f"{what}: a BD delta needs at least 4 rate-distortion points, got {len(pts)}")
    if any(not (r > 0 and math.isfinite(r) and math.isfinite(d)) for r, d in pts):
        raise InputError(f"{what}: rates must be positive and every value finite")
    return [r for r, _ in pts], [d for _, d in pts]


def _monotone(rates: list[float], dists: list[float]) -> tuple[list[float], list[float]]:
    """Keep the points where distortion strictly increases with rate (the lower convex
    envelope is not needed for pchip, but repeated or falling points break the inverse fit); of
    points with equal rate, the best."""
    out_r, out_d = [], []
    for r, d in zip(rates, dists):
        if out_d and r == out_r[-1] and d > out_d[-1]:
            out_d[-1] = d
        elif not out_d or d > out_d[-1]:
            out_r.append(r)
            out_d.append(d)
    return out_r, out_d


def bd(anchor: Curve, test: Curve) -> dict:
    """BD-rate (%) and BD-PSNR (dB) of ``test`` against ``anchor`` with the ranges they cover."""
    try:
        import bjontegaard
    except ImportError:
        raise InputError("BD metrics need the bjontegaard package: pip install 'refscale[report]'") from None
    ra, da = _monotone(*_sorted(anchor, "anchor"))
    rt, dt = _monotone(*_sorted(test, "test"))
    out: dict = {"bd_rate": None, "bd_psnr": None, "psnr_range": None, "bpp_range": None}
    if min(len(ra), len(rt)) < 4:
        return out
    lo_d, hi_d = max(da[0], dt[0]), min(da[-1], dt[-1])
    lo_r, hi_r = max(ra[0], rt[0]), min(ra[-1], rt[-1])
    with warnings.catch_warnings():  # the package warns on small overlaps; we report the range instead
        warnings.simplefilter("ignore")
        if hi_d > lo_d:
            out["bd_rate"] = float(bjontegaard.bd_rate(ra, da, rt, dt, method=METHOD, require_matching_points=False,
                                                       min_overlap=0))
            out["psnr_range"] = [lo_d, hi_d]
        if hi_r > lo_r:
            out["bd_psnr"] = float(bjontegaard.bd_psnr(ra, da, rt, dt, method=METHOD, require_matching_points=False,
                                                       min_overlap=0))
            out["bpp_range"] = [lo_r, hi_r]
    return out
