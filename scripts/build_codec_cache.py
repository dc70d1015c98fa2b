"""Build the codec-in-the-loop training cache of the learned decoders (issue 27, ``enhance-*``).

    python scripts/build_codec_cache.py --data ../shared/data --out CACHE [--scales 1 2]
        [--qualities 30 42 54 66 78] [--crop 512] [--codec hevc-inter]
    python scripts/build_codec_cache.py --data ../shared/data --out CACHE_AVIF --codec avif --scales 1 \
        --qualities 1 10 25 40 55

A still codec (``--codec avif``, the decoders after a still codec, issue 27 item 3) codes the LR
alone (no reference at the LR's size); everything else is the same.

For each training pair (the OSCD train cities in both directions, older -> newer pairs of the NAIP
training dates) and the validation pairs (the held-out cities aguasclaras and bordeaux, older ->
newer only), a crop of at most ``--crop`` px (position drawn from the pair's name; sides even) is
written once as ``pairs/<pair>/hr.png`` + ``ref.png``. Then, exactly as ``refscale.pipeline.encode``
does for ``-m enhance-x{s}`` (= ``inter-hevc`` at scale 1, ``bicubic-x2 --codec hevc-inter`` at
scale 2): the LR (the HR at scale 1; MATLAB bicubic down rounded to 8 bits at scale 2) is coded
at each quality with the inter codec predicted from the reference at the LR's size
(``refscale.pipeline.lr_reference``), decoded (``refscale.format.codecs.decode_image``), and the decoded
LR is written as ``x<s>/<pair>-q<q>.png``. No gradient ever goes through the codec: training
reads these files (``data.coded: true``).

Outputs in ``--out``: ``x<s>.csv`` (one per scale), a manifest
``hr,ref,name,repeat,coded,quality,scale,bpp,bytes,payload,split`` that ``refscale train`` reads
(``refscale.data.discover``: column 5 is the decoded image; the rest is for people), with
``bpp`` = bytes of the coded LR section x 8 / HR pixels (the container's header, ~100 bytes, is
not counted) and ``payload`` its first byte (the inter payload version); and ``manifest.json``
(refscale version, codec identity, payload version, encoder settings, CRF of each quality, the
pair list, the build time). Re-runnable: rows already in a CSV are kept when ``manifest.json``
records the same codec settings, anything else is (re)built; a cache built with other settings
is refused unless ``--rebuild`` (then it is rebuilt from scratch).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

VAL_CITIES = ["aguasclaras", "bordeaux"]
NAIP_VAL = ["2019-09-04", "2020-08-31"]
DEFAULT_QUALITIES = [30, 42, 54, 66, 78]  # CRF 36, 30, 24, 18, 11: ~0.03-2.5 bpp at scale 1 on OSCD
FIELDS = ["hr", "ref", "name", "repeat", "coded", "quality", "scale", "bpp", "bytes", "payload", "split"]


def pairs(data: Path, naip_pairs: int) -> list[tuple[str, Path, Path, str]]:
    """``(pair name, HR path, reference path, split)``: OSCD train cities both directions (the
    held-out ones older -> newer, split ``val``), and ``naip_pairs`` older -> newer NAIP pairs of
    the training dates (consecutive dates first, then the longest gaps)."""
    oscd = data / "oscd"
    out = []
    for city in json.loads((oscd / "split.json").read_text())["train"]:
        new, old = oscd / city / "img2.png", oscd / city / "img1.png"
        if city in VAL_CITIES:
            out.append((f"{city}-fwd", new, old, "val"))
        else:
            out += [(f"{city}-fwd", new, old, "train"), (f"{city}-bwd", old, new, "train")]
    dates = sorted(p for p in (data / "extra" / "naip-series").glob("*.webp") if p.stem not in NAIP_VAL)
    combos = sorted(itertools.combinations(range(len(dates)), 2), key=lambda ij: (ij[1] - ij[0] != 1, -(ij[1] - ij[0]), ij))
    for i, j in combos[:naip_pairs]:
        out.append((f"naip-{dates[i].stem[:4]}-{dates[j].stem[:4]}", dates[j], dates[i], "train"))
    return out


def read_u8(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def crop_box(name: str, h: int, w: int, size: int, multiple: int) -> tuple[int, int, int, int]:
    """A crop of at most ``size`` px, sides and offsets multiples of ``multiple``, position drawn from ``name``."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    ch, cw = min(size, h) // multiple * multiple, min(size, w) // multiple * multiple
    top = int(rng.integers(0, (h - ch) // multiple + 1)) * multiple
    left = int(rng.integers(0, (w - cw) // multiple + 1)) * multiple
    return top, left, ch, cw


def settings(codec: str) -> dict:
    """What the decoded pixels depend on: rebuild the cache when any of it changes."""
    from importlib.metadata import version

    import refscale
    from refscale.format import codecs, inter

    if not codecs.needs_reference(codec):  # a still codec: its library's version and our settings
        library = codecs.CODECS[codec].library
        return {"refscale": refscale.__version__, "codec": codec, "identity": f"{library}-{version(library)}",
                "encoder_settings": {"avif_speed": codecs.AVIF_SPEED} if codec == "avif" else {}}
    info = {"refscale": refscale.__version__, "codec": codec, "identity": inter.identity(codec),
            "payload_version": inter.PAYLOAD_VERSION,
            "encoder_settings": inter.SETTINGS[inter.PAYLOAD_VERSION].get(codec)}
    for name in ("INTER_MODE", "DEFAULT_INTER_MODE"):  # issue 30's per-image intra/inter choice, once it lands
        if hasattr(inter, name):
            info[name.lower()] = str(getattr(inter, name))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding oscd/ and extra/naip-series/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--qualities", type=int, nargs="+", default=DEFAULT_QUALITIES)
    ap.add_argument("--crop", type=int, default=512, help="largest crop side in HR px (0: whole images)")
    ap.add_argument("--naip-pairs", type=int, default=8)
    ap.add_argument("--codec", default="hevc-inter")
    ap.add_argument("--rebuild", action="store_true", help="discard a cache built with other settings")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from refscale import ops, pipeline
    from refscale.format import codecs, inter
    from refscale.format.rounding import to_uint8_hwc

    codec = codecs.canonical(args.codec)
    predicted = codecs.needs_reference(codec)  # an inter codec: the LR predicted from the reference at its size
    if codecs.is_lossless(codec, args.qualities[0]):
        sys.exit(f"error: {codec} is lossless: nothing for a learned decoder to restore")
    out = args.out
    info = {**settings(codec), **({"crf": {str(q): inter.crf_for(codec, q) for q in args.qualities}} if predicted else {})}
    man = out / "manifest.json"
    if man.is_file():
        old = json.loads(man.read_text())
        same = all(old.get(k) == info[k] for k in settings(codec))
        if not same:
            if not args.rebuild:
                sys.exit(f"error: {out} was built with other codec settings ({old.get('identity')}, payload "
                         f"{old.get('payload_version')}); rerun with --rebuild")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = pairs(args.data, args.naip_pairs)
    before = json.loads(man.read_text()).get("build_seconds", 0.0) if man.is_file() else 0.0
    man.write_text(json.dumps({**info, "complete": False, "build_seconds": before}, indent=1))  # settings first: a resumed build checks them
    multiple = int(np.lcm.reduce(args.scales))
    start = time.perf_counter()
    counts = {}
    for s in args.scales:
        csv_path = out / f"x{s}.csv"
        done = {}
        if csv_path.is_file():
            with open(csv_path, newline="") as f:
                done = {r["name"]: r for r in csv.DictReader(f) if (out / r["coded"]).is_file()}
        rows = []
        for pname, hr_path, ref_path, split in todo:
            pdir = out / "pairs" / pname
            if not (pdir / "hr.png").is_file() or not (pdir / "ref.png").is_file():
                hr, ref = read_u8(hr_path), read_u8(ref_path)
                if hr.shape != ref.shape:
                    sys.exit(f"error: {pname}: HR {hr.shape} and reference {ref.shape} differ in size")
                top, left, ch, cw = (0, 0, *hr.shape[:2]) if not args.crop else crop_box(pname, *hr.shape[:2], args.crop, multiple)
                ch, cw = ch // multiple * multiple, cw // multiple * multiple
                pdir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(hr[top:top + ch, left:left + cw]).save(pdir / "hr.png")
                Image.fromarray(ref[top:top + ch, left:left + cw]).save(pdir / "ref.png")
            hr, ref = read_u8(pdir / "hr.png"), read_u8(pdir / "ref.png")
            hr_t = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255
            ref_t = torch.from_numpy(ref.copy()).permute(2, 0, 1)[None].float() / 255
            lr = hr if s == 1 else to_uint8_hwc(ops.bicubic_down(hr_t, s))
            lr_ref = pipeline.lr_reference(ref_t, s, s) if predicted else None
            for q in args.qualities:
                name = f"{pname}-q{q}"
                if name in done:
                    rows.append(done[name])
                    continue
                t0 = time.perf_counter()
                data = codecs.encode_image(lr, codec, q, ref=lr_ref)
                dec = codecs.decode_image(data, codec, lr.shape[:2], ref=lr_ref)
                rel = Path(f"x{s}") / f"{name}.png"
                (out / rel).parent.mkdir(exist_ok=True)
                Image.fromarray(dec).save(out / rel)
                psnr = 10 * np.log10(255.0**2 / max(((dec.astype(np.float64) - lr) ** 2).mean(), 1e-10))
                rows.append({"hr": f"pairs/{pname}/hr.png", "ref": f"pairs/{pname}/ref.png", "name": name, "repeat": 1,
                             "coded": rel.as_posix(), "quality": q, "scale": s,
                             "bpp": f"{8 * len(data) / (hr.shape[0] * hr.shape[1]):.5f}", "bytes": len(data),
                             "payload": data[0] if predicted else "", "split": split})
                print(f"x{s} {name}: {len(data)} bytes, {float(rows[-1]['bpp']):.3f} bpp, LR PSNR {psnr:.2f} dB, "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
                with open(csv_path, "w", newline="") as f:  # after every row, so an interrupted build resumes
                    w = csv.DictWriter(f, FIELDS)
                    w.writeheader()
                    w.writerows(rows + [r for n, r in done.items() if n not in {x["name"] for x in rows}])
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)
        counts[f"x{s}"] = len(rows)
    seconds = time.perf_counter() - start
    info.update(pairs=[{"name": n, "hr": os.fspath(h), "ref": os.fspath(r), "split": sp} for n, h, r, sp in todo],
                crop=args.crop, qualities=args.qualities, scales=args.scales, rows=counts, complete=True,
                build_seconds=round(seconds + before, 1), command=" ".join(sys.argv))
    man.write_text(json.dumps(info, indent=1))
    print(f"{out}: {counts} rows, {seconds:.0f} s this run")


if __name__ == "__main__":
    main()
