"""PSNR-Y and SSIM-Y against the latent temperature of decoding (issue 14, item 5; RefScale supplement 2.1, Fig. 5).

    python benchmarks/temperature.py --data ../shared/data/oscd --cities aguasclaras bordeaux \\
        --out runs/temperature/val.json --md runs/temperature/val.md
    python benchmarks/temperature.py --load runs/temperature/val.json runs/temperature/fine.json --md table.md

Every (model, temperature) is one ``refscale.evaluate.evaluate`` run (the real ``.rsc`` path, PNG
LR): ``z ~ t * N(0, I)``, PSNR/SSIM on Y (BasicSR, border = scale) averaged over ``--draws``
seeds (0, 1, ...) for t > 0 and one decode at t = 0 (z = 0). The default temperature
(``refscale.pipeline.DEFAULT_TEMPERATURE``) is chosen on the held-out train cities the training
configs validate on (``val_names``: aguasclaras, bordeaux), never on the test cities.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import refscale
from refscale.data import discover
from refscale.evaluate import evaluate

TEMPERATURES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
MODELS = ("refscale-x2", "irn-x2", "refscale-x4", "irn-x4")


def to_markdown(results: list[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in results))
    temps = sorted({r["temperature"] for r in results})
    at = {(r["model"], r["temperature"]): r["mean"] for r in results}
    lines = ["| t | " + " | ".join(f"{m} PSNR-Y / SSIM-Y" for m in models) + " |", "|---:|" + "---:|" * len(models)]
    for t in temps:
        cells = [f"{at[m, t]['psnr_y']:.2f} / {at[m, t]['ssim_y']:.4f}" if (m, t) in at else "" for m in models]
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    best = {m: max((r for r in results if r["model"] == m), key=lambda r: r["mean"]["psnr_y"])["temperature"] for m in models}
    lines += ["", "highest PSNR-Y at t = " + ", ".join(f"{m} {t:g}" for m, t in best.items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd")
    ap.add_argument("--split", default=None, help="a split of split.json (e.g. test)")
    ap.add_argument("--cities", nargs="+", default=None, help="only these samples (default with no --split: the "
                                                                 "training configs' val_names, aguasclaras bordeaux)")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--temperatures", nargs="+", type=float, default=list(TEMPERATURES))
    ap.add_argument("--draws", type=int, default=3, help="decodes averaged at t > 0 (seeds 0..draws-1)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None)
    ap.add_argument("--load", nargs="+", type=Path, default=None, help="tabulate earlier --out files together instead")
    ap.add_argument("--out", type=Path, help="JSON of every evaluation")
    ap.add_argument("--md", type=Path, help="the Markdown table")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.load:
        text = to_markdown([r for p in args.load for r in json.loads(p.read_text())["results"]])
        print(text)
        if args.md:
            args.md.write_text(text)
        return 0
    cities = args.cities or (None if args.split else ["aguasclaras", "bordeaux"])
    samples = [s for s in discover(args.data, split=args.split) if cities is None or s.name in cities]
    results = []
    start = time.perf_counter()
    for name in args.models:
        model = refscale.load(name)
        for t in args.temperatures:
            r = evaluate(model, samples, draws=args.draws, progress=False, split=args.split, precision=args.precision,
                         temperature=t)
            results.append(r)
            print(f"{name} t={t:g}: PSNR-Y {r['mean']['psnr_y']:.3f} SSIM-Y {r['mean']['ssim_y']:.4f} "
                  f"({r['draws']} draws, {len(r['images'])} images)", flush=True)
    text = to_markdown(results)
    print(text)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cities": [s.name for s in samples], "results": results,
                                        "seconds": time.perf_counter() - start}, indent=1) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
