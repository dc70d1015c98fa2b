"""`refscale demo`: the main job on a machine with no data of its own.

Encodes a new image with its reference, decodes it, and prints sizes, bpp and PSNR (on Y and on
RGB: wrong colours show in RGB only) next to bicubic. The default pair is real and ships in the package (``refscale/demo_data``): a
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

from refscale.synthetic import synthetic_revisit_pair


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
    from refscale.format.container import Packet
    from refscale.io.image import as_image_tensor, write_image
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
        packet = m.encode(hr_t, ref_t if m.needs_reference else None, codec=codec)  # verified through this codec
        data = packet.to_bytes()
        hr_hat = m.decode(Packet.from_bytes(data), ref_t if m.needs_reference else None, seed=0)
        secs = time.perf_counter() - t0
        rows[name] = {"bytes": len(data), "bpp": len(data) * 8 / (h * w),
                      "psnr_y": float(psnr(hr_hat, hr_t, crop_border=scale)[0]),
                      "psnr_rgb": float(psnr(hr_hat, hr_t, crop_border=scale, y_channel=False)[0]), "seconds": secs}
        v = packet.verify_report
        checked = "" if v is None else f"  {v['fallback_blocks']}/{v['blocks']} blocks to {v['fallback']}"
        print(f"  {name:<22} container {len(data):>8,} bytes  {rows[name]['bpp']:.3f} bpp  "
              f"PSNR-Y {rows[name]['psnr_y']:.2f} dB  PSNR-RGB {rows[name]['psnr_rgb']:.2f} dB  ({secs:.1f} s){checked}")
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
