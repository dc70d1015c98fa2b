"""Encoder settings of the inter-frame codecs, tuned on the OSCD train pairs (issue 19, item 2).

    python -m benchmarks inter_tuning --data ../shared/data/oscd --split train --out inter_tuning.json

For each train city in both directions (img2 from img1 and img1 from img2), each inter codec and
each preset / tune of :data:`CANDIDATES`, the new image is coded as a P-frame after the reference
(frame 0 near-lossless, exactly as ``refscale.format.inter.encode`` does, with the candidate's settings)
at each quality of ``rd_curves``' 5-point sweep; the rate is the P-frame's bits per pixel, the
distortion PSNR-Y (4 px border cropped, as ``rd_curves``). ``report`` gives each candidate's
BD-rate against the codec's current default (``refscale.rd``: bjontegaard, pchip) on the mean
curve and image by image, and the encode time (both frames, one thread). Results are cached per
point in ``--out`` (one writer at a time).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import store
from benchmarks.rd_curves import CROP, sweep
from benchmarks.report_common import write_section

from refscale import metrics
from refscale.format import inter
from refscale.format.rounding import to_uint8_hwc
from refscale.data import discover, iter_full_images
from refscale.ops import centre_crop
from refscale.rd import bd

QUALITIES = sweep(5)["h264-inter"]  # rd_curves --points 5 of the inter codecs (10, 40, 55, 70, 90)
#: payload version 1's ``preset/tune`` per codec (refscale.format.inter.SETTINGS), the baseline of the sweep
VERSION_1 = {c: f"{v['preset']}/{v['tune']}" for c, v in inter.SETTINGS[1].items()}
#: candidate ``preset/tune`` per codec (tune "none": the encoder's default, psy optimisations and
#: adaptive quantisation on; "nopsy": the same with psy off); the first is payload version 1's
CANDIDATES = {
    "h264-inter": (VERSION_1["h264-inter"], "slow/psnr", "medium/none", "slow/none", "slow/nopsy"),
    "hevc-inter": (VERSION_1["hevc-inter"], "slow/psnr", "medium/none", "slow/none", "slow/nopsy"),
    "av1-inter": (VERSION_1["av1-inter"], "6/none", "8/0"),
}


def _settings(candidate: str) -> dict[str, str]:
    """``preset/tune`` or ``preset/tune/params`` (encoder parameters appended to the version's,
    e.g. ``slow/none/wpp=1:pools=2``) -> the ``settings`` of ``refscale.format.inter.encode_frames``."""
    preset, tune, *params = candidate.split("/", 2)
    return {"preset": preset, "tune": tune, **({"params": params[0]} if params else {})}


def code_pair(codec: str, new: np.ndarray, ref: np.ndarray, quality: int, candidate: str) -> tuple[int, np.ndarray, float]:
    """``(P-frame bytes, decoded new image uint8 [h, w, 3], encode seconds)`` with ``candidate``'s settings."""
    s = inter.SPECS[codec]
    crf = inter.crf_for(codec, quality)
    start = time.perf_counter()
    packets = inter.encode_frames(s, crf, [inter.to_planes(s, ref), inter.to_planes(s, new)], settings=_settings(candidate))
    seconds = time.perf_counter() - start
    frames = inter.decode_frames(s, packets, inter.padded_size(s, *new.shape[:2]))
    return len(packets[1]), inter.from_planes(s, frames[1], new.shape[:2]), seconds


def _u8(t: torch.Tensor) -> np.ndarray:
    return to_uint8_hwc(t).copy()


def candidates(args, codec: str) -> tuple[str, ...]:
    """The candidates of ``codec``: ``--candidates`` where given (its first is the baseline), else
    :data:`CANDIDATES` (payload version 1's first)."""
    return tuple(args.candidates) if getattr(args, "candidates", None) else CANDIDATES[codec]


def run(args) -> None:
    if args.candidates and len(args.codecs) != 1:
        raise SystemExit("--candidates names one codec's settings: give exactly one --codecs")
    out = Path(args.out)
    results = store.load(out, {"meta": {}, "points": {}})
    if results["points"] and results["meta"].get("centre_crop") != args.crop:
        raise SystemExit(f"{out} was measured with --crop {results['meta'].get('centre_crop')}; use the same or a new --out")
    results["meta"].update(data=str(args.data), split=args.split, qualities=QUALITIES, crop=CROP, centre_crop=args.crop, identity={c: inter.identity(c) for c in args.codecs})
    points = results["points"]
    samples = discover(args.data, split=args.split)[: args.limit or None]
    for name, hr, ref in iter_full_images(samples, multiple=CROP):
        if args.crop:  # CPU time
            hr, ref = centre_crop(hr, args.crop), centre_crop(ref, args.crop)
        for image, new, old in ((name, hr, ref), (f"{name}~reverse", ref, hr)):
            a, r = _u8(new), _u8(old)
            h, w = a.shape[:2]
            for codec in args.codecs:
                start = time.perf_counter()
                todo = [(c, q) for c in candidates(args, codec) for q in QUALITIES if f"{image}|{codec}|{c}|{q}" not in points]
                for cand, q in todo:
                    nbytes, rec, seconds = code_pair(codec, a, r, q, cand)
                    hat = torch.from_numpy(rec).permute(2, 0, 1)[None].float() / 255
                    points[f"{image}|{codec}|{cand}|{q}"] = {
                        "bpp": nbytes * 8 / (h * w), "psnr_y": float(metrics.psnr(hat, new, crop_border=CROP)[0]),
                        "encode_s": seconds, "mpx": h * w / 1e6}
                if todo:
                    print(f"{image} {codec}: {len(todo)} points, {time.perf_counter() - start:.1f} s", flush=True)
                    store.save(results, out)
    print("wrote", out)


def report(args) -> None:
    results = store.load(args.results)
    by: dict[tuple[str, str], dict[str, dict[int, dict]]] = {}
    for key, p in results["points"].items():
        image, codec, cand, q = key.split("|")
        by.setdefault((codec, cand), {}).setdefault(image, {})[int(q)] = p
    complete = {k: {im for im, pts in v.items() if len(pts) == len(QUALITIES)} for k, v in by.items()}
    if args.common:  # only the pairs every candidate of the codec has
        for codec in CANDIDATES:
            common = set.intersection(*[v for k, v in complete.items() if k[0] == codec] or [set()])
            complete.update({k: common for k in complete if k[0] == codec})
    where = f"centre {results['meta']['centre_crop']} px crops of the" if results["meta"].get("centre_crop") else "the whole"
    lines = [f"Inter-codec settings on {where} OSCD {results['meta']['split']} pairs, both directions (P-frame bits "
             "per pixel, PSNR-Y, 4 px border cropped; 5 qualities). BD-rate against the baseline (the first row of each codec: payload version 1's settings unless `--candidates` names others) on the "
             "pairs both have measured (bjontegaard, pchip, over the overlapping range; negative = fewer bits for the "
             "same PSNR-Y); encode time of both frames, one thread (two with `pools=2`), median, under whatever load the run had. Regenerate with:", "", f"    {args.command}", "",
             "| codec | preset / tune | pairs | BD-rate (mean curve) | over PSNR-Y | median per pair | pairs with fewer bits | BD-PSNR | encode s per Mpx |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for codec in CANDIDATES:
        cands = candidates(args, codec)
        if (codec, cands[0]) not in by:
            continue
        base = by[(codec, cands[0])]

        def mean_curve(per, ims):
            return [(float(np.mean([per[im][q]["bpp"] for im in ims])), float(np.mean([per[im][q]["psnr_y"] for im in ims]))) for q in QUALITIES]

        def curve(per, im):
            return [(per[im][q]["bpp"], per[im][q]["psnr_y"]) for q in QUALITIES]

        for cand in cands:
            if (codec, cand) not in by:
                continue
            per = by[(codec, cand)]
            images = complete[(codec, cand)] & complete[(codec, cands[0])]
            speed = statistics.median(per[im][q]["encode_s"] / per[im][q]["mpx"] for im in images for q in QUALITIES)
            if cand == cands[0]:
                lines.append(f"| {codec} | {cand} (baseline) | {len(images)} | - | - | - | - | - | {speed:.2f} |")
                continue
            m = bd(mean_curve(base, images), mean_curve(per, images))
            each = [bd(curve(base, im), curve(per, im))["bd_rate"] for im in sorted(images)]
            each = [e for e in each if e is not None]
            rng = "-" if m["psnr_range"] is None else f"{m['psnr_range'][0]:.1f}-{m['psnr_range'][1]:.1f} dB"
            lines.append(f"| {codec} | {cand} | {len(images)} | {m['bd_rate']:+.1f} % | {rng} | {statistics.median(each):+.1f} % | "
                         f"{sum(e < 0 for e in each)} of {len(each)} | {m['bd_psnr']:+.2f} dB | {speed:.2f} |")
    md = "\n".join(lines)
    print(md)
    if args.write:
        write_section(Path(args.write), md, f"<!-- {args.block}:start -->", f"<!-- {args.block}:end -->")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (resumable)")
    r.add_argument("--data", required=True)
    r.add_argument("--split", default="train")
    r.add_argument("--codecs", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    r.add_argument("--limit", type=int, default=0, help="first N cities only")
    r.add_argument("--candidates", nargs="+", default=None, metavar="PRESET/TUNE[/PARAMS]",
                   help="settings to compare for one codec (the first is the baseline; default: CANDIDATES)")
    r.add_argument("--crop", type=int, default=0, help="code only the centre N x N of each image (0: whole images)")
    r.add_argument("--out", default=store.default_path("inter_tuning"), help="results JSON (read first: resumes; default out/bench/inter_tuning.json)")
    r.set_defaults(func=run)
    p = sub.add_parser("report", help="BD-rate table of the candidates")
    p.add_argument("--results", default=store.default_path("inter_tuning"), help="results JSON of run (default out/bench/inter_tuning.json)")
    p.add_argument("--candidates", nargs="+", default=None, metavar="PRESET/TUNE[/PARAMS]", help="as given to run")
    p.add_argument("--common", action="store_true", help="every row of a codec on the pairs all its candidates have")
    p.add_argument("--write", default=None, help="docs/inter.md: replace the <!-- inter-tuning --> block (found in any page beside the file named)")
    p.add_argument("--command", default=None, help="the command line to quote (default: this one)")
    p.add_argument("--block", default="inter-tuning", help="the docs block --write replaces (default inter-tuning)")
    p.set_defaults(func=report)
    args = ap.parse_args(argv)
    if args.cmd == "report" and args.command is None:
        args.command = " ".join(["python -m benchmarks inter_tuning", *sys.argv[1:]])
    args.func(args)


if __name__ == "__main__":
    main()
