"""How close the differentiable JPEG of training is to the real one (issue 27 item 4).

    python -m benchmarks jpeg_sim --data ../shared/data/oscd --names aguasclaras bordeaux --scale 2

For each image (the new image of each sample of ``refscale.data.discover``, bicubic-downscaled by
``--scale``: the LR the codec sees in the pipelines) and JPEG quality: the PSNR (RGB) of Pillow's
decode and of :func:`refscale.nn.jpeg.simulate_jpeg`'s against the image, their difference, and
the PSNR between the two decodes. Means over the images; one table in Markdown.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from refscale import metrics, ops
from refscale.data import discover, iter_full_images
from refscale.format import codecs
from refscale.format.rounding import to_uint8_hwc
from refscale.nn.jpeg import simulate_jpeg


def pillow_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x [1, 3, h, w]`` through the container's JPEG codec (Pillow) at ``quality``."""
    dec = codecs.decode_image(codecs.encode_image(to_uint8_hwc(x), "jpeg", quality), "jpeg")
    return torch.from_numpy(np.ascontiguousarray(dec)).permute(2, 0, 1)[None].float() / 255.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder or manifest")
    ap.add_argument("--split", default=None)
    ap.add_argument("--names", nargs="*", default=None, help="only these samples")
    ap.add_argument("--scale", type=int, default=2, help="bicubic downscale before the codec (1: none)")
    ap.add_argument("--qualities", type=int, nargs="+", default=[5, 15, 30, 50, 70, 85, 95])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    samples = discover(args.data, split=args.split)
    if args.names:
        samples = [s for s in samples if s.name in set(args.names)]
    if not samples:
        raise SystemExit(f"no samples in {args.data}" + (f" named {args.names}" if args.names else ""))
    rows = {q: [] for q in args.qualities}
    for _, hr, _ in iter_full_images(samples, multiple=args.scale):
        x = ops.quantize_8bit(ops.bicubic_down(hr, args.scale) if args.scale > 1 else hr)
        for q in args.qualities:
            real, sim = pillow_jpeg(x, q), simulate_jpeg(x, q)
            psnr = (lambda a, b: float(metrics.psnr(a, b, crop_border=0, y_channel=False)[0]))
            rows[q].append((psnr(real, x), psnr(sim, x), psnr(sim, real)))
    print(f"{len(samples)} image(s), x{args.scale} bicubic LR, PSNR-RGB in dB\n")
    print("| quality | Pillow's decode | simulated | difference | simulated vs Pillow's |")
    print("|---:|---:|---:|---:|---:|")
    for q, vals in rows.items():
        real, sim, between = (float(np.mean(v)) for v in zip(*vals))
        print(f"| {q} | {real:.2f} | {sim:.2f} | {sim - real:+.2f} | {between:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
