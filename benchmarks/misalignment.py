"""Robustness to a misaligned reference (issue 14, item 4; RefScale supplement Fig. 6, extended).

    python -m benchmarks misalignment --data ../shared/data/oscd --models refscale-x2 irn-x2 bicubic-x2 \\
        --out runs/misalignment/x2.json --md runs/misalignment/x2.md
    python -m benchmarks misalignment --load runs/misalignment/x2.json runs/misalignment/x4.json \\
        --md runs/misalignment/all.md --figure docs/figures/misalignment.png
    python -m benchmarks misalignment --split train --cities aguasclaras bordeaux --models refscale-x2 \\
        --shifts 20 --rotations 5 --border-modes mirror nearest constant --out runs/border/val.json

The archive image the ground station holds (img1) is misaligned to the new image (img2) *before*
encoding, and encoder and decoder both get that same misaligned image, as in the real workflow:
shifted by ``(d, d)`` px (down and right) or rotated by ``a`` degrees about the centre, cubic
spline (scipy.ndimage, order 3), the border the warp uncovers filled by mirror reflection,
clipped and rounded to 8 bits like any image file. Each reference model is encoded with
registration on (the default) and off (``register=False``); the decoder replays whatever the
container records. When registration estimates no transform, registration on and off give
identical pixels, so the "off" run is not repeated. Models without a reference run once (flat lines).

Per condition, the mean over the cities of: PSNR-Y (BasicSR, border = scale; t = 1, seed 0, one
draw), SI of the stored LR, the mean of the transmitted similarity map (levels / (L - 1), 0..1),
the shift registration recorded, and how many decodes warned that the reference looks unrelated.
Every image goes through the real ``.rsc`` bytes (PNG LR).

``--border-modes``: the fill of the strip the *registration* warp uncovers
(``refscale.registration.BORDER``, set alike for encoder and decoder) compared on the registered
runs: PSNR-Y over the image, inside that strip and elsewhere, and the mean similarity map inside
the strip and elsewhere (:func:`strip_scores`).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import refscale
from refscale import metrics, pipeline, registration
from refscale.format.container import Packet
from refscale.format.rounding import round_8bit
from refscale.data import discover, iter_full_images

from benchmarks import store
from benchmarks.report_common import add_study_options, to_palette, write_section, write_text

SHIFTS = (0, 2, 5, 20, 40)
ROTATIONS = (1, 5, 10)


def misalign(ref: torch.Tensor, kind: str, amount: float) -> torch.Tensor:
    """``ref`` [1,3,H,W] shifted by (amount, amount) px or rotated by amount degrees, mirrored border, 8-bit."""
    if amount == 0:
        return ref
    a = ref.double()[0].numpy()
    if kind == "shift":
        out = [ndimage.shift(c, (amount, amount), order=3, mode="mirror") for c in a]
    else:
        out = [ndimage.rotate(c, amount, reshape=False, order=3, mode="mirror") for c in a]
    return round_8bit(torch.from_numpy(np.stack(out))).float()[None]


def run_one(model, hr, ref, register: bool, strip: bool = False) -> dict:
    """Encode -> .rsc bytes -> decode (t = 1, seed 0) of one image; the scores of that draw
    (``strip``: also those of the strip the registration warp filled, :func:`strip_scores`)."""
    packet = Packet.from_bytes(model.encode(hr, ref, register=register).to_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = model.decode(packet, ref, temperature=1.0, seed=0)
    s = model.scale
    smap = packet.side.get("smap")
    return {
        "psnr_y": float(metrics.psnr(rec, hr, crop_border=s, y_channel=True)[0]),
        "si_lr": float(metrics.spatial_information(pipeline.stored_lr(packet))[0]),
        "similarity": None if smap is None else float(np.mean(smap) / (model.levels_q - 1)),
        "shift": list(registration.from_units(packet.ref_shift)),
        "rotation": registration.rotation_from_units(packet.ref_rotation),
        "warned": any("looks unrelated" in str(w.message) for w in caught),
        **(strip_scores(model, packet, rec, hr) if strip else {}),
    }


def strip_scores(model, packet, rec, hr) -> dict:
    """In the strip the registration warp filled from outside the reference
    (:func:`refscale.registration.uncovered`) and elsewhere: PSNR-Y and the mean similarity."""
    mask = registration.uncovered(tuple(hr.shape[-2:]), registration.from_units(packet.ref_shift),
                                  registration.rotation_from_units(packet.ref_rotation))
    psnr = lambda m: metrics.psnr_y_masked(rec, hr, m) if m.any() else None  # noqa: E731  (no border: the strip is one)
    out = {"strip_share": float(mask.mean()), "psnr_y_strip": psnr(mask), "psnr_y_rest": psnr(~mask)}
    smap = packet.side.get("smap")
    if smap is not None:
        full = np.zeros(packet.padded_size, bool)
        full[:mask.shape[0], :mask.shape[1]] = mask
        st = packet.padded_size[0] // smap.shape[-2]  # the map's stride: a cell is in the strip if any pixel is
        cells = full.reshape(smap.shape[-2], st, smap.shape[-1], st).any(axis=(1, 3))
        level = smap[0, 0] / (model.levels_q - 1)
        out["similarity_strip"] = float(level[cells].mean()) if cells.any() else None
        out["similarity_rest"] = float(level[~cells].mean())
    return out


def border_study(names: list[str], images_for, conds, modes) -> list[dict]:
    """Each border fill of the registration warp (``registration.BORDER``, used alike by encoder
    and decoder) on each misaligned reference: the registered run with its strip scores."""
    rows = []
    keep = registration.BORDER
    try:
        for name in names:
            model = refscale.load(name)
            images = images_for(model.scale)
            for mode in modes:
                registration.BORDER = mode
                for kind, amount in conds:
                    cities = [{"city": c, **run_one(model, hr, misalign(ref, kind, amount), True, strip=True)}
                              for c, hr, ref in images]
                    row = {"model": name, "scale": model.scale, "border": mode, "kind": kind, "amount": amount,
                           "cities": cities, **{k: _mean(cities, k) for k in STRIP_KEYS}}
                    rows.append(row)
                    print(f"{name} border={mode} {kind} {amount:g}: " + ", ".join(f"{k} {row[k]}" for k in STRIP_KEYS), flush=True)
    finally:
        registration.BORDER = keep
    return rows


STRIP_KEYS = ("psnr_y", "psnr_y_strip", "psnr_y_rest", "similarity_strip", "similarity_rest", "strip_share")


def _mean(cities: list[dict], key: str):
    v = [c[key] for c in cities if c.get(key) is not None]
    return float(np.mean(v)) if v else None


def border_markdown(rows: list[dict]) -> str:
    f = lambda v, d: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    out = ["| model | reference | border fill | PSNR-Y | PSNR-Y in the strip | PSNR-Y elsewhere "
           "| mean S in the strip / elsewhere | strip (share of pixels) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {_label(r['kind'], r['amount'])} | {r['border']} | {f(r['psnr_y'], 2)} | "
                   f"{f(r['psnr_y_strip'], 2)} | {f(r['psnr_y_rest'], 2)} | {f(r['similarity_strip'], 3)} / "
                   f"{f(r['similarity_rest'], 3)} | {f(r['strip_share'], 3)} |")
    return "\n".join(out) + "\n"


def conditions(shifts, rotations) -> list[tuple[str, float]]:
    return [("shift", float(d)) for d in shifts] + [("rotate", float(a)) for a in rotations]


def measure(name: str, images: list, shifts, rotations) -> list[dict]:
    model = refscale.load(name)
    rows = []
    conds = conditions(shifts, rotations) if model.needs_reference else [("none", 0.0)]
    cities_on: dict[str, dict] = {}  # the registered run of the current condition, by city
    for kind, amount in conds:
        for register in ((True, False) if model.needs_reference else (True,)):
            start, cities = time.perf_counter(), []
            for city, hr, ref in images:
                if not model.needs_reference:
                    r = run_one(model, hr, None, True)
                elif not register and cities_on[city]["shift"] == [0.0, 0.0] and not cities_on[city].get("rotation"):
                    r = dict(cities_on[city])  # nothing was warped: the same pixels as with registration
                else:
                    r = run_one(model, hr, misalign(ref, kind, amount), register)
                cities.append({"city": city, **r})
            if register:
                cities_on = {c["city"]: c for c in cities}
            row = {"model": name, "scale": model.scale, "kind": kind, "amount": amount,
                   "register": register if model.needs_reference else None,
                   "psnr_y": float(np.mean([c["psnr_y"] for c in cities])),
                   "si_lr": float(np.mean([c["si_lr"] for c in cities])),
                   "similarity": None if cities[0]["similarity"] is None else float(np.mean([c["similarity"] for c in cities])),
                   "warned": sum(c["warned"] for c in cities), "seconds": time.perf_counter() - start, "cities": cities}
            rows.append(row)
            print(f"{name} {kind} {amount:g} register={register}: PSNR-Y {row['psnr_y']:.2f} SI {row['si_lr']:.3f} "
                  f"S {row['similarity']} warned {row['warned']} ({row['seconds']:.0f} s)", flush=True)
    return rows


def _label(kind: str, amount: float) -> str:
    return "aligned" if amount == 0 else (f"shift {amount:g} px" if kind == "shift" else f"rotation {amount:g} deg")


def to_markdown(rows: list[dict]) -> str:
    out = []
    for scale in sorted({r["scale"] for r in rows}):
        flat = [r for r in rows if r["scale"] == scale and r["register"] is None]
        for name in sorted({r["model"] for r in rows if r["scale"] == scale and r["register"] is not None}):
            mine = [r for r in rows if r["model"] == name]
            out += [f"**{name}** (x{scale}), {len(mine[0]['cities'])} test cities; flat lines: "
                    + ", ".join(f"{r['model']} {r['psnr_y']:.2f} dB (SI {r['si_lr']:.3f})" for r in flat), "",
                    "| reference | PSNR-Y, registered | PSNR-Y, not registered | mean S, reg. / not | SI (LR), reg. / not "
                    "| recorded shift: mean (dy, dx), largest component | recorded rotation: mean, range (deg) "
                    "| 'unrelated' warnings, reg. / not |",
                    "|---|---:|---:|---:|---:|---|---|---:|"]
            for kind, amount in sorted({(r["kind"], r["amount"]) for r in mine}, key=lambda c: (c[0] != "shift", c[1])):
                on, off = (next(r for r in mine if r["kind"] == kind and r["amount"] == amount and r["register"] == g)
                           for g in (True, False))
                shifts = np.array([c["shift"] for c in on["cities"]])
                shift, largest = shifts.mean(axis=0), np.abs(shifts).max()
                turns = np.array([c.get("rotation", 0.0) for c in on["cities"]])
                out.append(f"| {_label(kind, amount)} | {on['psnr_y']:.2f} | {off['psnr_y']:.2f} | "
                           f"{on['similarity']:.3f} / {off['similarity']:.3f} | {on['si_lr']:.3f} / {off['si_lr']:.3f} | "
                           f"({shift[0]:.2f}, {shift[1]:.2f}), {largest:.1f} | {turns.mean():.2f}, {turns.min():.2f}..{turns.max():.2f} "
                           f"| {on['warned']} / {off['warned']} |")
            out.append("")
    return "\n".join(out)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted({r["scale"] for r in rows})
    fig, axes = plt.subplots(len(scales), 2, figsize=(11, 3.8 * len(scales)), squeeze=False, sharey="row")
    for row_axes, scale in zip(axes, scales):
        for ax, kind, unit in zip(row_axes, ("shift", "rotate"), ("shift of the reference (px, in x and in y)",
                                                                    "rotation of the reference (degrees)")):
            for r in rows:
                if r["scale"] == scale and r["register"] is None:
                    ax.axhline(r["psnr_y"], ls="--", lw=1, color="gray" if "bicubic" in r["model"] else "tab:green",
                               label=f"{r['model']} (no reference)")
            for name in sorted({r["model"] for r in rows if r["scale"] == scale and r["register"] is not None}):
                for register, style, size in ((True, "o-", 5), (False, "s:", 9)):
                    pts = [r for r in rows if r["model"] == name and r["register"] == register
                           and (r["kind"] == kind or r["amount"] == 0)]
                    pts.sort(key=lambda r: r["amount"])
                    ax.plot([r["amount"] for r in pts], [r["psnr_y"] for r in pts], style, ms=size,
                            mfc="none" if not register else None, label=f"{name}, registration {'on' if register else 'off'}")
            ax.set_xlabel(unit)
            ax.set_ylabel("PSNR-Y (dB), t = 1, seed 0")
            ax.set_title(f"x{scale}, OSCD test cities")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    to_palette(path)
    print("wrote", path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_options(ap, out="JSON of every condition and city")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cities", nargs="+", default=None, help="only these cities of the split (a quick check)")
    ap.add_argument("--models", nargs="+", default=["refscale-x2", "irn-x2", "bicubic-x2"])
    ap.add_argument("--shifts", nargs="*", type=float, default=SHIFTS)
    ap.add_argument("--rotations", nargs="*", type=float, default=ROTATIONS)
    ap.add_argument("--border-modes", nargs="+", choices=registration.BORDERS, default=None,
                    help="instead: compare these fills of the strip the registration warp uncovers (registered runs only)")
    ap.add_argument("--figure", type=Path, help="PNG figure (needs matplotlib: the report extra)")
    ap.add_argument("--write", type=Path, help="replace the misalignment block of this docs page (and docs/results/misalignment.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.load:
        rows = [r for p in args.load for r in store.load(p)["rows"]]
    else:
        start = time.perf_counter()
        samples = [s for s in discover(args.data, split=args.split) if not args.cities or s.name in args.cities]
        images_for = lambda scale: list(iter_full_images(samples, multiple=scale))  # noqa: E731
        if args.border_modes:
            rows = border_study(args.models, images_for, conditions(args.shifts, args.rotations), args.border_modes)
        else:
            rows = [r for name in args.models
                    for r in measure(name, images_for(refscale.load(name).scale), args.shifts, args.rotations)]
        if args.out:
            store.save({"data": str(args.data), "split": args.split, "rows": rows, "seconds": time.perf_counter() - start},
                       args.out)
    text = border_markdown(rows) if rows and "border" in rows[0] else to_markdown(rows)
    print(text)
    write_text(args.md, text)
    if args.write and not (rows and "border" in rows[0]):  # the border study has no docs block
        write_section(args.write, text, "<!-- misalignment:start -->", "<!-- misalignment:end -->")
    if args.figure:
        figure(rows, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
