"""No-reference quality (NIQE, PIQE; refscale.lr_quality) of the LR images a model stores, or of
saved LR images, as in FGRN Table 2.

    python benchmarks/lr_quality.py --data ../shared/data/natural/Set5 -m fgrn-x4 [-m bicubic-x4 ...]
    python benchmarks/lr_quality.py --lr LR_DIR [--lr ...]     # images saved by `refscale evaluate --save-lr`
    python benchmarks/lr_quality.py --check-baboon ../shared/data/natural/Set14/baboon.png

Against FGRN Table 2's bicubic rows (``--data ../shared/data/natural/Urban100 -m bicubic-x2``, Y
channel): docs/natural.md, "LR quality against FGRN Table 2".
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from refscale import zoo
from refscale.container import Packet
from refscale.data import discover, iter_full_images
from refscale.errors import RefScaleError
from refscale.imageio import read_image
from refscale.lr_quality import niqe, piqe
from refscale.pipeline import stored_lr


def lr_images(model, samples):
    """``(name, LR [1,3,h,w])`` as ``model`` stores them (PNG container), HR mod-cropped to the scale."""
    for name, hr, _ in iter_full_images(samples, multiple=model.scale):
        packet = Packet.from_bytes(model.encode(hr).to_bytes())
        yield name, stored_lr(packet)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset folder (single images)")
    ap.add_argument("-m", "--model", action="append", default=[], help="model name or .safetensors (repeatable)")
    ap.add_argument("--lr", action="append", default=[], metavar="DIR",
                    help="score the images in DIR as they are, e.g. LR images saved by `refscale evaluate --save-lr` (repeatable)")
    ap.add_argument("--channel", default="y", choices=("y", "gray"))
    ap.add_argument("--json", help="write per-image scores here")
    ap.add_argument("--check-baboon", metavar="PATH", help="print NIQE/PIQE of one image file (validation)")
    args = ap.parse_args(argv)
    if args.check_baboon:
        img = read_image(args.check_baboon)
        print(json.dumps({"niqe_y": niqe(img, "y").item(), "niqe_gray": niqe(img, "gray").item(),
                          "piqe_y": piqe(img, "y").item(), "piqe_gray": piqe(img, "gray").item()}))
        return 0
    if (args.model and not args.data) or not (args.lr or args.model):
        ap.error("--data with at least one -m, or --lr DIR, is needed (or --check-baboon PATH)")
    sources = []  # (label, set label, iterator of (image name, LR))
    for name in args.model:
        model = zoo.load(name).eval()
        sources.append((model.name, Path(args.data).name, lr_images(model, discover(args.data))))
    for folder in args.lr:
        files = discover(folder)
        sources.append((str(folder), Path(folder).name, ((s.name, read_image(s.hr)) for s in files)))
    out = {}
    for label, set_name, images in sources:
        rows = [{"name": img_name, "niqe": niqe(lr, args.channel).item(), "piqe": piqe(lr, args.channel).item()}
                for img_name, lr in images]
        finite = [r["niqe"] for r in rows if math.isfinite(r["niqe"])]
        mean = {"niqe": float(np.mean(finite)) if finite else math.nan, "niqe_images": len(finite),
                "piqe": float(np.mean([r["piqe"] for r in rows]))}
        out[label] = {"images": rows, "mean": mean}
        print(f"{label:24s} {set_name:10s} NIQE {mean['niqe']:.3f} ({len(finite)}/{len(rows)} images)  PIQE {mean['piqe']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except RefScaleError as e:  # bad input: one line, exit 2 (as the refscale CLI)
        print(f"lr_quality: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
