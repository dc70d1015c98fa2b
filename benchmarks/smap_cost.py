"""What RefScale's similarity map costs and buys when it is coarser (issue 27 item 4).

    python -m benchmarks smap_cost --model refscale-x2 --data ../shared/data/oscd --names aguasclaras bordeaux

For given RefScale weights, each image (a sample of ``refscale.data.discover``: the new image and
its reference) and each map setting (``--pools`` cells x ``--levels`` levels, the weights' own
map among them): the map's size as the container stores it (zlib, bits per HR pixel) and the
PSNR-Y of the decode (z = 0) with the LR through Pillow's JPEG at each ``--qualities``. The
weights are used as they are (no fine-tuning for the coarser maps): what a map costs before a
model is trained with it (``smap_pool``, ``smap_levels`` in the model's config).
"""
from __future__ import annotations

import argparse
import zlib

import torch
import torch.nn.functional as F

from benchmarks.jpeg_sim import pillow_jpeg
from refscale import metrics, zoo
from refscale.data import discover, iter_full_images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="refscale-x2", help="RefScale weights (name or .safetensors)")
    ap.add_argument("--data", required=True, help="dataset folder or manifest (pairs)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--names", nargs="*", default=None, help="only these samples")
    ap.add_argument("--pools", type=int, nargs="+", default=[1, 2, 4], help="cells of k x k map values averaged")
    ap.add_argument("--levels", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--qualities", type=int, nargs="+", default=[10, 50])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = zoo.load(args.model).float().eval()
    if getattr(model, "arch", None) != "refscale" or getattr(model, "condition_kind", None) != "similarity":
        raise SystemExit(f"{args.model} is no RefScale model with a similarity map")
    samples = discover(args.data, split=args.split)
    if args.names:
        samples = [s for s in samples if s.name in set(args.names)]
    if not samples:
        raise SystemExit(f"no samples in {args.data}" + (f" named {args.names}" if args.names else ""))
    print(f"{args.model} (its map: {model.smap_pool} x {model.smap_pool} cells, {model.levels_q} levels), "
          f"PSNR-Y at z = 0, LR through Pillow's JPEG\n")
    print("| image | map | bpp | " + " | ".join(f"q {q}" for q in args.qualities) + " |")
    print("|---|---|---:|" + "---:|" * len(args.qualities))
    align = max(model.alignment, model.smap_stride * max(args.pools))
    for sample, (name, hr, ref) in zip(samples, iter_full_images(samples, multiple=align)):
        with torch.no_grad():
            f_ref = model.refnet.encode(ref)
            s = model.refnet.similarity(model.refnet.encode(hr), f_ref)
            s = F.avg_pool2d(s, model.smap_pool) if model.smap_pool > 1 else s  # the weights' own cells
            for k in args.pools:
                for levels in args.levels:
                    q = torch.round((F.avg_pool2d(s, k) if k > 1 else s) * (levels - 1))
                    fc = f_ref * F.interpolate(q / (levels - 1), size=f_ref.shape[-2:], mode="bilinear", align_corners=False)
                    y = model.flow_forward(hr, fc)
                    bpp = len(zlib.compress(q.to(torch.uint8).numpy().tobytes(), 9)) * 8 / (hr.shape[-2] * hr.shape[-1])
                    scores = []
                    for quality in args.qualities:
                        lr = pillow_jpeg(y[:, :3].clamp(0, 1), quality)
                        hat = model.flow_inverse(torch.cat([lr, torch.zeros_like(y[:, 3:])], 1), fc).clamp(0, 1)
                        scores.append(float(metrics.psnr(hat, hr, crop_border=model.scale)[0]))
                    cells = k * model.smap_pool
                    print(f"| {name} | {levels} levels, {cells} x {cells} cells | {bpp:.3f} | "
                          + " | ".join(f"{v:.2f}" for v in scores) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
