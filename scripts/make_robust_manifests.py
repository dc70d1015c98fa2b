"""Write the colour-robust training manifests (issue 26) into configs/.

    python scripts/make_robust_manifests.py [--data ../shared/data]

* ``robust-train.csv`` (single images, for IRN): the 12 OSCD training cities' two dates, the
  first 8 UC Merced photographs of each of the 21 classes, 8 of the 10 NAIP dates and the
  natural photographs the natural-image models train on (BSD68, Sun_Hays80; never Set5, Set14 or
  Urban100). Weights (the manifest's ``repeat`` column): OSCD 5, NAIP 3, UC Merced 1, natural 1,
  so an epoch draws ~26% of its crops from OSCD, ~37% from UC Merced, ~5% from NAIP and ~32%
  from natural photographs. Why the natural photographs: trained on aerial images only, the
  OSCD IRN's forward pass still put much of a close-up photograph's content into the discarded
  latent (Set5 bird: LR 19.7 dB from bicubic, z std 0.06 against 0.003 on its training images),
  docs/robustness.md.
* ``robust-pairs.csv`` (pairs, for RefScale): the 12 OSCD training pairs (repeat 4) and the 28
  older -> newer pairs of the 8 NAIP training dates (repeat 1); train with ``both_directions``.

Held out for validation (named in the configs' ``data.val_names``): the OSCD cities aguasclaras
and bordeaux, the NAIP dates 2019 and 2020 (the pair 2019 -> 2020) and, in the single-image
manifest, the 9th UC Merced forest and agricultural photographs and the first BSD68 and Sun_Hays80
photographs. Paths are relative to the
manifest (configs/ beside ../shared/data in the default layout).
"""
import argparse
import csv
import itertools
import json
import os
from pathlib import Path

VAL_CITIES = ["aguasclaras", "bordeaux"]
NAIP_VAL = ["2019-09-04", "2020-08-31"]
UCM_TRAIN_PER_CLASS = 8
UCM_VAL = {"forest": 8, "agricultural": 8}  # class -> index (sorted) of the held-out photograph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("configs"))
    args = ap.parse_args()
    rel = lambda p: os.path.relpath(p, args.out)  # noqa: E731
    oscd = args.data / "oscd"
    cities = json.loads((oscd / "split.json").read_text())["train"]
    naip = sorted((args.data / "extra" / "naip-series").glob("*.webp"))
    naip_train = [p for p in naip if p.stem not in NAIP_VAL]
    naip_val = [p for p in naip if p.stem in NAIP_VAL]
    ucm = args.data / "extra" / "ucmerced"

    single = []
    for c in cities:
        if c in VAL_CITIES:
            single.append((rel(oscd / c / "img2.png"), "", c, 1))
        else:
            single += [(rel(oscd / c / f"img{k}.png"), "", f"{c}_img{k}", 5) for k in (1, 2)]
    for cls in sorted(d.name for d in ucm.iterdir() if d.is_dir()):
        files = sorted((ucm / cls).glob("*.webp"))
        single += [(rel(f), "", f"ucm_{f.stem}", 1) for f in files[:UCM_TRAIN_PER_CLASS]]
        if cls in UCM_VAL:
            f = files[UCM_VAL[cls]]
            single.append((rel(f), "", f"val_ucm_{f.stem}", 1))
    single += [(rel(p), "", f"naip_{p.stem}", 3) for p in naip_train]
    single.append((rel(naip_val[-1]), "", "val_naip", 1))
    for folder, tag in (("BSD68", "bsd68"), ("Sun_Hays80", "sunhays")):
        files = sorted(p for p in (args.data / "natural" / folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        single.append((rel(files[0]), "", f"val_{tag}_{files[0].stem}", 1))
        single += [(rel(f), "", f"{tag}_{f.stem}", 1) for f in files[1:]]

    pairs = [(rel(oscd / c / "img2.png"), rel(oscd / c / "img1.png"), c, 1 if c in VAL_CITIES else 4) for c in cities]
    pairs += [(rel(new), rel(old), f"naip_{old.stem}_{new.stem}", 1) for old, new in itertools.combinations(naip_train, 2)]
    pairs.append((rel(naip_val[1]), rel(naip_val[0]), "val_naip", 1))

    for name, rows in (("robust-train.csv", single), ("robust-pairs.csv", pairs)):
        with open(args.out / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["hr", "ref", "name", "repeat"])
            f.write("# Written by scripts/make_robust_manifests.py (colour-robust training, issue 26); see its docstring.\n")
            w.writerows(rows)
        print(f"{args.out / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
