"""The README's main job: `refscale demo` with the shipped weights (small size here)."""
import numpy as np
import pytest

import refscale
from refscale import zoo
from refscale.cli import main
from refscale.demo import real_pair, run_demo
from refscale.synthetic import synthetic_revisit_pair


def test_synthetic_pair_is_a_revisit():
    new, ref = synthetic_revisit_pair(96, 128, seed=3)
    assert new.shape == ref.shape == (96, 128, 3) and new.dtype == np.uint8
    again, _ = synthetic_revisit_pair(96, 128, seed=3)
    assert np.array_equal(new, again)  # deterministic from the seed
    diff = np.abs(new.astype(int) - ref.astype(int)).mean()
    assert 2 < diff < 80  # related but not identical (season, haze, new buildings)


def test_shipped_real_pair_is_a_registered_revisit():
    new, ref = real_pair()
    assert new.shape == ref.shape == (384, 384, 3) and new.dtype == np.uint8
    diff = np.abs(new.astype(int) - ref.astype(int)).mean()
    assert 2 < diff < 60  # two dates of one place, not one image twice
    small, _ = real_pair(64)
    assert np.array_equal(small, new[160:224, 160:224])  # the centre crop


def test_demo_runs_with_bicubic(capsys):
    rows = run_demo("bicubic-x2", size=64)
    assert rows["bicubic-x2"]["bpp"] > 0 and rows["bicubic-x2"]["psnr_y"] > 20
    assert 15 < rows["bicubic-x2"]["psnr_rgb"] != rows["bicubic-x2"]["psnr_y"]
    out = capsys.readouterr().out
    assert f"PSNR-RGB {rows['bicubic-x2']['psnr_rgb']:.2f} dB" in out
    assert "Sentinel-2" in out and "64x64" in out
    assert out.count("bicubic-x2 ") == 1  # the model is its own baseline: one row
    rows = run_demo("bicubic-x2", size=48, synthetic=True)
    assert "synthetic" in capsys.readouterr().out and rows["bicubic-x2"]["psnr_y"] > 20


@pytest.mark.skipif("refscale-x2-oscd" not in zoo.weights_cards(), reason="weights not shipped yet")
def test_demo_with_shipped_weights(tmp_path, capsys):
    assert refscale.load("refscale-x2").name == "refscale-x2-oscd"
    assert main(["demo", "--size", "64", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "refscale-x2" in out and "bicubic-x2" in out
    assert (tmp_path / "refscale-x2.rsc").stat().st_size > 0


def test_demo_never_overwrites(tmp_path, capsys):
    (tmp_path / "hr.png").write_bytes(b"mine")
    assert main(["demo", "-m", "bicubic-x2", "--size", "32", "-o", str(tmp_path)]) == 2
    assert (tmp_path / "hr.png").read_bytes() == b"mine"
    assert "exists" in capsys.readouterr().err
