"""Calibrate and test the decoder's plausibility check of the reference (issue 14, item 2).

    python -m benchmarks reference_check --data ../shared/data/oscd -m refscale-x2 refscale-x4 bicubic-x2 [--json out.json]

For every city of a split, the new image (img2) is encoded with its true reference (img1) by each
model; the stored LR is then compared (``refscale.metrics.reference_agreement``) with the true
reference and with every other city's img1 resized to the image size (a wrong reference of the
right size: what a user could pass by mistake). The threshold is chosen on the *train* cities:
halfway between the highest wrong-reference and the lowest true-reference agreement over all
models. The *test* cities then give the false-alarm rate (true references flagged) and the miss
rate (wrong references not flagged) of ``refscale.pipeline.MIN_REFERENCE_AGREEMENT``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks import store

import refscale
from refscale import metrics, ops, pipeline
from refscale.format.container import Packet
from refscale.io.image import read_image


def agreements(model, data: Path, cities: list[str]) -> dict:
    """``{"true": [..], "wrong": [..]}`` agreements of the model's stored LR of each city."""
    imgs = {c: (read_image(data / c / "img2.png"), read_image(data / c / "img1.png")) for c in cities}
    out = {"true": [], "wrong": []}
    for c, (hr, ref) in imgs.items():
        packet = Packet.from_bytes(model.encode(hr, ref if model.needs_reference else None).to_bytes())
        lr = pipeline.stored_lr(packet)
        size = tuple(packet.padded_size)
        pad = lambda r: ops.pad_to_multiple(r, model.alignment)[0]  # noqa: E731  (as the decoder pads)
        out["true"].append(metrics.reference_agreement(lr, pad(ref), model.scale))
        for o, (_, other) in imgs.items():
            if o != c:
                wrong = ops.imresize(other, size=tuple(hr.shape[-2:])).clamp(0, 1)
                out["wrong"].append(metrics.reference_agreement(lr, pad(wrong), model.scale))
        assert tuple(pad(ref).shape[-2:]) == size
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd")
    ap.add_argument("-m", "--models", nargs="+", default=["refscale-x2", "refscale-x4"])
    ap.add_argument("--json", type=Path, default=store.default_path("reference_check"), help="results JSON (default out/bench/reference_check.json)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = json.loads((args.data / "split.json").read_text())
    results = {}
    for name in args.models:
        model = refscale.load(name)
        for part in ("train", "test"):
            results[(name, part)] = agreements(model, args.data, split[part])
            r = results[(name, part)]
            print(f"{name:14s} {part:5s} true min {min(r['true']):.3f} median {np.median(r['true']):.3f} | "
                  f"wrong max {max(r['wrong']):.3f} median {np.median(r['wrong']):.3f}", flush=True)
    lo = min(min(r["true"]) for (m, p), r in results.items() if p == "train")
    hi = max(max(r["wrong"]) for (m, p), r in results.items() if p == "train")
    threshold = (lo + hi) / 2
    print(f"train: lowest true {lo:.3f}, highest wrong {hi:.3f} -> threshold {threshold:.3f} "
          f"(in use: {pipeline.MIN_REFERENCE_AGREEMENT})")
    t = pipeline.MIN_REFERENCE_AGREEMENT
    rows = ["| model | true refs (test) | false alarms | wrong refs (test) | misses |", "|---|---:|---:|---:|---:|"]
    for name in args.models:
        r = results[(name, "test")]
        fa = sum(v < t for v in r["true"])
        miss = sum(v >= t for v in r["wrong"])
        rows.append(f"| {name} | {len(r['true'])} | {fa} ({100 * fa / len(r['true']):.0f}%) | {len(r['wrong'])} | "
                    f"{miss} ({100 * miss / len(r['wrong']):.1f}%) |")
    print("\n".join(rows))
    if args.json:
        store.save({f"{m}/{p}": r for (m, p), r in results.items()} | {"threshold_train": threshold}, args.json)


if __name__ == "__main__":
    sys.exit(main())
