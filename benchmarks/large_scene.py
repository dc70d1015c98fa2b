"""Large scenes: speed and peak memory of encode + decode, and what tiling and bf16 cost.

    python -m benchmarks large_scene [--models bicubic-x2,irn-x2,refscale-x2] [--height 3456 --width 6264]
                                     [--check-size 1024] [--skip-check] [--skip-large] [--threads N]
    python -m benchmarks large_scene --geotiff 4000,8000,20000 --models bicubic-x2 [--in-memory-too] [--threads N]

Two parts, per model (shipped weights when present; otherwise a random model whose ActNorms are
initialised on the image and whose parameters are perturbed, so no coupling is the identity;
such a model is fine for timing and for *differences* in PSNR, not for absolute quality):

1. **Settings, on a check-size x check-size synthetic revisit pair** (``refscale.demo``): encode
   and decode with the plain setting (fp32, one piece), fp32 tiled, bf16 (the default on a CPU with
   native bf16, `precision="auto"`; one piece at this size) and bf16 tiled (as large scenes run), printing megapixels/s of encode and
   decode, the CPU-time speed-up over plain fp32, and PSNR-Y (crop = scale) of the decoded image at
   temperature 0 and 1 (seed 0). The tiled-vs-untiled PSNR difference must be <= 0.05 dB.
   "tiled" uses cores of half the image (the product's 1024-px default would not tile it).
2. **The full scene** (default 6264 x 3456, the largest RefScale test scene): a synthetic pair
   written to PNG files, then in a *fresh process* per model: read, encode (default settings:
   automatic tiling, default precision or ``--precision``), serialise, parse, decode; wall time, megapixels/s,
   container bytes and bpp, PSNR-Y, and the process's peak RSS (``getrusage``), which must
   be <= 3 GiB.

Timing: wall-clock megapixels/s, and the process's CPU seconds (``time.process_time``, all
threads). On a shared machine wall time depends on what else runs, so speed-ups are computed
from CPU time; the load average is printed at the start and the end.

3. **``--geotiff N[,N...]``: GeoTIFF scenes larger than memory** (issue 16, item 5): for each size
   a synthetic N x N uint16 GeoTIFF (3 bands, reflectance-like 0..10200, UTM 31N, 10 m pixels,
   a nodata swath edge over the left ~10% and a reference GeoTIFF for reference models; above
   4096 x 4096 a 4096 x 4096 synthetic pair tiled with mirroring), written strip by strip; then per model, each phase in a *fresh process*, the file API the CLI uses:
   ``files.encode_file`` (the scene read window by window: ``raster.RasterScene``) and
   ``files.decode_to_file`` (written window by window: ``raster.TiffSink``), with peak RSS and
   wall / CPU time of each phase, container bytes, and PSNR on the 16-bit scale over the valid
   pixels (peak 10000; computed afterwards in strips). ``--in-memory-too`` repeats each size with
   the whole scene in memory (``windowed=False``) for comparison. Parts 1 and 2 are skipped.

CPU heavy (tens of minutes on 2 cores): run it alone, not while tests run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import benchmarks
from benchmarks import store

GIB = 1 << 30


# ----------------------------------------------------------------------------- models and images
def make_model(name: str, hr: torch.Tensor, ref: torch.Tensor | None):
    """Shipped weights if present, else a non-trivial random model (see module doc)."""
    from refscale import zoo
    from refscale.errors import ModelError

    try:
        model = zoo.load(name)
        return model, "shipped weights" if model.num_parameters() else "no parameters"
    except ModelError:
        pass
    torch.manual_seed(0)
    model = zoo.build(name)
    if model.num_parameters() == 0:
        return model.eval(), "no parameters"
    model.train()
    crop = (slice(None), slice(None), slice(0, 128), slice(0, 128))
    with torch.no_grad():
        model.training_losses(hr[crop], None if ref is None else ref[crop])  # ActNorm data-dependent init
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model.eval(), "random init, perturbed"


def synthetic_pair(height: int, width: int, strip: int = 864) -> tuple[np.ndarray, np.ndarray]:
    """A procedural revisit pair (uint8 HxWx3), built in strips of rows to bound memory."""
    from refscale.synthetic import synthetic_revisit_pair

    news, olds = [], []
    for i, y in enumerate(range(0, height, strip)):
        new, old = synthetic_revisit_pair(min(strip, height - y), width, seed=100 + i)
        news.append(new)
        olds.append(old)
    return np.concatenate(news), np.concatenate(olds)


def psnr_y(a: torch.Tensor, b: torch.Tensor, crop: int, rows: int = 512) -> float:
    """PSNR-Y (BasicSR) of two large images, accumulated over row strips to bound memory."""
    from refscale import metrics

    a = a[..., crop:a.shape[-2] - crop, crop:a.shape[-1] - crop]
    b = b[..., crop:b.shape[-2] - crop, crop:b.shape[-1] - crop]
    sse, n = 0.0, 0
    for y in range(0, a.shape[-2], rows):
        pa, pb = a[..., y:y + rows, :], b[..., y:y + rows, :]
        p = float(metrics.psnr(pa, pb, crop_border=0, y_channel=True)[0])
        count = pa.shape[-2] * pa.shape[-1]
        sse += (255.0**2 / 10 ** (p / 10) if np.isfinite(p) else 0.0) * count
        n += count
    return float("inf") if sse == 0 else float(10 * np.log10(255.0**2 * n / sse))


class Clock:
    """Wall and CPU seconds of a ``with`` block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"


def peak_rss() -> int:
    """The process's peak resident memory: VmHWM of its own address space (Linux). Not
    ``getrusage``'s ru_maxrss, which a child started by fork + exec inherits from the forked copy
    of its parent (a parent that had written a large scene made every worker look as large)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ----------------------------------------------------------------------------- part 1: settings
def check_settings(name: str, size: int) -> dict:
    from refscale import pipeline
    from refscale.format.container import Packet
    from refscale.io.image import as_image_tensor

    new, old = synthetic_pair(size, size, strip=size)
    from refscale import zoo

    hr = as_image_tensor(new)
    ref = as_image_tensor(old) if zoo.build(name).needs_reference else None
    model, origin = make_model(name, hr, ref)
    s = model.scale
    tile = min(pipeline.DEFAULT_TILE, size // 2)  # small enough that the check image is really tiled
    mp = size * size / 1e6
    rows = {}
    warm = (slice(None), slice(None), slice(0, 64), slice(0, 64))  # thread pools, oneDNN, imports
    for precision in ("fp32", "bf16"):
        model.decode(model.encode(hr[warm], None if ref is None else ref[warm], precision=precision),
                     None if ref is None else ref[warm])
    print(f"\n{name} ({origin}), {size}x{size}; tiled = cores of {tile} HR px + overlap {pipeline.DEFAULT_OVERLAP_LR * s}; "
          f"'bf16' is the default ('auto') at this size on a CPU with native bf16", flush=True)
    print(f"  {'setting':<14} {'enc MP/s':>9} {'dec MP/s':>9} {'CPU s':>7} {'speed-up':>9} {'PSNR-Y t=0':>11} {'PSNR-Y t=1':>11}  bytes")
    for label, precision, t in (("plain fp32", "fp32", 0), ("fp32 tiled", "fp32", tile),
                                ("bf16", "bf16", None), ("bf16 tiled", "bf16", tile)):
        with Clock() as enc:
            packet = model.encode(hr, ref, tile=t, precision=precision)
            data = packet.to_bytes()
        with Clock() as dec:
            out0 = model.decode(Packet.from_bytes(data), ref, temperature=0.0, seed=0)
        p0 = psnr_y(out0, hr, s)
        p1 = psnr_y(model.decode(Packet.from_bytes(data), ref, temperature=1.0, seed=0), hr, s) if model.stochastic else p0
        row = {"enc_mps": mp / enc.wall, "dec_mps": mp / dec.wall, "wall_s": enc.wall + dec.wall, "cpu_s": enc.cpu + dec.cpu,
               "psnr_t0": p0, "psnr_t1": p1, "bytes": len(data), "precision": packet.precision}
        rows[label] = row
        speedup = rows["plain fp32"]["cpu_s"] / row["cpu_s"]
        print(f"  {label:<14} {row['enc_mps']:>9.3f} {row['dec_mps']:>9.3f} {row['cpu_s']:>7.1f} {speedup:>8.2f}x {p0:>11.4f} {p1:>11.4f}  {len(data):,}"
              + ("" if packet.precision == precision else f"  (model runs {packet.precision})"), flush=True)
    d_tile = abs(rows["bf16 tiled"]["psnr_t0"] - rows["bf16"]["psnr_t0"])
    d_tile32 = abs(rows["fp32 tiled"]["psnr_t0"] - rows["plain fp32"]["psnr_t0"])
    d_bf16 = rows["bf16"]["psnr_t0"] - rows["plain fp32"]["psnr_t0"]
    ok = max(d_tile, d_tile32) <= 0.05
    print(f"  tiled vs untiled: |dPSNR| {d_tile:.4f} dB (bf16), {d_tile32:.4f} dB (fp32) -> {'OK' if ok else 'FAIL'} (<= 0.05 dB); "
          f"bf16 vs fp32: {d_bf16:+.4f} dB; default vs plain: "
          f"{rows['plain fp32']['cpu_s'] / rows['bf16']['cpu_s']:.2f}x less CPU time (load {load()})", flush=True)
    return {"model": name, "origin": origin, "size": size, "settings": rows, "tile_dpsnr": max(d_tile, d_tile32),
            "bf16_dpsnr": d_bf16, "ok": ok}


# ----------------------------------------------------------------------------- part 2: full scene (worker process)
def worker(name: str, hr_path: str, ref_path: str, threads: int, precision: str | None = None) -> None:
    torch.set_num_threads(threads)
    from refscale.format.container import Packet
    from refscale.io.image import read_image

    t_start = time.perf_counter()
    from refscale import zoo

    hr = read_image(hr_path)
    ref = read_image(ref_path) if zoo.build(name).needs_reference else None
    model, origin = make_model(name, hr, ref)
    t_read = time.perf_counter() - t_start
    h, w = hr.shape[-2:]
    with Clock() as enc:
        packet = model.encode(hr, ref, precision=precision)
        data = packet.to_bytes()
    with Clock() as dec:
        out = model.decode(Packet.from_bytes(data), ref, seed=0, precision=precision)
    rss = peak_rss()
    result = {
        "model": name, "origin": origin, "size": [h, w], "read_s": t_read, "encode_s": enc.wall, "decode_s": dec.wall,
        "encode_cpu_s": enc.cpu, "decode_cpu_s": dec.cpu, "enc_mps": h * w / 1e6 / enc.wall, "dec_mps": h * w / 1e6 / dec.wall, "bytes": len(data), "bpp": len(data) * 8 / (h * w),
        "tiles": packet.tiles, "precision": packet.precision, "peak_rss_gib": rss / GIB,
        "psnr_y": psnr_y(out, hr, model.scale),
    }
    print("RESULT " + json.dumps(result), flush=True)


def full_scene(names: list[str], height: int, width: int, threads: int, precision: str | None = None) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="refscale-large-") as tmp:
        from refscale.io.image import write_image

        t0 = time.perf_counter()
        new, old = synthetic_pair(height, width)
        write_image(new, Path(tmp) / "hr.png")
        write_image(old, Path(tmp) / "ref.png")
        del new, old
        print(f"\nfull scene: synthetic {width}x{height} pair written in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"  {'model':<14} {'encode s':>9} {'decode s':>9} {'enc MP/s':>9} {'dec MP/s':>9} {'CPU s':>7} {'peak RSS':>9} "
              f"{'bpp':>7} {'PSNR-Y':>8}  tiles / precision / weights")
        for name in names:
            cmd = benchmarks.command("large_scene", "--worker", name, Path(tmp) / "hr.png", Path(tmp) / "ref.png",
                                     "--threads", threads, *(["--precision", precision] if precision else []))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=benchmarks.env())
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"  {name:<14} FAILED (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(lines[-1][7:])
            r["rss_ok"] = r["peak_rss_gib"] <= 3.0
            results.append(r)
            print(f"  {name:<14} {r['encode_s']:>9.1f} {r['decode_s']:>9.1f} {r['enc_mps']:>9.3f} {r['dec_mps']:>9.3f} "
                  f"{r['encode_cpu_s'] + r['decode_cpu_s']:>7.0f} "
                  f"{r['peak_rss_gib']:>7.2f}Gi {r['bpp']:>7.3f} {r['psnr_y']:>8.2f}  {r['tiles']} / {r['precision']} / {r['origin']}"
                  f"{'' if r['rss_ok'] else '  RSS > 3 GiB!'}", flush=True)
    return results



# ----------------------------------------------------------------------------- part 3: GeoTIFF scenes larger than memory
def write_scene(path: Path, ref_path: Path | None, n: int, strip: int = 1024, base: int = 4096) -> None:
    """The synthetic uint16 GeoTIFF (and reference) of part 3, written strip by strip. A scene
    larger than ``base`` tiles a ``base x base`` synthetic pair, mirrored at every seam (the
    generator costs about 4 s per Mpx on this machine)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    b = min(n, base)
    new, old = synthetic_pair(b, b, strip=strip)

    def mirror(i: np.ndarray) -> np.ndarray:
        i = i % (2 * b)
        return np.where(i < b, i, 2 * b - 1 - i)

    profile = {"driver": "GTiff", "width": n, "height": n, "count": 3, "dtype": "uint16", "crs": CRS.from_epsg(32631),
               "transform": from_origin(399960.0, 5000040.0, 10.0, 10.0), "compress": "deflate", "tiled": True,
               "BIGTIFF": "IF_SAFER"}
    dsts = [(rasterio.open(path, "w", nodata=0, **profile), new)]
    if ref_path is not None:
        dsts.append((rasterio.open(ref_path, "w", **profile), old))
    rng = np.random.default_rng(0)
    cols = mirror(np.arange(n))
    for y in range(0, n, strip):
        h = min(strip, n - y)
        rows = mirror(np.arange(y, y + h))
        for k, (dst, img) in enumerate(dsts):
            v = np.moveaxis(img[np.ix_(rows, cols)], -1, 0).astype(np.float32)
            arr = np.clip(np.rint(40 * (v + rng.random(v.shape, np.float32))), 1, 10200).astype(np.uint16)
            if k == 0:
                yy, xx = np.mgrid[y:y + h, 0:n]
                arr[:, xx + 0.2 * yy < 0.1 * n] = 0  # the swath edge: nodata
            dst.write(arr, window=Window(0, y, n, h))
    for dst, _ in dsts:
        dst.close()


def geo_worker(phase: str, name: str, tif: str, ref: str, rsc: str, out: str, windowed: str, threads: int) -> None:
    torch.set_num_threads(threads)
    from refscale import files, zoo
    from refscale.files import Job

    model = zoo.load(name)
    win = {"auto": None, "yes": True, "no": False}[windowed]
    with Clock() as c:
        if phase == "encode":
            r = files.encode_file(Job("scene", Path(tif), Path(ref) if model.needs_reference else None, Path(rsc)), model,
                                  force=True, windowed=win, register=False)
            extra = {"bytes": r["bytes"], "bpp": r["bpp"]}
        else:
            files.decode_to_file(rsc, out, ref if model.needs_reference else None, model=model, force=True, windowed=win,
                                 seed=0)
            extra = {}
    print("RESULT " + json.dumps({"wall_s": c.wall, "cpu_s": c.cpu, "peak_rss_gib": peak_rss() / GIB, **extra}), flush=True)


def psnr_valid(a_path: Path, b_path: Path, peak: float = 10000.0, rows: int = 512) -> float:
    """PSNR of two uint16 GeoTIFFs over the pixels that are not nodata in ``a``, in strips."""
    import rasterio
    from rasterio.windows import Window

    sse, count = 0.0, 0
    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        for y in range(0, a.height, rows):
            win = Window(0, y, a.width, min(rows, a.height - y))
            x, z = a.read(window=win).astype(np.float64), b.read(window=win).astype(np.float64)
            valid = x != a.nodata
            sse += float(((x - z)[valid] ** 2).sum())
            count += int(valid.sum())
    return float("inf") if sse == 0 else 10 * np.log10(peak ** 2 * count / sse)


def geotiff_runs(sizes: list[int], names: list[str], threads: int, in_memory_too: bool, keep: Path | None) -> list[dict]:
    from refscale import zoo

    results = []
    refs_needed = any(zoo.build(n).needs_reference for n in names)
    print(f"  {'model':<13} {'size':>11} {'path':<9} {'enc s':>7} {'enc CPU':>8} {'enc RSS':>8} {'dec s':>7} {'dec CPU':>8} "
          f"{'dec RSS':>8} {'bpp':>6} {'PSNR16':>7}", flush=True)
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="refscale-geo-", dir=keep) as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            write_scene(tmp / "scene.tif", tmp / "ref.tif" if refs_needed else None, n)
            print(f"  ({n}x{n} uint16 GeoTIFF written in {time.perf_counter() - t0:.0f} s, "
                  f"{(tmp / 'scene.tif').stat().st_size / 1e6:.0f} MB, load {load()})", flush=True)
            for name in names:
                for windowed in (["yes", "no"] if in_memory_too else ["yes"]):
                    r = {"model": name, "size": n, "windowed": windowed == "yes"}
                    for phase in ("encode", "decode"):
                        cmd = benchmarks.command("large_scene", "--geo-worker", phase, name, tmp / "scene.tif",
                                                 tmp / "ref.tif", tmp / "scene.rsc", tmp / "out.tif", windowed,
                                                 "--threads", threads, *(["--precision", precision] if precision else []))
                        proc = subprocess.run(cmd, capture_output=True, text=True, env=benchmarks.env())
                        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                        if proc.returncode != 0 or not lines:
                            r[phase] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                            break
                        r[phase] = json.loads(lines[-1][7:])
                    if "error" in r.get("encode", {}) or "error" in r.get("decode", {}):
                        print(f"  {name:<13} {n}x{n} FAILED: {r.get('encode', {}).get('error') or r['decode']['error']}", flush=True)
                        results.append(r)
                        continue
                    r["psnr16"] = psnr_valid(tmp / "scene.tif", tmp / "out.tif")
                    e, d = r["encode"], r["decode"]
                    print(f"  {name:<13} {f'{n}x{n}':>11} {'windowed' if r['windowed'] else 'in memory':<9} "
                          f"{e['wall_s']:>7.0f} {e['cpu_s']:>8.0f} {e['peak_rss_gib']:>6.2f}Gi {d['wall_s']:>7.0f} {d['cpu_s']:>8.0f} "
                          f"{d['peak_rss_gib']:>6.2f}Gi {e['bpp']:>6.3f} {r['psnr16']:>7.2f}  (load {load()})", flush=True)
                    results.append(r)
    return results


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bicubic-x2,irn-x2,refscale-x2")
    ap.add_argument("--height", type=int, default=3456)
    ap.add_argument("--width", type=int, default=6264)
    ap.add_argument("--check-size", type=int, default=1024)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                    help="part 2: the model arithmetic of encode and decode (default: the product's, auto). To time an "
                         "AVX2-only CPU on a newer one: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ... --precision fp32")
    ap.add_argument("--json", default=store.default_path("large_scene"), help="also write all results here (default out/bench/large_scene.json)")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "HR", "REF"), help=argparse.SUPPRESS)
    ap.add_argument("--geotiff", default=None, help="part 3 only: comma-separated scene sizes N (N x N GeoTIFFs)")
    ap.add_argument("--in-memory-too", action="store_true", help="part 3: also run each size with the scene in memory")
    ap.add_argument("--tmp", type=Path, default=None, help="part 3: folder for the temporary scenes (default: the system's)")
    ap.add_argument("--geo-worker", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker, threads=args.threads, precision=args.precision)
        return
    if args.geo_worker:
        geo_worker(*args.geo_worker, threads=args.threads)
        return
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    print(f"refscale large-scene benchmark: torch {torch.__version__}, {args.threads} threads, models {', '.join(names)}, "
          f"load average {load()}")
    out = {"check": [], "full": []}
    if args.geotiff:
        out["geotiff"] = geotiff_runs([int(v) for v in args.geotiff.split(",")], names, args.threads, args.in_memory_too,
                                      args.tmp)
        args.skip_check = args.skip_large = True
    if not args.skip_check:
        out["check"] = [check_settings(n, args.check_size) for n in names]
    if not args.skip_large:
        out["full"] = full_scene(names, args.height, args.width, args.threads, args.precision)
    print(f"\nload average at the end: {load()}")
    if args.json:
        store.save(out, args.json)


if __name__ == "__main__":
    main()
