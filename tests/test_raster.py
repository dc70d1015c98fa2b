"""Real rasters (issue 16): GeoTIFF in and out, 12/16-bit and float data through a recorded
intensity mapping, band selection, the missing-extra message, COG output, umask, and that plain
PNG/JPEG handling is unchanged. Every scene is a tiny synthetic GeoTIFF written here (UTM CRS,
10 m pixels, uint16 reflectance 0-10000, a nodata border, 4 bands): no data files needed."""
from __future__ import annotations

import json
import os
import stat
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_image
from refscale import pipeline, raster, zoo
from refscale.cli import main
from refscale.container import Packet, read_header
from refscale.errors import ContainerError, InputError
from refscale.imageio import read_image, write_image
from refscale.raster import RasterRecord, from_model, read_raster, to_model
from test_pipeline import ToyRef

rasterio = pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import Affine, from_origin  # noqa: E402

TRANSFORM = from_origin(399960.0, 5000040.0, 10.0, 10.0)  # UTM 31N, 10 m pixels
CRS_UTM = CRS.from_epsg(32631)
DESCRIPTIONS = ("B02", "B03", "B04", "B08")


def scene(h=40, w=48, seed=0, bands=4, border=3) -> np.ndarray:
    """uint16 reflectance-like bands [B, H, W] (0-10000, structure from synthetic_image, a 0 border)."""
    rgb = synthetic_image(h, w, seed)[0].numpy()
    planes = [rgb[2], rgb[1], rgb[0], 0.5 * rgb[0] + 0.5 * rgb[1]][:bands]
    arr = np.stack([np.rint(200 + 3500 * p ** 1.5) for p in planes]).astype(np.uint16)
    arr[:, 5, 7] = 9800  # a few bright outliers (a roof, a cloud)
    if border:
        arr[:, :border, :] = 0
        arr[:, :, :border] = 0
    return arr


def write_geotiff(path, arr, descriptions=DESCRIPTIONS, nodata=0, crs=CRS_UTM, transform=TRANSFORM):
    b, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=b, dtype=arr.dtype.name,
                       crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(arr)
        for i, d in enumerate(descriptions[:b], 1):
            dst.set_band_description(i, d)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def psnr16(a, b, peak):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(peak ** 2 / mse)


# ----------------------------------------------------------------------------- georeferencing
def test_geotiff_round_trip_keeps_georeferencing_dtype_and_bands(tmp_path, capsys):
    src = write_geotiff(tmp_path / "scene.tif", scene())
    code, out, err = run(capsys, "encode", src, "-m", "bicubic-x2", "--bands", "3,2,1", "-o", tmp_path / "s.rsc",
                         "--lr-out", tmp_path / "lr.tif")
    assert code == 0, err
    assert "48x40" in out and "uint16 bands 3,2,1" in out and "georeferenced" in out
    info = json.loads(run(capsys, "info", tmp_path / "s.rsc")[1])
    assert info["format_version"] == 3 and info["raster"]["bands"] == [3, 2, 1]
    assert info["raster"]["crs"] == "WGS 84 / UTM zone 31N" and info["raster"]["dtype"] == "uint16"
    assert info["sections"]["raster"] > 0 and info["bytes"] == (tmp_path / "s.rsc").stat().st_size

    with rasterio.open(tmp_path / "lr.tif") as lr:  # the LR: transform scaled by the factor
        assert lr.crs == CRS_UTM and lr.transform == TRANSFORM @ Affine.scale(2)
        assert (lr.width, lr.height, lr.count, lr.dtypes[0]) == (24, 20, 3, "uint8")
        assert lr.descriptions == ("B04", "B03", "B02")
        rec = Packet.from_bytes((tmp_path / "s.rsc").read_bytes()).raster
        assert lr.offsets[0] == rec.ranges[0][0] and lr.scales[0] == pytest.approx((rec.ranges[0][1] - rec.ranges[0][0]) / 255)

    code, out, err = run(capsys, "decode", tmp_path / "s.rsc", "-o", tmp_path / "out.tif")
    assert code == 0, err
    with rasterio.open(src) as a, rasterio.open(tmp_path / "out.tif") as b:
        assert b.crs == a.crs and b.transform == a.transform and (b.width, b.height) == (a.width, a.height)
        assert b.dtypes == ("uint16",) * 3 and b.nodata == 0 and b.descriptions == ("B04", "B03", "B02")
        orig, rebuilt = a.read([3, 2, 1]), b.read()
    inner = (slice(None), slice(6, -2), slice(6, -2))  # away from the nodata border (masking it: issue 16 item 4)
    assert psnr16(orig[inner], rebuilt[inner], 10000) > 30


def test_cog_output_is_valid(tmp_path, capsys):
    src = write_geotiff(tmp_path / "big.tif", scene(600, 640, border=0)[:3], descriptions=("R", "G", "B"))
    assert run(capsys, "encode", src, "-m", "bicubic-x2", "-o", tmp_path / "s.rsc")[0] == 0
    code, _, err = run(capsys, "decode", tmp_path / "s.rsc", "-o", tmp_path / "cog.tif", "--cog")
    assert code == 0, err
    with rasterio.open(tmp_path / "cog.tif") as c:
        assert c.profile["tiled"] and c.overviews(1) and c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert c.crs == CRS_UTM and c.transform == TRANSFORM and c.dtypes[0] == "uint16"
    code, _, err = run(capsys, "decode", tmp_path / "s.rsc", "-o", tmp_path / "cog.png", "--cog")
    assert code == 2 and ".tif" in err


# ----------------------------------------------------------------------------- bit depth
def test_16bit_mapping_round_trip_error_is_bounded(tmp_path):
    arr = scene(border=0)[:3]
    img = read_raster(write_geotiff(tmp_path / "a.tif", arr))
    rec = img.record
    assert rec.dtype == "uint16" and rec.rule == raster.DEFAULT_RANGE and len(rec.ranges) == 3
    back = from_model(img.tensor, rec)  # float round trip: exact inside [lo, hi]
    for c, (lo, hi) in enumerate(rec.ranges):
        inside = (arr[c] >= lo) & (arr[c] <= hi)
        assert np.abs(back[c][inside].astype(int) - arr[c][inside]).max() <= 0
        assert inside.mean() > 0.99  # the percentile range clips at most the outliers
    q = torch.round(img.tensor * 255) / 255  # the 8-bit domain of the LR: half a step of (hi - lo) / 255
    back8 = from_model(q, rec)
    for c, (lo, hi) in enumerate(rec.ranges):
        inside = (arr[c] >= lo) & (arr[c] <= hi)
        assert np.abs(back8[c][inside].astype(float) - arr[c][inside]).max() <= (hi - lo) / 255 / 2 + 0.5
    assert rec.ranges == [(float(arr.min()), float(arr.max()))] * 3  # default j0,100: one range, nothing clipped
    nod = read_raster(write_geotiff(tmp_path / "n.tif", scene()[:3], nodata=0)).record  # 0 border excluded
    assert nod.ranges[0][0] == float(scene()[:3][scene()[:3] > 0].min())
    per_band = read_raster(tmp_path / "a.tif", value_range="p2,98").record
    assert per_band.rule == "p2,98" and len(set(per_band.ranges)) == 3
    for bad in ("2,1", "p5,101", "x", "1,2,3"):
        with pytest.raises(InputError, match="range"):
            read_raster(tmp_path / "a.tif", value_range=bad)
    fixed = read_raster(tmp_path / "a.tif", value_range="0,10000").record
    assert fixed.ranges == [(0.0, 10000.0)] * 3 and fixed.rule == "fixed 0,10000"
    assert np.array_equal(from_model(read_raster(tmp_path / "a.tif", value_range="0,10000").tensor, fixed), arr)


def test_16bit_png_round_trips_to_16_bits(tmp_path, capsys):
    imagecodecs = pytest.importorskip("imagecodecs")
    arr = np.ascontiguousarray(np.moveaxis(scene(border=0)[:3], 0, -1)) * 4  # 14-bit-like values in a 16-bit PNG
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(arr))
    write_image(torch.from_numpy(np.moveaxis(arr, -1, 0) / 65535.0).float(), tmp_path / "a8.png")
    assert run(capsys, "encode", tmp_path / "a.png", "-m", "bicubic-x2", "-o", tmp_path / "a.rsc")[0] == 0
    assert run(capsys, "encode", tmp_path / "a8.png", "-m", "bicubic-x2", "-o", tmp_path / "a8.rsc")[0] == 0
    p16, p8 = (Packet.from_bytes((tmp_path / n).read_bytes()) for n in ("a.rsc", "a8.rsc"))
    assert p16.raster.dtype == "uint16" and p8.raster is None and p8.version == 2
    assert not np.array_equal(p16.lr, p8.lr)  # not silently the 8-bit encode any more
    code, _, err = run(capsys, "decode", tmp_path / "a.rsc", "-o", tmp_path / "out.png")
    assert code == 0, err
    out = imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
    assert out.dtype == np.uint16 and out.shape == arr.shape
    assert psnr16(arr[4:-4, 4:-4], out[4:-4, 4:-4], 4 * 10000) > 28
    code, _, err = run(capsys, "decode", tmp_path / "a.rsc", "-o", tmp_path / "out.jpg")
    assert code == 2 and "without losing bits" in err and not (tmp_path / "out.jpg").exists()


def test_16bit_colour_png_without_imagecodecs_is_refused_not_reduced(tmp_path, monkeypatch):
    imagecodecs = pytest.importorskip("imagecodecs")
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(np.full((4, 5, 3), 1000, np.uint16)))
    import builtins

    real = builtins.__import__

    def no_imagecodecs(name, *a, **k):
        if name == "imagecodecs":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_imagecodecs)
    with pytest.raises(InputError, match=r"refscale\[codecs\]"):
        read_raster(tmp_path / "a.png")


def test_float_raster_nan_is_masked_and_restored(tmp_path, capsys):
    """NaN pixels of a float raster (no nodata value): masked, filled before the model, NaN again
    after decoding, and not spreading: every other pixel decodes finite and close."""
    arr = scene(border=0)[:3].astype(np.float32) / 10000
    arr[:, 10:14, 20:23] = np.nan  # a hole in all bands
    arr[1, 30, 5] = np.nan  # and one in one band
    write_geotiff(tmp_path / "f.tif", arr, nodata=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # masked, no NaN warning any more
        img = read_raster(tmp_path / "f.tif")
    assert img.record.dtype == "float32" and torch.isfinite(img.tensor).all()
    m = img.record.mask
    assert m.planes == 3 and np.array_equal(m.rows(), np.isnan(arr))
    assert run(capsys, "encode", tmp_path / "f.tif", "-m", "bicubic-x2", "-o", tmp_path / "f.rsc")[0] == 0
    code, _, err = run(capsys, "decode", tmp_path / "f.rsc", "-o", tmp_path / "out.tif")
    assert code == 0, err
    with rasterio.open(tmp_path / "out.tif") as o:
        out = o.read()
    assert np.array_equal(np.isnan(out), np.isnan(arr))  # NaN exactly where it was, nowhere else
    from scipy.ndimage import binary_dilation

    valid = ~np.isnan(arr)
    near = valid & binary_dilation(~valid, np.ones((1, 7, 7), bool))  # valid, within 3 px of a NaN
    assert near.sum() > 20 and psnr16(arr[near], out[near], 1.0) > 30 and psnr16(arr[valid], out[valid], 1.0) > 30


def test_nodata_border_is_masked_filled_and_restored(tmp_path, capsys):
    """A nodata border (value 0): masked, filled from the valid pixels before the model, written
    back as nodata; the valid pixels next to it decode as well as the interior (no dark halo)."""
    arr = scene(48, 64, border=0)[:3]
    arr[:, :6, :] = 0
    arr[:, :, :5] = 0
    arr[:, 30:33, 40:44] = 0  # a nodata hole
    src = write_geotiff(tmp_path / "n.tif", arr, nodata=0)
    bad = arr == 0
    code, _, err = run(capsys, "encode", src, "-m", "bicubic-x2", "-o", tmp_path / "n.rsc", "--lr-out", tmp_path / "lr.tif")
    assert code == 0, err
    info = json.loads(run(capsys, "info", tmp_path / "n.rsc")[1])
    assert info["raster"]["nodata_pixels"] == [int(bad[0].sum())]  # one plane: all bands share it
    assert run(capsys, "decode", tmp_path / "n.rsc", "-o", tmp_path / "out.tif")[0] == 0
    with rasterio.open(tmp_path / "out.tif") as o:
        assert o.nodata == 0
        out = o.read()
    assert np.array_equal(out == 0, bad)  # nodata kept, and no valid pixel became nodata
    valid = ~bad
    ring = valid & np.roll(bad, 2, axis=1) | valid & np.roll(bad, 2, axis=2) | valid & np.roll(bad, -2, axis=2)
    assert ring.sum() > 100
    assert psnr16(arr[ring], out[ring], 10000) > psnr16(arr[valid], out[valid], 10000) - 3  # no halo next to the border
    # without the mask (the old behaviour: nodata given to the model as the low value) the ring suffers
    packet = pipeline.encode(zoo.load("bicubic-x2"), raster.RasterImage(read_raster(src).tensor, None))
    old = pipeline.decode(zoo.load("bicubic-x2"), packet)
    old16 = from_model(old, read_raster(src).record)
    assert psnr16(arr[ring], old16[ring], 10000) < psnr16(arr[ring], out[ring], 10000) - 4

    with rasterio.open(tmp_path / "lr.tif") as lr:  # the LR carries the nodata value too
        assert lr.nodata == 0 and lr.transform == TRANSFORM @ Affine.scale(2)
        lr_arr = lr.read()
    blocks = bad[0].reshape(24, 2, 32, 2).all(axis=(1, 3))
    assert np.array_equal(lr_arr[0] == 0, blocks) and (lr_arr[:, ~blocks] >= 1).all()


def test_a_valid_pixel_never_decodes_to_nodata(tmp_path, capsys):
    """Issue 26, item 5.4: uint16 values 1-39, nodata 0, --range 0,4095: one 8-bit level is 16
    units, so dark valid pixels come back as 0; they used to be written as 0 = nodata. Now a
    valid pixel equal to nodata moves to the nearest other value (1), the masked ones stay 0."""
    arr = np.random.default_rng(0).integers(1, 40, (3, 64, 96)).astype(np.uint16)
    arr[:, 20:36, 30:62] = 3  # dark and flat: its LR is level 0, it decodes to exactly 0 before the nudge
    arr[:, :4, :] = 0  # pixels without data
    src = write_geotiff(tmp_path / "dark.tif", arr, nodata=0)
    code, _, err = run(capsys, "encode", src, "-m", "bicubic-x2", "--range", "0,4095", "-o", tmp_path / "d.rsc")
    assert code == 0, err
    assert run(capsys, "decode", tmp_path / "d.rsc", "-o", tmp_path / "out.tif")[0] == 0
    with rasterio.open(tmp_path / "out.tif") as o:
        out = o.read()
    assert np.array_equal(out == 0, arr == 0)  # nodata kept, no valid pixel became nodata
    assert (out[:, 20:36, 30:62] == 1).mean() > 0.5  # the nudged pixels: the nearest value to 0 (they were 0)
    # the inverse mapping alone: integers either side, floats by one ulp, NaN nodata untouched
    x = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 3).expand(3, 1, 3)
    rec = RasterRecord("uint16", 3, [1, 2, 3], [(0.0, 4095.0)] * 3, nodata=0.0)
    assert from_model(x, rec)[0, 0].tolist() == [1, 2048, 4095]
    rec = RasterRecord("uint16", 3, [1, 2, 3], [(0.0, 65535.0)] * 3, nodata=65535.0)
    assert from_model(x, rec)[0, 0].tolist() == [0, 32768, 65534]
    rec = RasterRecord("int16", 3, [1, 2, 3], [(-100.0, 100.0)] * 3, nodata=0.0)
    assert from_model(torch.tensor([0.499, 0.5, 0.501]).reshape(1, 1, 3).expand(3, 1, 3), rec)[0, 0].tolist() == [-1, 1, 1]
    rec = RasterRecord("float32", 3, [1, 2, 3], [(-1.0, 1.0)] * 3, nodata=-1.0)
    low = from_model(x, rec)[0, 0, 0]
    assert low > -1.0 and low == np.nextafter(np.float32(-1.0), np.float32(0))
    rec = RasterRecord("float32", 3, [1, 2, 3], [(0.0, 1.0)] * 3, nodata=None)
    assert from_model(x, rec)[0, 0].tolist() == [0.0, 0.5, 1.0]


def test_containers_from_before_the_mask_still_decode(tmp_path):
    """A raster record without a mask (record version 1: what refscale wrote before nodata was
    masked) reads as before: same bytes, no mask, pixels mapped back as they are."""
    src = write_geotiff(tmp_path / "n.tif", scene()[:3], nodata=0)
    img = read_raster(src)
    old_record = RasterRecord(**{**vars(img.record), "mask": None})
    packet = pipeline.encode(zoo.load("bicubic-x2"), raster.RasterImage(img.tensor, old_record))
    data = packet.to_bytes()
    import zlib

    start = len(data) - read_header(data).raster_length
    assert json.loads(zlib.decompress(data[start:]))["v"] == 1 and set(json.loads(zlib.decompress(data[start:]))) == \
        {"v", "dtype", "band_count", "bands", "descriptions", "ranges", "rule", "nodata", "crs", "transform"}
    q = Packet.from_bytes(data)
    assert q.raster.mask is None and q.raster == old_record
    raster.write_decoded(pipeline.decode(zoo.load("bicubic-x2"), q), tmp_path / "out.tif", q.raster)
    with rasterio.open(tmp_path / "out.tif") as o:
        assert o.nodata == 0 and o.read().shape == (3, 40, 48)


def test_greyscale_and_per_band_masks(tmp_path):
    arr = scene(border=2)[:3]
    arr[2, 20, 20] = 0  # nodata in one band only: three planes, that band alone restored
    img = read_raster(write_geotiff(tmp_path / "p.tif", arr, nodata=0))
    assert img.record.mask.planes == 3 and img.record.mask.rows()[2, 20, 20] and not img.record.mask.rows()[0, 20, 20]
    back = raster.restore_nodata(from_model(img.tensor, img.record), img.record.mask.rows(), img.record)
    assert back[2, 20, 20] == 0 and back[0, 20, 20] == arr[0, 20, 20]
    with pytest.warns(UserWarning, match="greyscale"):
        grey = read_raster(tmp_path / "p.tif", bands=[3])
    model = zoo.load("bicubic-x2")
    out = from_model(pipeline.decode(model, pipeline.encode(model, grey)), grey.record)
    raster.restore_nodata(out, grey.record.mask.rows(), grey.record)
    assert grey.record.mask.planes == 1 and np.array_equal(out[0] == 0, arr[2] == 0)
    x = torch.zeros(1, 3, 4, 5)
    x[..., 1:, 1:] = torch.arange(12.0).reshape(3, 4)
    m = np.zeros((1, 1, 4, 5), bool)
    m[..., 0, :] = m[..., :, 0] = True
    filled = raster.fill(x.clone(), m)
    assert torch.equal(filled[..., 1:, 1:], x[..., 1:, 1:]) and filled[0, 0, 0, 0] == 0 and filled[0, 1, 0, 3] == 2
    assert torch.equal(raster.fill(x.clone(), np.ones((1, 1, 4, 5), bool)), torch.zeros(1, 3, 4, 5))


# ----------------------------------------------------------------------------- windowed scenes
@pytest.mark.parametrize("model_name", ["bicubic-x2", "toyref"])
def test_windowed_path_equals_the_in_memory_path(tmp_path, monkeypatch, model_name):
    """A scene read and written window by window (RasterScene, TiffSink) gives the same record,
    the same container bytes and the same decoded file as the in-memory path, bit for bit:
    odd size (padding), a nodata border and hole, tiles, strips of the streaming passes that
    do not line up with the tiles, and (toyref) a uint16 reference read window by window too."""
    monkeypatch.setattr(raster, "STRIP_ROWS", 7)
    arr = scene(101, 117, seed=4, border=4)[:3]
    arr[:, 50:60, 70:75] = 0
    src = write_geotiff(tmp_path / "big.tif", arr, nodata=0)
    ref_path = write_geotiff(tmp_path / "ref.tif", scene(101, 117, seed=5, border=0)[:3], nodata=None)
    model = ToyRef() if model_name == "toyref" else zoo.load(model_name)
    ref = ref_path if model.needs_reference else None
    whole, lazy = read_raster(src), read_raster(src, windowed=True, progress=True)
    assert isinstance(lazy, raster.RasterScene) and lazy.record == whole.record and lazy.record.mask is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the windowed path warns that it does not register
        a = pipeline.encode(model, whole, ref, tile=32, overlap=8, register=False, verify=False)
        b = pipeline.encode(model, lazy, ref, tile=32, overlap=8)
    assert a.to_bytes() == b.to_bytes()
    packet = Packet.from_bytes(a.to_bytes())
    raster.write_decoded(pipeline.decode(model, packet, ref), tmp_path / "mem.tif", packet.raster)
    sink = raster.TiffSink(tmp_path / "win.tif", packet.raster, packet.size, packet.padded_size)
    assert pipeline.decode(model, packet, ref, sink=sink) is None
    sink.close()
    with rasterio.open(tmp_path / "mem.tif") as m, rasterio.open(tmp_path / "win.tif") as w:
        assert np.array_equal(m.read(), w.read()) and (m.crs, m.transform, m.nodata) == (w.crs, w.transform, w.nodata)
        assert w.descriptions == m.descriptions and (w.read() == 0).sum() == (arr == 0).sum()
    with pytest.raises(InputError, match="percentile"):
        read_raster(src, windowed=True, value_range="p2,98")


def test_cli_decodes_large_scenes_window_by_window(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(raster, "WINDOWED_PIXELS", 1000)  # every scene of this test is "large"
    src = write_geotiff(tmp_path / "s.tif", scene(40, 48)[:3])
    assert run(capsys, "encode", src, "-m", "bicubic-x2", "-o", tmp_path / "s.rsc")[0] == 0
    calls = []
    real = raster.TiffSink.put
    monkeypatch.setattr(raster.TiffSink, "put", lambda self, *a: calls.append(1) or real(self, *a))
    for cog in ([], ["--cog"]):
        out = tmp_path / f"out{len(cog)}.tif"
        code, _, err = run(capsys, "decode", tmp_path / "s.rsc", "-o", out, *cog)
        assert code == 0, err
        with rasterio.open(out) as o, rasterio.open(src) as i:
            assert o.crs == i.crs and o.transform == i.transform and np.array_equal(o.read() == 0, i.read() == 0)
            assert (o.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG") == bool(cog)
    assert calls and not list(tmp_path.glob(".*tmp*"))


def test_batch_decode_keeps_a_rasters_format(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    write_geotiff(tmp_path / "g.tif", scene()[:3])
    write_image(synthetic_image(16, 16), tmp_path / "p.png")
    for name in ("g.tif", "p.png"):
        assert run(capsys, "encode", tmp_path / name, "-m", "bicubic-x2", "-o", tmp_path / "in" / f"{name[0]}.rsc")[0] == 0
    code, _, err = run(capsys, "decode", tmp_path / "in", "-o", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g.tif", "p.png"]
    with rasterio.open(tmp_path / "out" / "g.tif") as g:
        assert g.crs == CRS_UTM and g.dtypes[0] == "uint16"


# ----------------------------------------------------------------------------- bands
def test_more_than_three_bands_needs_bands_and_lists_them(tmp_path, capsys):
    src = write_geotiff(tmp_path / "four.tif", scene())
    code, _, err = run(capsys, "encode", src, "-m", "bicubic-x2", "-o", tmp_path / "x.rsc")
    assert code == 2 and "4 bands" in err and "1 B02, 2 B03, 3 B04, 4 B08" in err and "--bands" in err
    assert "alpha" not in err and not (tmp_path / "x.rsc").exists()
    with pytest.raises(InputError, match="4 bands"):  # never called alpha, also on the 8-bit read path
        read_image(src)
    with pytest.raises(InputError, match="band 5 does not exist"):
        read_raster(src, bands=[5, 3, 2])
    code, _, err = run(capsys, "encode", src, "-m", "bicubic-x2", "--bands", "4,3", "-o", tmp_path / "x.rsc")
    assert code == 2 and "three bands" in err
    img = read_raster(src, bands="4,3,2")
    assert img.record.bands == [4, 3, 2] and img.record.descriptions == ["B08", "B04", "B03"]
    lo, hi = img.record.ranges[0]
    expect = np.clip((scene()[3].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    assert torch.equal(img.tensor[0, 0], torch.from_numpy(expect))
    thirteen = write_geotiff(tmp_path / "s2.tif", np.repeat(scene(), 4, axis=0)[:13], descriptions=[f"B{i}" for i in range(1, 14)])
    with pytest.raises(InputError, match="13 bands .*B13"):
        read_raster(thirteen)
    with pytest.warns(UserWarning, match="greyscale"):
        grey = read_raster(thirteen, bands=[8])
    assert grey.tensor.shape == (1, 3, 40, 48) and len(grey.record.bands) == 1
    assert from_model(grey.tensor, grey.record).shape == (1, 40, 48)


def test_reference_is_read_with_the_images_bands_and_mapping(tmp_path):
    torch.manual_seed(0)
    src = write_geotiff(tmp_path / "new.tif", scene(seed=1))
    ref = write_geotiff(tmp_path / "old.tif", scene(seed=2))
    model = ToyRef()
    img = read_raster(src, bands=[3, 2, 1])
    packet = pipeline.encode(model, img, ref, register=False)
    assert packet.raster.bands == [3, 2, 1]
    q = Packet.from_bytes(packet.to_bytes())
    hr = pipeline.decode(model, q, ref)  # the same reference file: fingerprint accepted
    assert hr.shape == (1, 3, 40, 48)
    other = write_geotiff(tmp_path / "other.tif", scene(seed=3))
    with pytest.raises(InputError, match="not the one"):
        pipeline.decode(model, q, other)


# ----------------------------------------------------------------------------- without the extra
def test_missing_geo_extra_names_it(tmp_path, capsys, monkeypatch):
    src = write_geotiff(tmp_path / "g.tif", scene()[:3])
    monkeypatch.setattr(raster, "have_rasterio", lambda: False)
    code, _, err = run(capsys, "encode", src, "-m", "bicubic-x2", "-o", tmp_path / "x.rsc")
    assert code == 2 and "refscale[geo]" in err and "GeoTIFF" in err and not (tmp_path / "x.rsc").exists()
    monkeypatch.undo()
    assert run(capsys, "encode", src, "-m", "bicubic-x2", "-o", tmp_path / "x.rsc")[0] == 0
    monkeypatch.setattr(raster, "have_rasterio", lambda: False)
    code, _, err = run(capsys, "decode", tmp_path / "x.rsc", "-o", tmp_path / "out.tif")
    assert code == 2 and "refscale[geo]" in err and not (tmp_path / "out.tif").exists()
    code, _, err = run(capsys, "decode", tmp_path / "x.rsc", "-o", tmp_path / "out.png")  # 16-bit PNG: allowed, warned
    assert code == 0 and "holds no georeferencing" in err


# ----------------------------------------------------------------------------- plain images unchanged
def test_png_and_jpeg_behaviour_unchanged(tmp_path):
    model = zoo.load("bicubic-x2")
    x = synthetic_image(20, 26)
    for name in ("a.png", "a.jpg", "a.tif"):
        write_image(x, tmp_path / name)
        img = read_raster(tmp_path / name)
        assert img.record is None and torch.equal(img.tensor, read_image(tmp_path / name))
        via_path = pipeline.encode(model, tmp_path / name).to_bytes()
        via_tensor = pipeline.encode(model, read_image(tmp_path / name)).to_bytes()
        assert via_path == via_tensor and read_header(via_path).version == 2
    g = np.zeros((6, 8), np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="greyscale"):
        assert read_raster(tmp_path / "g.png").record is None


# ----------------------------------------------------------------------------- small fixes
@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_honour_the_umask(tmp_path, capsys, mask):
    write_image(synthetic_image(16, 16), tmp_path / "a.png")
    write_geotiff(tmp_path / "g.tif", scene()[:3])
    old = os.umask(mask)
    try:
        assert run(capsys, "encode", tmp_path / "a.png", "-m", "bicubic-x2", "-o", tmp_path / "a.rsc", "--lr-out", tmp_path / "lr.png")[0] == 0
        assert run(capsys, "decode", tmp_path / "a.rsc", "-o", tmp_path / "out.png")[0] == 0
        assert run(capsys, "encode", tmp_path / "g.tif", "-m", "bicubic-x2", "-o", tmp_path / "g.rsc", "--lr-out", tmp_path / "glr.tif")[0] == 0
        assert run(capsys, "decode", tmp_path / "g.rsc", "-o", tmp_path / "g_out.tif")[0] == 0
    finally:
        os.umask(old)
    for name in ("a.rsc", "lr.png", "out.png", "g.rsc", "glr.tif", "g_out.tif"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_codec_hint_names_the_extra(monkeypatch):
    from refscale import codecs

    monkeypatch.setattr(codecs, "_probe", lambda name: False)
    with pytest.raises(InputError, match=r"refscale\[codecs\]"):
        codecs.require("jxl")


# ----------------------------------------------------------------------------- the record
def record(**kw) -> RasterRecord:
    base = dict(dtype="uint16", band_count=4, bands=[4, 3, 2], ranges=[(10.0, 3000.0)] * 3,
                descriptions=["NIR", None, "grün"], rule="p0.1,99.9", nodata=float("nan"),
                crs=CRS_UTM.to_wkt(), transform=tuple(TRANSFORM)[:6])
    base.update(kw)
    return RasterRecord(**base)


def test_record_round_trip_and_refusals():
    r = record()
    back = RasterRecord.from_bytes(r.to_bytes())
    assert back.bands == [4, 3, 2] and back.ranges == r.ranges and back.descriptions == r.descriptions
    assert np.isnan(back.nodata) and back.crs == r.crs and back.transform == r.transform
    for bad in (dict(dtype="complex64"), dict(bands=[5, 3, 2]), dict(bands=[1, 2]), dict(ranges=[(3.0, 3.0)] * 3),
                dict(transform=(0.0,) * 6), dict(descriptions=["x"])):
        with pytest.raises(ContainerError, match="raster record"):
            record(**bad).to_bytes()
    import zlib

    for text in (b"[]", b'{"v":1}', b"not json", json.dumps({**json.loads(zlib.decompress(r.to_bytes())), "extra": 1}).encode(),
                 json.dumps({**json.loads(zlib.decompress(r.to_bytes())), "v": 2}).encode()):
        with pytest.raises(ContainerError):
            RasterRecord.from_bytes(zlib.compress(text))
    with pytest.raises(ContainerError, match="zlib"):
        RasterRecord.from_bytes(r.to_bytes()[:-3])
    masked = record(nodata=0.0, mask=raster.Mask.from_bool(np.eye(5, 6, dtype=bool)[None]))
    blob = masked.to_bytes()
    assert RasterRecord.from_bytes(blob) == masked and json.loads(zlib.decompress(blob))["v"] == 2
    json_end = len(blob) - json.loads(zlib.decompress(blob))["mask"]["length"]
    for bad in (blob[:-1], blob + b"x", blob[:json_end], blob[:json_end] + zlib.compress(b"\0" * 4),
                r.to_bytes() + blob[json_end:]):
        with pytest.raises(ContainerError, match="raster record"):
            RasterRecord.from_bytes(bad)
    good = json.loads(zlib.decompress(r.to_bytes()))
    for key, value in (("band_count", 10 ** 400), ("ranges", [[0, 10 ** 400]] * 3), ("nodata", 10 ** 300),
                       ("transform", [1e300, 0, 0, 0, 1e300, 0]), ("bands", "4,3,2"), ("descriptions", None)):
        with pytest.raises(ContainerError, match="raster record"):
            RasterRecord.from_bytes(zlib.compress(json.dumps({**good, key: value}).encode()))


def test_to_model_of_uint8_equals_the_8bit_path():
    a = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    t = to_model(a, [(0.0, 255.0)] * 3, "a")
    assert torch.equal(t, torch.from_numpy(np.moveaxis(a, 0, -1).astype(np.float32) / 255.0).permute(2, 0, 1)[None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = RasterRecord("uint8", 3, [1, 2, 3], [(0.0, 255.0)] * 3)
        assert np.array_equal(from_model(t, rec), a)


def test_multiband_tiff_without_rasterio(tmp_path, monkeypatch):
    """No geo extra: a plain (not georeferenced) 13-band TIFF is read by imagecodecs, with the same
    band rules (no stray libtiff line, no 'cannot identify image file')."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("imagecodecs")
    a = np.repeat(scene(border=0), 4, axis=0)[:13]
    for planar in ("contig", "separate"):
        path = tmp_path / f"{planar}.tif"
        tifffile.imwrite(path, a if planar == "separate" else np.ascontiguousarray(np.moveaxis(a, 0, -1)),
                         photometric="minisblack", planarconfig=planar)
        monkeypatch.setattr(raster, "have_rasterio", lambda: False)
        with pytest.raises(InputError, match="13 bands"):
            read_raster(path)
        img = read_raster(path, bands=[4, 3, 2])
        lo, hi = img.record.ranges[0]
        assert img.record.crs is None and img.record.band_count == 13
        assert torch.equal(img.tensor[0, 0], torch.from_numpy(np.clip((a[3].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)))
