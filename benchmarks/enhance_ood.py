"""Out of domain for the learned decoders (issue 27): natural photographs, a made-up older image.

    python -m benchmarks enhance_ood --data ../shared/data --work ../eval/enhance-ood \\
        --out enhance_ood.json --write docs/learned-decoder.md

The decoders were trained on Sentinel-2 cities and NAIP revisits; here they decode photographs
(Set14, and the centre ``--urban-crop`` px of the first ``--urban-images`` of Urban100). A
photograph has no older image of the same place, so each gets two made-up references (our
choice, written once to ``--work``):

* ``revisit``: the photograph as an older acquisition might show it: moved by (3, -2) px (edges
  replicated), gamma 1.15, contrast 0.9, Gaussian blur sigma 1, noise of 2 levels (seeded);
* ``unrelated``: the next photograph of the set, resized to this one's size: everything changed,
  so nothing of the reference may leak into the decoded image.

Each image is coded at each ``--qualities`` by the plain pipeline (``inter-hevc``; at x2
``bicubic-x2 --codec hevc-inter``) and by the decoder (the same LR section, the verifying encoder
on, as ``refscale encode``: blocks where the network is worse than the plain decode keep the
plain decode) through real ``.rsc`` files (:func:`refscale.evaluate.evaluate`). The issue's
criterion: never worse than the plain codec by more than 0.1 dB at any measured point. Results
are kept per (decoder, set, reference, quality) in ``--out``; a rerun measures only what is
missing.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from benchmarks import store
from benchmarks.report_common import write_section

START, END = "<!-- enhance-ood:start -->", "<!-- enhance-ood:end -->"
#: decoder -> (the plain pipeline it is compared with, the codec both use)
PLAIN = {"enhance-x1": ("inter-hevc", "hevc-inter"), "enhance-x2": ("bicubic-x2", "hevc-inter"),
         "enhance-x1-avif": ("inter-hevc", "avif"), "enhance-x2-avif": ("bicubic-x2", "avif")}
REFERENCES = ("revisit", "unrelated")


def made_up_revisit(img: np.ndarray, seed: int) -> np.ndarray:
    """An older acquisition of ``img`` (uint8 ``[H, W, 3]``): shifted, regraded, blurred, noisy."""
    import torch

    from refscale import ops

    h, w = img.shape[:2]
    moved = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="edge")[:h, 5:5 + w]  # down 3, left 2
    x = (moved.astype(np.float64) / 255) ** 1.15
    x = 0.5 + 0.9 * (x - 0.5)
    t = ops.gaussian_blur(torch.from_numpy(x).permute(2, 0, 1)[None].float(), 1.0)[0].permute(1, 2, 0).numpy()
    t = t * 255 + np.random.default_rng(seed).normal(0, 2, t.shape)
    return np.clip(np.rint(t), 0, 255).astype(np.uint8)


def make_pairs(data: Path, work: Path, set_name: str, urban_images: int, urban_crop: int) -> dict[str, Path]:
    """Write the references of one set once; the manifest (``hr,ref,name``) of each kind, named
    by the set and its number of images."""
    from PIL import Image

    from benchmarks.out_of_domain import samples_of

    samples = samples_of(data, set_name, urban_images if set_name == "Urban100" else 0, urban_crop, work)
    manifests = {}
    for kind in REFERENCES:
        folder = work / f"{set_name}-{len(samples)}x{urban_crop if set_name == 'Urban100' else 0}-{kind}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, s in enumerate(samples):
            img = np.asarray(Image.open(s.hr).convert("RGB"))
            img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]  # even sides: x1 and x2 see the same pixels
            hr, ref = folder / f"{s.name}.png", folder / f"{s.name}_ref.png"
            if not (ref.exists() and hr.exists()):
                if kind == "revisit":
                    other = made_up_revisit(img, seed=i)
                else:
                    nxt = Image.open(samples[(i + 1) % len(samples)].hr).convert("RGB")
                    other = np.asarray(nxt.resize((img.shape[1], img.shape[0]), Image.BICUBIC))
                Image.fromarray(img).save(hr)
                Image.fromarray(other).save(ref)
            rows.append((hr.name, ref.name, s.name))
        manifests[kind] = folder / f"pairs{len(rows)}.csv"
        with open(manifests[kind], "w", newline="") as f:
            csv.writer(f).writerows([("hr", "ref", "name"), *rows])
    return manifests


def set_label(set_name: str, args) -> str:
    """The set as the results name it: Urban100 with its number of images and crop."""
    return f"Urban100[{args.urban_images or 'all'} x {args.urban_crop}px]" if set_name == "Urban100" else set_name


def measure(model_name: str, codec: str, manifest: Path, quality: int, precision: str | None) -> dict:
    from refscale import zoo
    from refscale.data import discover
    from refscale.evaluate import evaluate

    r = evaluate(zoo.load(model_name), discover(manifest), codec=codec, quality=quality, progress=False,
                 precision=precision)
    return {"mean": {k: r["mean"][k] for k in ("bpp", "psnr_y", "psnr_rgb")},
            "images": {row["name"]: {k: row.get(k) for k in ("bpp", "psnr_y", "psnr_rgb", "fallback")}
                       for row in r["images"]}}


def table(results: dict, decoders: list[str], sets: list[str], qualities: list[int]) -> str:
    lines = []
    for dec in decoders:
        plain, codec = PLAIN[dec]
        lines += [f"**{dec}** against {plain} (`--codec {codec}`), the same quality:", "",
                  "| set | reference | q | plain bpp | Y | RGB | decoder bpp | Y | RGB | worst image Y / RGB | blocks to plain |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        gaps = []
        for set_name in sets:
            for kind in REFERENCES:
                for q in qualities:
                    a, b = (results.get(f"{m}|{codec}|{set_name}|{kind}|{q}") for m in (plain, dec))
                    if a is None or b is None:
                        continue
                    worst = [min(b["images"][n][k] - a["images"][n][k] for n in a["images"]) for k in ("psnr_y", "psnr_rgb")]
                    fb = np.mean([b["images"][n]["fallback"] or 0 for n in b["images"]])
                    gaps.append((b["mean"]["psnr_y"] - a["mean"]["psnr_y"], b["mean"]["psnr_rgb"] - a["mean"]["psnr_rgb"]))
                    lines.append(f"| {set_name} | {kind} | {q} | {a['mean']['bpp']:.3f} | {a['mean']['psnr_y']:.2f} | "
                                 f"{a['mean']['psnr_rgb']:.2f} | {b['mean']['bpp']:.3f} | {b['mean']['psnr_y']:.2f} | "
                                 f"{b['mean']['psnr_rgb']:.2f} | {worst[0]:+.2f} / {worst[1]:+.2f} | {fb:.0%} |")
        if gaps:
            lines += ["", f"Decoder minus plain at the {len(gaps)} points: PSNR-Y {min(g[0] for g in gaps):+.2f} to "
                          f"{max(g[0] for g in gaps):+.2f} dB, PSNR-RGB {min(g[1] for g in gaps):+.2f} to "
                          f"{max(g[1] for g in gaps):+.2f} dB (criterion: not below -0.10).", ""]
    return "\n".join(lines).rstrip()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding natural/Set14 and natural/Urban100")
    ap.add_argument("--work", type=Path, required=True, help="where the photographs and their references are written")
    ap.add_argument("--out", type=Path, default=store.default_path("enhance_ood"))
    ap.add_argument("-m", "--models", nargs="+", default=["enhance-x1", "enhance-x2"], choices=sorted(PLAIN))
    ap.add_argument("--sets", nargs="+", default=["Set14", "Urban100"])
    ap.add_argument("--qualities", type=int, nargs="+", default=[25, 45, 65])
    ap.add_argument("--urban-images", type=int, default=10, help="Urban100: the first N images (0: all)")
    ap.add_argument("--urban-crop", type=int, default=512, help="Urban100: centre N px of each image")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None)
    ap.add_argument("--write", type=Path, default=None, help="docs page whose enhance-ood block is replaced")
    args = ap.parse_args(argv)
    results = store.load(args.out, missing={})
    for set_name in args.sets:
        manifests = make_pairs(args.data, args.work, set_name, args.urban_images, args.urban_crop)
        for dec in args.models:
            plain, codec = PLAIN[dec]
            for model_name in (plain, dec):
                for kind in REFERENCES:
                    for q in args.qualities:
                        key = f"{model_name}|{codec}|{set_label(set_name, args)}|{kind}|{q}"
                        if key in results:
                            continue
                        results[key] = measure(model_name, codec, manifests[kind], q, args.precision)
                        m = results[key]["mean"]
                        print(f"{key}: {m['bpp']:.3f} bpp, Y {m['psnr_y']:.2f}, RGB {m['psnr_rgb']:.2f}", flush=True)
                        store.save(results, args.out)
    body = table(results, args.models, [set_label(s, args) for s in args.sets], args.qualities)
    print(body)
    if args.write:
        write_section(args.write, body, START, END)


if __name__ == "__main__":
    main()
