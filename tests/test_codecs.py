"""LR codecs: availability, round trips (lossless ones exact), quality, defensive decoding."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import synthetic_image
from refscale.format import codecs
from refscale.errors import ContainerError, InputError

AVAILABLE = [c for c, ok in codecs.available_codecs().items() if ok and not codecs.needs_reference(c)]  # still images (inter: test_inter.py)


def image(h=40, w=56, seed=0) -> np.ndarray:
    return np.round(synthetic_image(h, w, seed)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def psnr(a, b) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def test_available_codecs_names_every_codec():
    avail = codecs.available_codecs()
    assert list(avail) == ["png", "webp", "jpeg", "avif", "jxl", "j2k", "h264-inter", "hevc-inter", "av1-inter"]
    assert [c for c in avail if codecs.needs_reference(c)] == ["h264-inter", "hevc-inter", "av1-inter"]
    assert all(isinstance(v, bool) for v in avail.values())
    assert avail["png"] and avail["jpeg"]  # Pillow is a hard dependency


def test_aliases():
    assert codecs.canonical("JPG") == "jpeg" and codecs.canonical("jpegxl") == "jxl" and codecs.canonical("jp2") == "j2k"
    with pytest.raises(InputError, match="unknown codec 'bmp'"):
        codecs.canonical("bmp")


@pytest.mark.parametrize("codec", AVAILABLE)
def test_round_trip(codec):
    arr = image()
    data = codecs.encode_image(arr, codec)
    out = codecs.decode_image(data, codec, arr.shape[:2])
    assert out.dtype == np.uint8 and out.shape == arr.shape
    if codecs.is_lossless(codec, None):
        assert np.array_equal(out, arr)
        if codec != "png":  # png takes no quality at all
            assert np.array_equal(codecs.decode_image(codecs.encode_image(arr, codec, 100), codec, arr.shape[:2]), arr)
    else:
        assert psnr(out, arr) > 30
    if codec != "png":  # lossy settings: smaller at low quality, and still the same picture
        low = codecs.encode_image(arr, codec, 20)
        high = codecs.encode_image(arr, codec, 90)
        assert len(low) < len(high)
        assert psnr(codecs.decode_image(low, codec, arr.shape[:2]), arr) > 18
        assert psnr(codecs.decode_image(high, codec, arr.shape[:2]), arr) > psnr(codecs.decode_image(low, codec, arr.shape[:2]), arr)


@pytest.mark.parametrize("codec", AVAILABLE)
def test_wrong_size_and_garbage_are_container_errors(codec):
    arr = image(24, 32)
    data = codecs.encode_image(arr, codec)
    with pytest.raises(ContainerError):
        codecs.decode_image(data, codec, (12, 32))
    with pytest.raises(ContainerError, match="corrupt"):
        codecs.decode_image(b"\x00garbage" * 10, codec, (24, 32))
    with pytest.raises(ContainerError):
        codecs.decode_image(data[: len(data) // 2], codec, (24, 32))


def test_missing_codec_is_reported_not_crashed(monkeypatch):
    monkeypatch.setattr(codecs, "_probe", lambda name: name == "png")
    assert codecs.available_codecs()["jxl"] is False
    with pytest.raises(InputError, match="jxl is not available on this machine.*imagecodecs"):
        codecs.encode_image(image(), "jxl")
    with pytest.raises(InputError, match="not available"):
        codecs.decode_image(b"x", "avif", (2, 2))


def test_quality_rules():
    assert codecs.check_quality("webp", None) is None
    assert codecs.check_quality("jpeg", 75) == 75
    for bad in (0, 101, 2.5, True):
        with pytest.raises(InputError, match="quality"):
            codecs.check_quality("jpeg", bad)
    with pytest.raises(InputError, match="lossless"):
        codecs.check_quality("png", 90)
    assert codecs.is_lossless("webp", 100) and not codecs.is_lossless("webp", 90) and not codecs.is_lossless("jpeg", None)


def test_encode_refuses_non_rgb8():
    with pytest.raises(InputError, match="uint8"):
        codecs.encode_image(np.zeros((4, 4, 3), np.float32), "png")
    with pytest.raises(InputError, match="uint8"):
        codecs.encode_image(np.zeros((4, 4), np.uint8), "png")
