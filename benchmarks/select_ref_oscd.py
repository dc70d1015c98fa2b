"""Reference selection over the OSCD archive (issue 29): is each city's own older image chosen?

    python benchmarks/select_ref_oscd.py --data ../shared/data/oscd --work ../eval10/select [--json out.json]

Builds, under ``--work``, three archives of all 48 OSCD images (both dates of the 24 cities) with
random file names (nothing in a name gives the city or the date away):

* ``geo``: 8-bit RGB GeoTIFFs in EPSG:4326 on each city's footprint (``<city>.geojson``), the date
  in the ``ACQUISITION_DATE`` tag;
* ``stac``: the same images as plain PNGs described by a static STAC catalog (bbox, datetime);
* ``plain``: PNGs only: no footprint, no date; selection from pixels alone.

Each city's newer image (img2, a separate copy of the file that is also in the archive) is the
new scene; the selection must choose that city's older image (img1). Also checked: the copy of
the new scene in the archive (same fingerprint) and anything not older than it are never chosen,
and, leaving each city out of the archive in turn, "no suitable reference" for its new image.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from refscale import archive


def cities_of(data: Path) -> list[str]:
    return sorted(d.name for d in data.iterdir() if (d / "img1.png").is_file() and (d / "img2.png").is_file())


def build(data: Path, work: Path, seed: int = 0) -> dict:
    """Write the three archives and the new scenes; returns the truth table."""
    import pystac
    import rasterio
    from rasterio.transform import from_bounds

    rng = random.Random(seed)
    if work.exists():
        shutil.rmtree(work)
    for sub in ("geo", "stac", "plain", "new-geo", "new-plain"):
        (work / sub).mkdir(parents=True)
    truth, names = {}, set()
    catalog = pystac.Catalog(id="oscd-archive", description="OSCD, both dates, random names")
    for city in cities_of(data):
        dates = archive.read_dates(data / city)
        bounds = archive.bbox_of_geojson(json.loads((data / city / f"{city}.geojson").read_text()))
        entry = {}
        for k in ("img1", "img2"):
            name = f"{rng.getrandbits(48):012x}"
            while name in names:
                name = f"{rng.getrandbits(48):012x}"
            names.add(name)
            arr = np.asarray(Image.open(data / city / f"{k}.png").convert("RGB"))
            h, w = arr.shape[:2]
            profile = dict(driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:4326",
                           transform=from_bounds(*bounds, w, h))
            tif = work / "geo" / f"{name}.tif"
            with rasterio.open(tif, "w", **profile) as dst:
                dst.write(np.moveaxis(arr, -1, 0))
                dst.update_tags(ACQUISITION_DATE=dates[k].isoformat())
            png = work / "plain" / f"{name}.png"
            shutil.copyfile(data / city / f"{k}.png", png)
            shutil.copyfile(data / city / f"{k}.png", work / "stac" / f"{name}.png")
            item = pystac.Item(id=name, geometry={"type": "Polygon", "coordinates": [[
                [bounds[0], bounds[1]], [bounds[2], bounds[1]], [bounds[2], bounds[3]], [bounds[0], bounds[3]], [bounds[0], bounds[1]]]]},
                bbox=list(bounds), datetime=__import__("datetime").datetime.combine(dates[k], __import__("datetime").time()),
                properties={})
            item.add_asset("visual", pystac.Asset(href=f"./{name}.png", media_type=pystac.MediaType.PNG, roles=["data"]))
            catalog.add_item(item)
            entry[k] = name
            if k == "img2":
                shutil.copyfile(tif, work / "new-geo" / f"{city}.tif")
                shutil.copyfile(png, work / "new-plain" / f"{city}.png")
        truth[city] = entry
    catalog.normalize_hrefs(str(work / "stac"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, dest_href=str(work / "stac"))
    # pystac lays items out as <id>/<id>.json; point their assets at the shared PNGs
    for item_json in (work / "stac").rglob("*.json"):
        d = json.loads(item_json.read_text())
        if d.get("type") == "Feature":
            d["assets"]["visual"]["href"] = f"../{d['id']}.png"
            item_json.write_text(json.dumps(d))
    (work / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def run(work: Path, truth: dict, mode: str, leave_out: bool = False) -> dict:
    """Select for every city in one archive mode; ``leave_out``: without the city's own images."""
    src = {"geo": work / "geo", "stac": work / "stac" / "catalog.json", "plain": work / "plain"}[mode]
    cands = archive.read_archive(src)
    new_dir = work / ("new-plain" if mode == "plain" else "new-geo")
    suffix = ".png" if mode == "plain" else ".tif"
    rows, cache = [], {}
    for city, entry in truth.items():
        pool = [c for c in cands if not (leave_out and Path(c.path).stem in entry.values())]
        new = new_dir / f"{city}{suffix}"
        t0 = time.perf_counter()
        date = bounds = None
        if mode == "stac":  # the new scene as a plain PNG, its date and footprint given (as --date / --bbox)
            item = next(c for c in cands if Path(c.path).stem == entry["img2"])
            date, bounds = item.date, item.bounds
        sel = archive.select_reference(new, pool, date=date, bounds=bounds, cache=cache,
                                       max_pixels=None if mode == "plain" else archive.MAX_PIXELS)
        chosen = None if sel.chosen is None else Path(sel.chosen.path).stem
        same = [c for c in sel.candidates if c.fingerprint is not None and c.fingerprint == sel.new.fingerprint]
        rows.append({"city": city, "chosen": chosen, "correct": chosen == (None if leave_out else entry["img1"]),
                     "chose_identical": chosen == entry["img2"], "identical_excluded": all(c.reason for c in same),
                     "pixels_read": sel.pixels_read, "seconds": round(time.perf_counter() - t0, 3),
                     "agreement": None if sel.chosen is None else round(sel.chosen.scores["agreement"], 4),
                     "runner_up": next((round(c.scores["agreement"], 4) for c in sel.candidates[1:]
                                        if "agreement" in c.scores), None)})
    n_ok = sum(r["correct"] for r in rows)
    return {"mode": mode, "leave_out": leave_out, "correct": n_ok, "of": len(rows),
            "chose_identical": sum(r["chose_identical"] for r in rows),
            "seconds": round(sum(r["seconds"] for r in rows), 2), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/oscd"))
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (outside the repository)")
    ap.add_argument("--modes", nargs="+", default=["geo", "stac", "plain"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    truth = build(args.data, args.work)
    results = []
    for mode in args.modes:
        for leave_out in (False, True):
            r = run(args.work, truth, mode, leave_out)
            results.append(r)
            what = "no suitable reference" if leave_out else "own older image chosen"
            print(f"{mode:5s} {'leave-one-out' if leave_out else 'full archive ':13s}: {what} {r['correct']}/{r['of']}, "
                  f"identical chosen {r['chose_identical']}, {r['seconds']:.1f} s "
                  f"({np.mean([x['pixels_read'] for x in r['rows']]):.1f} images read per scene, first scene reads most)")
            for x in r["rows"]:
                if not x["correct"]:
                    print(f"   wrong: {x['city']} -> {x['chosen']} (agreement {x['agreement']}, runner-up {x['runner_up']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["correct"] == r["of"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
