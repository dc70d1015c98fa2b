"""The learned inter decoder against the plain codec on cached decodes (issue 27).

    python -m benchmarks enhance_cache_eval --cache CACHE --scale 1 -m WEIGHTS.safetensors [-m MORE ...]
        [--data ../shared/data] [--split val] [--json out.json]

For every row of ``CACHE/x<scale>.csv`` in ``--split`` (default the held-out validation pairs),
the decoded LR the cache holds (``scripts/build_codec_cache.py``: the real HEVC inter codec) is
rebuilt by each model's ``upscale`` (fp32) and by the plain decoder (the decode itself at scale 1,
bicubic up at scale 2), rounded to 8 bits, and scored against the HR crop: PSNR-Y and PSNR-RGB
(border = scale), and PSNR-Y on the OSCD change mask's changed / unchanged pixels (the mask
cropped as the cache cropped the pair), where the reference must not leak in. Bits are the
cache's (the coded LR section per HR pixel; the container adds ~100 bytes). No codec runs here,
so it takes seconds; ``refscale evaluate --codec hevc-inter -q Q`` is the end-to-end check.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import torch

from benchmarks import store

from refscale import metrics, ops, zoo
from refscale.data import read_change_mask
from refscale.format.rounding import to_uint8
from refscale.io.image import read_image


def _builder():
    path = Path(__file__).resolve().parent.parent / "scripts" / "build_codec_cache.py"
    spec = importlib.util.spec_from_file_location("build_codec_cache", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def change_mask(data: Path, pair: str, manifest: dict) -> np.ndarray | None:
    """The OSCD change mask of ``pair`` (``<city>-fwd``/``-bwd``) cropped as the cache cropped it."""
    city = pair.rsplit("-", 1)[0]
    path = data / "oscd" / city / "change_mask.png"
    if not path.is_file():
        return None
    m = read_change_mask(path)
    crop, multiple = manifest["crop"], int(np.lcm.reduce(manifest["scales"]))
    top, left, ch, cw = (0, 0, *m.shape) if not crop else _builder().crop_box(pair, *m.shape, crop, multiple)
    ch, cw = ch // multiple * multiple, cw // multiple * multiple
    return m[top:top + ch, left:left + cw]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("-m", "--model", action="append", required=True, help=".safetensors path or catalogue name")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--json", type=Path, default=store.default_path("enhance_cache_eval"), help="results JSON (default out/bench/enhance_cache_eval.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    manifest = json.loads((args.cache / "manifest.json").read_text())
    with open(args.cache / f"x{args.scale}.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == args.split]
    models = {}
    for spec in args.model:
        m = zoo.load(spec) if spec.endswith(".safetensors") else zoo.build(spec).eval()
        models[Path(spec).stem] = m
    s = args.scale
    results = []
    for r in rows:
        hr, ref = read_image(args.cache / r["hr"]), read_image(args.cache / r["ref"])
        coded = read_image(args.cache / r["coded"])
        mask = change_mask(args.data, r["name"].rsplit("-q", 1)[0], manifest)
        outs = {"plain": coded if s == 1 else ops.bicubic_up(coded, s)}
        with torch.no_grad():
            for name, m in models.items():
                outs[name] = m.upscale(coded, {}, ref)
        rec = {"name": r["name"], "quality": int(r["quality"]), "bpp": float(r["bpp"])}
        for name, out in outs.items():
            out = to_uint8(out).float() / 255
            rec[f"{name}/psnr_y"] = metrics.psnr(out, hr, crop_border=s).item()
            rec[f"{name}/psnr_rgb"] = metrics.psnr(out, hr, crop_border=s, y_channel=False).item()
            if mask is not None and mask.shape == tuple(hr.shape[-2:]):
                rec[f"{name}/psnr_y_changed"] = metrics.psnr_y_masked(out, hr, mask, crop_border=s)
                rec[f"{name}/psnr_y_unchanged"] = metrics.psnr_y_masked(out, hr, ~mask, crop_border=s)
        results.append(rec)
    keys = [k for k in results[0] if "/" in k]
    print(f"x{s}, {len(rows)} rows of {args.cache / f'x{s}.csv'} (split {args.split}); mean over pairs per quality")
    print("| q | bpp | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for q in sorted({r["quality"] for r in results}):
        sub = [r for r in results if r["quality"] == q]
        mean = lambda k: float(np.mean([r[k] for r in sub if k in r and math.isfinite(r[k])]))  # noqa: E731
        print(f"| {q} | {mean('bpp'):.3f} | " + " | ".join(f"{mean(k):.2f}" for k in keys) + " |")
    if args.json:
        store.save(results, args.json)


if __name__ == "__main__":
    main()
