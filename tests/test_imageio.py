import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from refscale.errors import InputError
from refscale.imageio import as_image_tensor, is_greyscale_file, read_image, write_image
from tests.conftest import synthetic_image


def test_write_read_round_trip_is_8bit_exact(tmp_path):
    x = synthetic_image(20, 28)
    p = write_image(x, tmp_path / "a.png")
    y = read_image(p)
    assert y.shape == (1, 3, 20, 28) and y.dtype == torch.float32
    assert torch.equal(y, torch.round(x * 255) / 255)
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file is gone


def test_write_refuses_existing_unless_overwrite(tmp_path):
    x = synthetic_image(8, 8)
    p = write_image(x, tmp_path / "a.png")
    with pytest.raises(InputError):
        write_image(x, p)
    write_image(torch.zeros(3, 8, 8), p, overwrite=True)
    assert read_image(p).max() == 0
    with pytest.raises(InputError):
        write_image(x, tmp_path / "a.unknownsuffix")


def test_write_other_formats_by_suffix(tmp_path):
    x = synthetic_image(16, 16)
    write_image(x, tmp_path / "a.jpg", quality=95)
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    assert (read_image(tmp_path / "a.jpg") - x).abs().mean() < 0.03


def test_greyscale_and_rgba_are_converted_with_warning(tmp_path):
    g = (np.arange(60).reshape(6, 10) * 4).astype(np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="greyscale"):
        y = read_image(tmp_path / "g.png")
    assert y.shape == (1, 3, 6, 10)
    assert torch.equal(y[0, 0], torch.from_numpy(g).float() / 255) and torch.equal(y[0, 0], y[0, 2])
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha"):
        y = read_image(tmp_path / "a.png")
    assert y.shape == (1, 3, 4, 5) and torch.allclose(y[0, 0], torch.full((4, 5), 200 / 255))


def test_rgb_reads_without_warning(tmp_path):
    write_image(synthetic_image(8, 8), tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "a.png")


def test_16bit_png_keeps_precision(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    a = (np.arange(6 * 7 * 3).reshape(6, 7, 3) * 311 % 65536).astype(np.uint16)
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(a))
    y = read_image(tmp_path / "a.png")
    assert torch.allclose(y[0].permute(1, 2, 0), torch.from_numpy(a.astype(np.float32) / 65535), atol=1e-7)
    g = (np.arange(30).reshape(5, 6) * 2000).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g.png")
    with pytest.warns(UserWarning):
        y = read_image(tmp_path / "g.png")
    assert torch.allclose(y[0, 1], torch.from_numpy(g.astype(np.float32) / 65535), atol=1e-7)


def test_missing_and_unreadable_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="cannot read"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(InputError):
        read_image(tmp_path / "text.png")


def test_decompression_bomb_is_input_error(tmp_path, monkeypatch):
    write_image(synthetic_image(40, 40), tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px > 2 * limit -> bomb
    with pytest.raises(InputError, match="too large"):
        read_image(tmp_path / "a.png")


def test_as_image_tensor_accepts_tensors_arrays_paths(tmp_path):
    x = synthetic_image(6, 9)
    assert as_image_tensor(x[0]).shape == (1, 3, 6, 9)
    assert torch.equal(as_image_tensor(x), x)
    u8 = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert torch.equal(as_image_tensor(u8), torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255)
    assert torch.allclose(as_image_tensor(u8.astype(np.float32) / 255), as_image_tensor(u8))
    write_image(x, tmp_path / "a.png")
    assert as_image_tensor(tmp_path / "a.png").shape == (1, 3, 6, 9)
    assert as_image_tensor(str(tmp_path / "a.png")).shape == (1, 3, 6, 9)
    for bad in (torch.rand(2, 3, 4, 4), torch.rand(1, 4, 4, 4), 3.0):
        with pytest.raises(InputError):
            as_image_tensor(bad)


def test_is_greyscale_file(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tmp_path / "g.png")
    write_image(torch.full((1, 3, 4, 4), 0.5), tmp_path / "rgb.png")  # equal channels, but RGB
    assert is_greyscale_file(tmp_path / "g.png")
    assert not is_greyscale_file(tmp_path / "rgb.png")
    assert not is_greyscale_file(tmp_path / "missing.png")


def _frames(n, h=24, w=32):
    return [Image.fromarray((synthetic_image(h, w, seed=i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for i in range(n)]


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp", ".tif"])
def test_a_file_of_several_images_is_refused(tmp_path, capsys, suffix):
    """Issue 26, item 5.7: an animated GIF (PNG, WebP) or a 2-page TIFF was read as its first
    frame without a word; now one line naming the file and the count, from the API and the CLI
    (as the image and as the reference). One frame of the same format still reads."""
    from refscale import raster
    from refscale.cli import main

    first, *rest = _frames(2)
    p = tmp_path / f"anim{suffix}"
    first.save(p, save_all=True, append_images=rest)
    with pytest.raises(InputError, match=f"anim{suffix} holds 2 images"):
        read_image(p)
    with pytest.raises(InputError, match="holds 2 images"):
        raster.read_raster(p)
    single = tmp_path / f"one{suffix}"
    first.save(single)
    assert read_image(single).shape == (1, 3, 24, 32)
    write_image(synthetic_image(24, 32), tmp_path / "hr.png")
    capsys.readouterr()
    for argv in (["encode", p, "-m", "bicubic-x2", "-o", tmp_path / "x.rsc"],
                 ["encode", tmp_path / "hr.png", "--ref", p, "-m", "refscale-x2", "-o", tmp_path / "x.rsc"]):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("refscale: error: ") and "holds 2 images" in err[0], err
        assert not (tmp_path / "x.rsc").exists()


def test_multi_page_tiff_refused_on_every_reader(tmp_path, monkeypatch):
    """The TIFF readers other than Pillow: rasterio in memory and window by window, imagecodecs
    without rasterio; a TIFF with overviews (reduced-resolution pages) is one image."""
    from refscale import raster

    first, *rest = _frames(2)
    p = tmp_path / "pages.tif"
    first.save(p, save_all=True, append_images=rest)
    if raster.have_rasterio():
        with pytest.raises(InputError, match="holds 2 images"):
            raster.read_raster(p, windowed=True)
        import rasterio

        ov = tmp_path / "ov.tif"
        with rasterio.open(ov, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", tiled=True,
                           blockxsize=16, blockysize=16) as dst:
            dst.write(np.full((3, 64, 64), 100, np.uint8))
            dst.build_overviews([2, 4])
        assert raster.read_raster(ov).tensor.shape == (1, 3, 64, 64)
        assert raster.read_raster(ov, windowed=True).size == (64, 64)
        from refscale.imageio import frame_count

        assert frame_count(ov) == 1
    monkeypatch.setattr(raster, "have_rasterio", lambda: False)
    with pytest.raises(InputError, match="holds 2 images"):
        raster.read_raster(p)


def test_an_mpo_camera_jpeg_reads_its_primary_image(tmp_path):
    """A JPEG with previews (MPO, as cameras write them) is one picture, not an animation."""
    first, *rest = _frames(2)
    p = tmp_path / "camera.jpg"
    try:
        first.save(p, format="MPO", save_all=True, append_images=rest)
    except (KeyError, ValueError, OSError):
        pytest.skip("this Pillow cannot write MPO")
    with Image.open(p) as im:
        assert im.format == "MPO" and im.n_frames == 2
    assert read_image(p).shape == (1, 3, 24, 32)
