"""`refscale demo`: the main job on a machine with no data of its own.

Encodes a new image with its reference, decodes it, and prints sizes, bpp and PSNR next to
bicubic. The default pair is real and ships in the package (``refscale/demo_data``): a
384 x 384 Sentinel-2 crop of Aguas Claras (OSCD, a held-out validation city, never trained on)
from 2017 with its 2015 reference; credits in ``refscale/demo_data/README.md``. ``--synthetic``
builds a procedural pair instead (a satellite-like scene and the same scene at an earlier date:
other season colours, a little haze, some buildings not yet built). Nothing is downloaded.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0,1]: a coarse random grid, bilinearly interpolated."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw))
    y = np.arange(h) / cell
    x = np.arange(w) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def synthetic_revisit_pair(height: int = 512, width: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A procedural scene and its earlier revisit, both uint8 [H,W,3].

    Returns ``(new, reference)``. Fields, roads, a river and buildings; the reference has other
    field colours, haze and lacks about a fifth of the buildings (the "change").
    """
    rng = np.random.default_rng(seed)
    h, w = height, width
    # fields: rectangular parcels of crop colours (jittered grid) with fine texture
    ys = np.cumsum(rng.integers(24, 72, size=h // 24 + 2))
    xs = np.cumsum(rng.integers(24, 72, size=w // 24 + 2))
    cell = np.searchsorted(ys, np.arange(h))[:, None] * 7919 + np.searchsorted(xs, np.arange(w))[None, :]
    patch = (cell * 2654435761 % 2**32) % 6
    palette_new = rng.uniform(0.25, 0.6, size=(6, 3)) * np.array([0.9, 1.0, 0.7])
    palette_old = np.clip(palette_new[rng.permutation(6)] * rng.uniform(0.85, 1.15, size=(6, 3)), 0, 1)
    texture = (_smooth_noise(rng, h, w, 3) - 0.5) * 0.12 + (_smooth_noise(rng, h, w, 12) - 0.5) * 0.1
    new = palette_new[patch] + texture[..., None]
    old = palette_old[patch] + texture[..., None]
    # river
    yy, xx = np.mgrid[0:h, 0:w]
    river_y = h * 0.6 + h * 0.12 * np.sin(xx / w * 2 * np.pi * 1.3)
    river = np.abs(yy - river_y) < max(3, h // 60)
    for img in (new, old):
        img[river] = np.array([0.12, 0.22, 0.3])
    # roads: a few straight lines
    for _ in range(4):
        if rng.random() < 0.5:
            r = rng.integers(0, h)
            sl = np.s_[max(0, r - 2):r + 2, :]
        else:
            c = rng.integers(0, w)
            sl = np.s_[:, max(0, c - 2):c + 2]
        new[sl] = 0.55
        old[sl] = 0.52
    # buildings with shadows; some only in the new image
    n_build = max(8, h * w // 1500)
    town_y, town_x = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    for _ in range(n_build):
        bh, bw = rng.integers(4, 16, size=2)
        y0 = int(np.clip(rng.normal(town_y, h / 6), 0, h - bh - 2))
        x0 = int(np.clip(rng.normal(town_x, w / 6), 0, w - bw - 2))
        roof = rng.uniform(0.5, 0.9) * np.array([1.0, 0.95, 0.9])
        targets = (new,) if rng.random() < 0.2 else (new, old)
        for img in targets:
            img[y0 + 2:y0 + bh + 2, x0 + 2:x0 + bw + 2] *= 0.55  # shadow
            img[y0:y0 + bh, x0:x0 + bw] = roof
    # the reference is hazier; both get sensor noise
    old = old * 0.85 + 0.12
    new = new + rng.normal(0, 0.01, new.shape)
    old = old + rng.normal(0, 0.01, old.shape)
    to8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    return to8(new), to8(old)


DEMO_DIR = Path(__file__).with_name("demo_data")
DEMO_PAIR = ("aguasclaras_2017-10-15.png", "aguasclaras_2015-09-16.png")  # (new, reference)


def real_pair(size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The shipped Sentinel-2 pair ``(new, reference)``, uint8 [H,W,3]; ``size`` < 384 takes the
    centre ``size x size`` crop."""
    from PIL import Image

    new, ref = (np.asarray(Image.open(DEMO_DIR / name).convert("RGB")) for name in DEMO_PAIR)
    if size is not None and size < min(new.shape[:2]):
        t, left = (new.shape[0] - size) // 2, (new.shape[1] - size) // 2
        new, ref = new[t:t + size, left:left + size], ref[t:t + size, left:left + size]
    return new, ref


def run_demo(model_name: str = "refscale-x2", out_dir: str | Path | None = None, size: int | None = None,
             seed: int = 0, codec: str = "png", synthetic: bool = False) -> dict:
    """Encode + decode the demo pair with ``model_name`` and bicubic; print and return a summary.

    The shipped real pair (``size``: centre crop), or with ``synthetic`` the procedural one
    (``size`` x ``size``, default 512, from ``seed``)."""
    import refscale
    from refscale.container import Packet
    from refscale.imageio import as_image_tensor, write_image
    from refscale.metrics import psnr

    from refscale.errors import InputError

    if synthetic:
        size = size or 512
        new, ref = synthetic_revisit_pair(size, size, seed)
        what = f"synthetic revisit pair (procedural, seed {seed})"
    else:
        new, ref = real_pair(size)
        what = ("Sentinel-2 revisit pair, Aguas Claras 2017-10-15 with its 2015-09-16 reference "
                "(OSCD held-out city; contains modified Copernicus Sentinel data)")
    h, w = new.shape[:2]
    if out_dir is not None:  # never overwrite: refuse before computing anything
        names = [f"{n}{ext}" for n in (model_name, f"bicubic-x{refscale.load(model_name, pretrained=False).scale}")
                 for ext in (".rsc", "_decoded.png")] + ["hr.png", "ref.png"]
        taken = [n for n in names if (Path(out_dir) / n).exists()]
        if taken:
            raise InputError(f"{Path(out_dir) / taken[0]} exists; choose another demo folder")
    hr_t, ref_t = as_image_tensor(new), as_image_tensor(ref)
    print(f"{what}: {w}x{h} RGB; PNG of HR = {_png_bytes(new):,} bytes")
    rows = {}
    model = refscale.load(model_name)
    scale = model.scale
    for name in dict.fromkeys((model_name, f"bicubic-x{scale}")):  # once each, also for -m bicubic-xN
        m = model if name == model_name else refscale.load(name)
        t0 = time.perf_counter()
        packet = m.encode(hr_t, ref_t if m.needs_reference else None)
        data = packet.to_bytes(codec=codec)
        hr_hat = m.decode(Packet.from_bytes(data), ref_t if m.needs_reference else None, seed=0)
        secs = time.perf_counter() - t0
        rows[name] = {"bytes": len(data), "bpp": len(data) * 8 / (h * w),
                      "psnr_y": float(psnr(hr_hat, hr_t, crop_border=scale)[0]), "seconds": secs}
        print(f"  {name:<22} container {len(data):>8,} bytes  {rows[name]['bpp']:.3f} bpp  "
              f"PSNR-Y {rows[name]['psnr_y']:.2f} dB  ({secs:.1f} s)")
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.rsc").write_bytes(data)
            write_image(hr_hat, out / f"{name}_decoded.png")
    if out_dir is not None:
        write_image(hr_t, Path(out_dir) / "hr.png")
        write_image(ref_t, Path(out_dir) / "ref.png")
        print(f"files written to {out_dir}")
    return rows


def _png_bytes(arr: np.ndarray) -> int:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.tell()


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(2)
    run_demo()
