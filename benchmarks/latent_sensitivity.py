"""Why the invertible models painted wrong colours (issue 26): the latent z and the inverse's sensitivity.

    python benchmarks/latent_sensitivity.py --models irn-x2 refscale-x2 --data ../shared/data/oscd \\
        --split test --max-images 3 --json out.json --md out.md
    python benchmarks/latent_sensitivity.py --models irn-x2 --images a.png b.png --md out.md

For each model (IRN, RefScale: the invertible ones) and image (centre ``--crop`` px; a reference
model takes the sample's reference): the share of LR values the forward pass puts outside [0, 1]
(lost when the LR is stored in 8 bits), the standard deviation of the forward pass's own z, and
the RGB PSNR (border = scale) of the inverse fed the stored 8-bit LR with (a) the forward pass's
own z, (b) z = 0, (c) z ~ 0.5 N(0, I), (d) z ~ N(0, I) (seed 0; the pipeline's default), beside
the bicubic pipeline; and the largest change of an output pixel (8-bit levels) when 1e-3 N(0, I)
is added to the own z. fp32, one image at a time.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import refscale
from refscale import metrics, ops
from refscale.data import Sample, discover, iter_full_images


def centre(x: torch.Tensor | None, crop: int, multiple: int) -> torch.Tensor | None:
    if x is None:
        return None
    h, w = x.shape[-2:]
    ch, cw = min(crop, h) // multiple * multiple, min(crop, w) // multiple * multiple
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw].contiguous()


def measure(model, hr: torch.Tensor, ref: torch.Tensor | None) -> dict:
    s = model.scale
    lr_raw, z, side = model.forward_latent(hr, ref)
    lr = metrics.to_uint8(lr_raw.clamp(0, 1)).float() / 255
    g = torch.Generator().manual_seed(0)

    def rgb(x):
        return float(metrics.psnr(x.clamp(0, 1), hr, crop_border=s, y_channel=False)[0])

    def decode(zz):
        return model.inverse_latent(lr, zz, side, ref)

    own = decode(z)
    nudged = decode(z + 1e-3 * torch.randn(z.shape, generator=g))
    bic = ops.bicubic_up(metrics.to_uint8(ops.bicubic_down(hr, s)).float() / 255, s)
    return {
        "lr_outside": float(((lr_raw < 0) | (lr_raw > 1)).float().mean()),
        "z_std": float(z.std()),
        "own_z": rgb(own), "t0": rgb(decode(torch.zeros_like(z))),
        "t05": rgb(decode(0.5 * torch.randn(z.shape, generator=g))), "t1": rgb(decode(torch.randn(z.shape, generator=g))),
        "bicubic": rgb(bic),
        "nudge_levels": float((nudged.clamp(0, 1) - own.clamp(0, 1)).abs().max() * 255),
    }


COLUMNS = (("lr_outside", "LR outside [0,1]", "{:.2%}"), ("z_std", "std of own z", "{:.4f}"),
           ("own_z", "own z", "{:.2f}"), ("t0", "z = 0", "{:.2f}"), ("t05", "t = 0.5", "{:.2f}"),
           ("t1", "t = 1", "{:.2f}"), ("bicubic", "bicubic", "{:.2f}"), ("nudge_levels", "max change, z + 1e-3 N", "{:.0f}"))


def to_markdown(rows: list[dict]) -> str:
    head = "| model (weights) | image | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['model']} ({r['weights'][:12]}) | {r['image']} | " +
                     " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + " |")
    lines.append("\nPSNR columns: RGB PSNR (dB) of the inverse fed the stored 8-bit LR and the z named; "
                 "max change: 8-bit levels.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["irn-x2", "refscale-x2"])
    ap.add_argument("--data", help="dataset folder or manifest (refscale.data.discover)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--images", nargs="*", default=[], help="single images (no reference)")
    ap.add_argument("--max-images", type=int, default=3)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = discover(args.data, args.split)[: args.max_images] if args.data else []
    samples += [Sample(Path(p).stem, Path(p), None) for p in args.images]
    rows = []
    for name in args.models:
        model = refscale.load(name).eval()
        weights = model.weights_hash()
        for image, hr, ref in iter_full_images(samples, multiple=model.alignment):
            if model.needs_reference and ref is None:
                continue
            hr, ref = centre(hr, args.crop, model.alignment), centre(ref, args.crop, model.alignment)
            row = {"model": name, "weights": weights, "image": image, **measure(model, hr, ref if model.needs_reference else None)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    text = to_markdown(rows)
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
