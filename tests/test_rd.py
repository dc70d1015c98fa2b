"""BD metrics (refscale.rd) on tiny curves whose deltas are known by hand."""
from __future__ import annotations

import pytest

from refscale.errors import InputError
from refscale.rd import bd

pytest.importorskip("bjontegaard")

#: PSNR linear in log2(rate): 3 dB per doubling of the rate
ANCHOR = [(0.1, 30.0), (0.2, 33.0), (0.4, 36.0), (0.8, 39.0), (1.6, 42.0)]


def test_the_same_psnr_at_80_percent_of_the_rate_is_minus_20_percent():
    r = bd(ANCHOR, [(b * 0.8, d) for b, d in ANCHOR])
    assert r["bd_rate"] == pytest.approx(-20.0, abs=1e-9)
    assert r["psnr_range"] == [30.0, 42.0] and r["bpp_range"] == pytest.approx([0.1, 1.28])


def test_one_db_more_at_equal_rate():
    r = bd(ANCHOR, [(b, d + 1.0) for b, d in ANCHOR])
    assert r["bd_psnr"] == pytest.approx(1.0, abs=1e-9)
    # 1 dB at 3 dB per doubling is a rate factor 2 ** (-1/3): -20.63 %
    assert r["bd_rate"] == pytest.approx(100 * (2 ** (-1 / 3) - 1), abs=1e-6)
    assert r["psnr_range"] == [31.0, 42.0]


def test_curves_that_do_not_overlap_give_none_not_an_extrapolation():
    r = bd(ANCHOR, [(b * 100, d + 20) for b, d in ANCHOR])
    assert r == {"bd_rate": None, "bd_psnr": None, "psnr_range": None, "bpp_range": None}


def test_order_of_points_does_not_matter_and_too_few_points_are_refused():
    assert bd(ANCHOR, ANCHOR[::-1])["bd_rate"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(InputError, match="at least 4"):
        bd(ANCHOR, ANCHOR[:3])
    with pytest.raises(InputError, match="positive"):
        bd(ANCHOR, [(0.0, 30.0)] + ANCHOR[1:])


def test_report_curves_without_full_resolution_or_with_an_unknown_image():
    """benchmarks/rd_curves.py: a report of rescaler curves alone keeps them (the common images
    come from every curve when no full-resolution curve is selected); an unknown image name in
    ``images`` is noted and ignored instead of emptying every curve."""
    from benchmarks import rd_curves

    points = {f"{im}|bicubic-x2|jpeg|{q}": {"bpp": q / 100, "psnr_y": 30 + q / 10, "ssim_y": 0.9}
              for im in ("a", "b") for q in (10, 50)}
    results = {"points": points, "meta": {"qualities": {"jpeg": [10, 50]}}}
    out = rd_curves.curves(results)
    assert [p["images"] for p in out[("bicubic-x2", "jpeg")]] == [2, 2]
    out = rd_curves.curves(results, images=["a", "nope"])
    assert [p["images"] for p in out[("bicubic-x2", "jpeg")]] == [1, 1]


def test_points_of_equal_rate_keep_the_best():
    """Two qualities that give the same bytes (tiny images, the lowest qualities) must not break the fit."""
    test = [(0.1, 29.0)] + ANCHOR
    assert bd(ANCHOR, test)["bd_rate"] == pytest.approx(0.0, abs=1e-9)
    assert bd(ANCHOR, test)["bd_psnr"] == pytest.approx(0.0, abs=1e-9)
