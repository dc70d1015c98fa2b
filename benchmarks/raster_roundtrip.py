"""What the intensity mapping of 12/16-bit rasters costs (issue 16, item 2; refscale/io/raster.py).

    python -m benchmarks raster_roundtrip [--data ../shared/data/oscd] [--city dubai] [--models bicubic-x2 refscale-x2]
    python -m benchmarks raster_roundtrip --nodata [--city dubai] [--models bicubic-x2 refscale-x2]

Two rasters, written as GeoTIFFs in a temporary folder and read back through
``refscale.io.raster.read_raster`` exactly as ``refscale encode`` reads them:

1. **synthetic 12-bit**: 512 x 512, 3 bands of one scene, values 0..4095 (smooth fields, edges,
   sensor noise, 0.1% saturated pixels at 4095), UTM 31N, 10 m pixels;
2. **an OSCD test city as uint16 reflectance-like values**: ``img2.png`` (8-bit, B04/B03/B02
   linearly stretched) turned into ``r = round(3000 * ((v + u) / 256) ** 2)`` with ``u`` uniform
   in [0, 1) (seed 0; sub-8-bit detail as a real 12-bit sensor has, a gamma-2 curve back from
   the stretched display values to 0..3000 reflectance x 10^4), in EPSG:4326 with the city's
   real footprint (``<city>.geojson``) as the geotransform. ``img1.png`` the same way (seed 1)
   is the reference.

For each mapping rule (``--range``) the table gives what the mapping alone costs: through the
float model domain (only clipping outside [lo, hi] loses anything) and through 8 bits (the
domain of the stored LR: ``refscale.format.rounding.round_8bit``), as RMSE and PSNR on the original scale
(peak 4095 for 12-bit, 10000 for reflectance) and the fraction of clipped pixels. Then the
whole chain for each model (encode, PNG LR, decode, inverse mapping): PSNR on the original
scale over the whole image, seed 0, temperature 1 (models without a reference on the synthetic
raster, which has none; on the city, refscale-x2 with img1 as the reference).

``--nodata`` (item 4): the city with pixels without data, once as uint16 with nodata 0 (a
diagonal swath edge covering the left ~20% of the scene, as at the edge of a Sentinel-2 orbit,
plus 6 square holes of 15-31 px) and once as float32 reflectance (value / 10000) with NaN in the
same places. For each fill rule (``refscale.io.raster.FILL``: nearest, mean, zero) and without the
mask (the behaviour before item 4: nodata mapped like data, NaN as 0): PSNR on the original
scale over the valid pixels and over the valid pixels within 4 px of a pixel without data (where
a poor fill leaks in), and whether the pixels without data come back exactly (nodata / NaN) and
no other pixel becomes one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks import store

from refscale import pipeline, zoo
from refscale.io import raster
from refscale.format.container import Packet
from refscale.format.rounding import round_8bit

RULES = ["j0,100", "p0,100", "p0.1,99.9", "p1,99", "p2,98"]
CHAIN_RULES = ["j0,100", "p0,100", "p0.1,99.9", "p2,98", "fixed"]  # the last: 0..4095 (12-bit) or 0..10000


def write_tif(path: Path, arr: np.ndarray, crs, transform, descriptions=("B04", "B03", "B02")) -> Path:
    import rasterio

    b, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=b, dtype=arr.dtype.name, crs=crs,
                       transform=transform) as dst:
        dst.write(arr)
        for i, d in enumerate(descriptions, 1):
            dst.set_band_description(i, d)
    return path


def synthetic_12bit(n: int = 512) -> np.ndarray:
    """Bands that share one scene (as the bands of a real sensor do: per-band gain and offset, a
    little band-specific detail), smooth fields, block edges, sensor noise of ~12 DN and 0.1%
    saturated pixels (4095). Bands with unrelated structure are far outside what the learned models
    saw in training (IRN x2 falls to 15 dB on such an image in the plain 8-bit path), so they would
    measure the model, not the mapping."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:n, 0:n] / n
    scene = 0.35 + 0.2 * np.sin(7 * xx + 3 * yy) + 0.15 * np.cos(11 * yy * (1 + xx))
    scene += 0.15 * (((xx * 9).astype(int) + (yy * 6).astype(int)) % 2)  # fields / blocks
    out = []
    for k, (gain, offset) in enumerate([(0.55, 0.04), (0.5, 0.06), (0.45, 0.08)]):
        f = gain * scene + offset + 0.02 * np.sin(23 * xx * (k + 1) + 17 * yy)
        out.append(4095 * np.clip(f, 0, 1) + rng.normal(0, 12, (n, n)))
    arr = np.clip(np.rint(np.stack(out)), 0, 4095).astype(np.uint16)
    sat = rng.random((n, n)) < 0.001
    arr[:, sat] = 4095
    return arr


def reflectance_like(png: Path, seed: int) -> np.ndarray:
    v = np.asarray(Image.open(png).convert("RGB")).astype(np.float64)
    u = np.random.default_rng(seed).random(v.shape)
    r = np.rint(3000 * ((v + u) / 256) ** 2)
    return np.ascontiguousarray(np.moveaxis(r, -1, 0)).astype(np.uint16)


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def mapping_rows(path: Path, arr: np.ndarray, peak: float, fixed: str) -> list[dict]:
    rows = []
    for rule in RULES + [fixed]:
        img = raster.read_raster(path, value_range=rule)
        rec = img.record
        clipped = np.mean([((arr[c] < lo) | (arr[c] > hi)).mean() for c, (lo, hi) in enumerate(rec.ranges)])
        back_f = raster.from_model(img.tensor, rec)
        back_8 = raster.from_model(round_8bit(img.tensor), rec)
        rows.append({"rule": rec.rule, "ranges": [[round(v) for v in r] for r in rec.ranges], "clipped": clipped,
                     "rmse_float": rmse(arr, back_f), "psnr_float": psnr(arr, back_f, peak),
                     "rmse_8bit": rmse(arr, back_8), "psnr_8bit": psnr(arr, back_8, peak),
                     "step": float(np.mean([(hi - lo) / 255 for lo, hi in rec.ranges]))})
    return rows


def print_rows(title: str, rows: list[dict], peak: float) -> None:
    print(f"\n{title} (PSNR peak {peak:g})\n")
    print("| --range | lo..hi per band | clipped px | RMSE, float domain | PSNR, float | 8-bit step | RMSE through 8 bits | PSNR through 8 bits |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ranges = " / ".join(f"{lo}..{hi}" for lo, hi in r["ranges"])
        print(f"| `{r['rule']}` | {ranges} | {100 * r['clipped']:.2f}% | {r['rmse_float']:.2f} | {r['psnr_float']:.2f} dB | "
              f"{r['step']:.1f} | {r['rmse_8bit']:.2f} | {r['psnr_8bit']:.2f} dB |")


def chain(models, path, ref, arr, peak, fixed, what="the synthetic 12-bit raster") -> list[dict]:
    """encode (PNG LR) -> decode (seed 0, t = 1) -> inverse mapping, for each model and mapping rule."""
    h, w = arr.shape[1:]
    print(f"\nWhole chain on {what} (PNG LR, seed 0, t = 1; PSNR on the original scale, peak {peak:g}):\n")
    print("| model | --range | bytes | bpp | PSNR (original scale) | PSNR of the mapping alone (8 bits) | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for name in models:
        model = zoo.load(name)
        for rule in CHAIN_RULES[:-1] + [fixed]:
            img = raster.read_raster(path, value_range=rule)
            t0 = time.perf_counter()
            packet = pipeline.encode(model, img, ref if model.needs_reference else None)
            data = packet.to_bytes()
            q = Packet.from_bytes(data)
            hr = pipeline.decode(model, q, ref if model.needs_reference else None, seed=0)
            sec = time.perf_counter() - t0
            back = raster.from_model(hr, q.raster)
            alone = raster.from_model(round_8bit(img.tensor), img.record)
            row = {"model": name, "rule": q.raster.rule, "bytes": len(data), "bpp": len(data) * 8 / (w * h),
                   "psnr": psnr(arr, back, peak), "psnr_mapping": psnr(arr, alone, peak), "seconds": sec}
            rows.append(row)
            print(f"| {name} | `{row['rule']}` | {row['bytes']:,} | {row['bpp']:.3f} | {row['psnr']:.2f} dB | "
                  f"{row['psnr_mapping']:.2f} dB | {sec:.1f} |")
    return rows


def load_city(data: Path, name: str):
    """The city's img2 / img1 as uint16 reflectance-like arrays and its footprint's geotransform (EPSG:4326)."""
    from rasterio.transform import from_bounds

    city = data / name
    new, old = reflectance_like(city / "img2.png", 0), reflectance_like(city / "img1.png", 1)
    geo = json.loads((city / f"{name}.geojson").read_text())
    ring = np.array(geo["features"][0]["geometry"]["coordinates"][0])
    (x0, y0), (x1, y1) = ring.min(0), ring.max(0)
    _, h, w = new.shape
    return city, new, old, from_bounds(x0, y0, x1, y1, w, h)


def with_holes(arr: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels without data of the --nodata study (module doc)."""
    _, h, w = arr.shape
    yy, xx = np.mgrid[0:h, 0:w]
    bad = xx + 0.3 * yy < 0.2 * w
    rng = np.random.default_rng(2)
    for _ in range(6):
        r, y, x = rng.integers(7, 16), rng.integers(40, h - 40), rng.integers(w // 3, w - 40)
        bad[y - r:y + r + 1, x - r:x + r + 1] = True
    return bad


def nodata_study(models, tmp: Path, new: np.ndarray, old: np.ndarray, crs, transform) -> list[dict]:
    from scipy.ndimage import binary_dilation

    bad = with_holes(new)
    ring = binary_dilation(bad, np.ones((9, 9), bool)) & ~bad
    u16 = np.where(bad, 0, np.maximum(new, 1)).astype(np.uint16)  # valid values start at 1: 0 is nodata
    f32 = np.where(bad, np.nan, new / 10000.0).astype(np.float32)
    cases = {"uint16, nodata 0": (u16, 0, 10000.0, old), "float32, NaN": (f32, None, 1.0, (old / 10000.0).astype(np.float32))}
    print(f"\nNodata and NaN: {int(bad.sum()):,} of {bad.size:,} pixels without data ({100 * bad.mean():.1f}%), "
          f"{int(ring.sum()):,} valid pixels within 4 px of them\n")
    print("| data | model | fill | PSNR, valid pixels | PSNR, valid within 4 px | no-data pixels back exactly | valid pixels made no-data |")
    print("|---|---|---|---:|---:|---|---:|")
    rows = []
    for label, (arr, nodata, peak, ref_arr) in cases.items():
        import rasterio

        path, ref = tmp / f"holes-{arr.dtype.name}.tif", tmp / f"holes-ref-{arr.dtype.name}.tif"
        for p_, a_, nd in ((path, arr, nodata), (ref, ref_arr, None)):
            with rasterio.open(p_, "w", driver="GTiff", width=a_.shape[2], height=a_.shape[1], count=3,
                               dtype=a_.dtype.name, crs=crs, transform=transform, nodata=nd) as dst:
                dst.write(a_)
        img = raster.read_raster(path)
        for name in models:
            model = zoo.load(name)
            r = ref if model.needs_reference else None
            for fill in ("nearest", "mean", "zero", "no mask"):
                raster.FILL = fill if fill != "no mask" else "nearest"
                src = img if fill != "no mask" else raster.RasterImage(img.tensor, dataclasses.replace(img.record, mask=None))
                packet = Packet.from_bytes(pipeline.encode(model, src, r, register=False).to_bytes())
                hr = pipeline.decode(model, packet, r, seed=0)
                back = raster.from_model(hr, img.record)
                if fill != "no mask":
                    raster.restore_nodata(back, img.record.mask.rows(), img.record)
                gone = np.isnan(back) if nodata is None else back == nodata
                valid = ~bad[None].repeat(3, 0)
                vals = lambda m: (np.nan_to_num(arr[m]), np.nan_to_num(back[m]))  # noqa: E731
                row = {"data": label, "model": name, "fill": fill, "psnr_valid": psnr(*vals(valid), peak),
                       "psnr_ring": psnr(*vals(ring[None].repeat(3, 0)), peak),
                       "restored": bool(gone[:, bad].all()), "made_nodata": int(gone[valid].sum())}
                rows.append(row)
                print(f"| {label} | {name} | {fill} | {row['psnr_valid']:.2f} dB | {row['psnr_ring']:.2f} dB | "
                      f"{'yes' if row['restored'] else 'no'} | {row['made_nodata']} |", flush=True)
    raster.FILL = "nearest"
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd")
    ap.add_argument("--city", default="dubai")
    ap.add_argument("--models", nargs="*", default=["bicubic-x2", "refscale-x2"])
    ap.add_argument("--synthetic-models", nargs="*", default=["bicubic-x2", "irn-x2"])
    ap.add_argument("--json", type=Path, default=store.default_path("raster_roundtrip"), help="results JSON (default out/bench/raster_roundtrip.json)")
    ap.add_argument("--nodata", action="store_true", help="only the nodata / NaN study (module doc)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.nodata:
            city, new, old, transform = load_city(args.data, args.city)
            out["nodata"] = nodata_study(args.models, tmp, new, old, CRS.from_epsg(4326), transform)
            if args.json:
                store.save(out, args.json, default=float)
            return
        syn = synthetic_12bit()
        p = write_tif(tmp / "synthetic12.tif", syn, CRS.from_epsg(32631), from_origin(399960, 5000040, 10, 10))
        out["synthetic_12bit"] = mapping_rows(p, syn, 4095, "0,4095")
        print_rows("Synthetic 12-bit raster, 512 x 512 x 3, values 0..4095", out["synthetic_12bit"], 4095)
        out["synthetic_chain"] = chain(args.synthetic_models, p, None, syn, 4095, "0,4095")

        city, new, old, transform = load_city(args.data, args.city)
        _, h, w = new.shape
        (x0, y1), (x1, y0) = transform * (0, 0), transform * (w, h)
        pn = write_tif(tmp / "new.tif", new, CRS.from_epsg(4326), transform)
        pr = write_tif(tmp / "ref.tif", old, CRS.from_epsg(4326), transform)
        out["oscd"] = mapping_rows(pn, new, 10000, "0,10000")
        print_rows(f"OSCD {args.city} img2 as uint16 reflectance-like, {w} x {h} x 3 (values {new.min()}..{new.max()}), "
                   f"EPSG:4326 footprint {x0:.4f},{y0:.4f} .. {x1:.4f},{y1:.4f}", out["oscd"], 10000)

        out["chain"] = chain(args.models, pn, pr, new, 10000, "0,10000", args.city)
    if args.json:
        store.save(out, args.json, default=float)


if __name__ == "__main__":
    main()
