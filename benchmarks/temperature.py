"""PSNR-Y and SSIM-Y against the latent temperature of decoding (issue 14, item 5; RefScale supplement 2.1, Fig. 5).

    python -m benchmarks temperature --data ../shared/data/oscd --cities aguasclaras bordeaux \\
        --out runs/temperature/val.json --md runs/temperature/val.md
    python -m benchmarks temperature --load runs/temperature/val.json runs/temperature/fine.json --md table.md

Every (model, temperature) is one ``refscale.evaluate.evaluate`` run (the real ``.rsc`` path, PNG
LR): ``z ~ t * N(0, I)``, PSNR/SSIM on Y (BasicSR, border = scale) averaged over ``--draws``
seeds (0, 1, ...) for t > 0 and one decode at t = 0 (z = 0). The default temperature
(``refscale.protocol.Rescaler.decode_temperature``, which weights may override) is chosen on the held-out train cities the training
configs validate on (``val_names``: aguasclaras, bordeaux), never on the test cities.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import refscale
from refscale.data import discover
from refscale.evaluate import evaluate

from benchmarks import store
from benchmarks.report_common import add_precision_option, add_study_options, write_text

TEMPERATURES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
MODELS = ("refscale-x2", "irn-x2", "refscale-x4", "irn-x4")
#: the held-out train cities of the OSCD training configs (val_names): the only ones the default is chosen on
VAL_CITIES = ("aguasclaras", "bordeaux")


def _column(r: dict) -> str:
    label = " ".join(str(v) for v in (r.get("dataset"), r.get("split")) if v)
    return f"{r['model']} ({label})" if label else r["model"]


def to_markdown(results: list[dict]) -> str:
    """One row per temperature, one column per (model, dataset): PSNR-Y / SSIM-Y."""
    cols = list(dict.fromkeys(_column(r) for r in results))
    temps = sorted({r["temperature"] for r in results})
    at = {(_column(r), r["temperature"]): r["mean"] for r in results}
    lines = ["| t | " + " | ".join(f"{c} PSNR-Y / SSIM-Y" for c in cols) + " |", "|---:|" + "---:|" * len(cols)]
    for t in temps:
        cells = [f"{at[c, t]['psnr_y']:.2f} / {at[c, t]['ssim_y']:.4f}" if (c, t) in at else "" for c in cols]
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    best = {c: max((r for r in results if _column(r) == c), key=lambda r: r["mean"]["psnr_y"])["temperature"] for c in cols}
    lines += ["", "highest PSNR-Y at t = " + ", ".join(f"{c} {t:g}" for c, t in best.items())]
    return "\n".join(lines) + "\n"


def _save(out: Path | None, samples: list, results: list[dict], start: float) -> None:
    if out is not None:
        store.save({"cities": [s.name for s in samples], "results": results, "seconds": time.perf_counter() - start}, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_options(ap, out="JSON of every evaluation")
    ap.add_argument("--split", default=None, help="a split of split.json (e.g. test)")
    ap.add_argument("--cities", nargs="+", default=None, help="only these samples (default for an OSCD folder with no "
                                                                 "--split: the held-out train cities, aguasclaras bordeaux; "
                                                                 "otherwise every image)")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--temperatures", nargs="+", type=float, default=list(TEMPERATURES))
    ap.add_argument("--draws", type=int, default=3, help="decodes averaged at t > 0 (seeds 0..draws-1)")
    add_precision_option(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.load:
        text = to_markdown([r for p in args.load for r in store.load(p)["results"]])
        print(text)
        write_text(args.md, text)
        return 0
    samples = discover(args.data, split=args.split)
    names = args.cities or (VAL_CITIES if args.split is None and (args.data / "split.json").is_file() else None)
    samples = [s for s in samples if names is None or s.name in names]
    results = []
    start = time.perf_counter()
    for name in args.models:
        model = refscale.load(name)
        for t in args.temperatures:
            r = evaluate(model, samples, draws=args.draws, progress=False, split=args.split, precision=args.precision,
                         temperature=t)
            results.append(r)
            _save(args.out, samples, results, start)  # after every evaluation: a stopped run keeps what it measured
            print(f"{name} t={t:g}: PSNR-Y {r['mean']['psnr_y']:.3f} SSIM-Y {r['mean']['ssim_y']:.4f} "
                  f"({r['draws']} draws, {len(r['images'])} images, {time.perf_counter() - start:.0f} s)", flush=True)
    text = to_markdown(results)
    print(text)
    print(f"{time.perf_counter() - start:.0f} s")
    _save(args.out, samples, results, start)
    write_text(args.md, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
