"""BD-rate between two pipelines from their ``refscale evaluate`` results, one file per quality.

    for q in 25 40 55 65; do
      refscale evaluate --data ../shared/data/oscd --split test -m inter-hevc --codec hevc-inter -q $q --json base_q$q.json
      refscale evaluate --data ../shared/data/oscd --split test -m enhance-x1 --codec hevc-inter -q $q --json new_q$q.json
    done
    python -m benchmarks evaluate_bd --base base_q*.json --new new_q*.json [--write docs/learned-decoder.md --block NAME]

Each file is one quality (its images' ``quality``; the file name's ``_q<N>`` where they have none)
or one size budget (``refscale evaluate --bpp X``: every image fitted to X bits per pixel, its
quality chosen per image; a scale picker's files also count the images each member coded); the
two pipelines must have scored the same images. Prints the mean points (bpp, PSNR-Y,
PSNR-RGB, and the fraction of blocks the verifying encoder gave to the plain decode), the BD-rate
and BD-PSNR of ``--new`` against ``--base`` on the mean curves (:func:`refscale.rd.bd`: pchip over
the overlapping range) on PSNR-Y and PSNR-RGB, and per image; where every result has them (OSCD
cities with a change mask), on the PSNR-Y of the changed pixels too. ``--write`` replaces the block
``--block`` of that docs page (kept as data in docs/results/, :mod:`benchmarks.render`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

from benchmarks.report_common import write_section


def load(paths: list[Path]) -> tuple[str, dict[float, dict]]:
    """``(model name, {quality or bpp budget: result})`` of one pipeline's files."""
    out, names = {}, set()
    for p in paths:
        r = json.loads(Path(p).read_text())
        budget = (r.get("budget") or {}).get("bpp")
        if budget is not None:
            if budget in out:
                raise SystemExit(f"two files of budget {budget} bpp for one pipeline ({p})")
            out[float(budget)] = r
            names.add(r.get("model", Path(p).stem))
            continue
        qs = {x.get("quality") for x in r["images"]}
        q = qs.pop() if len(qs) == 1 else None
        if q is None:
            m = re.search(r"_q(\d+)", Path(p).stem)
            if not m:
                raise SystemExit(f"{p}: no quality in the result or the file name")
            q = int(m.group(1))
        if q in out:
            raise SystemExit(f"two files of quality {q} for one pipeline ({p})")
        out[int(q)] = r
        names.add(r.get("model", Path(p).stem))
    return " / ".join(sorted(names)), out


def has(results: dict[float, dict], key: str, image: str) -> bool:
    """Whether every result scored ``key`` on ``image`` (a change mask's metrics: its cities only)."""
    return all(key in next(x for x in r["images"] if x["name"] == image) for r in results.values())


def points(results: dict[int, dict], key: str, image: str | None = None) -> list[tuple[float, float]]:
    rows = []
    for q in sorted(results):
        r = results[q]
        src = r["mean"] if image is None else next(x for x in r["images"] if x["name"] == image)
        rows.append((src["bpp"], src[key]))
    return sorted(rows)


def label(key: float, result: dict) -> str:
    """A table's first cell of a point: the quality, or the size budget."""
    return f"<= {key:g} bpp" if (result.get("budget") or {}).get("bpp") is not None else f"{key:g}"


def members(result: dict) -> str:
    """A scale picker's choice over the images: ``x1 7, x2 3``; ``-`` for a single model."""
    scales = [x["scale"] for x in result["images"] if "member" in x]
    return ", ".join(f"x{s} {scales.count(s)}" for s in sorted(set(scales))) if scales else "-"


def report(base: dict[float, dict], new: dict[float, dict], base_name: str, new_name: str) -> str:
    from refscale.rd import bd

    images = sorted(x["name"] for x in next(iter(base.values()))["images"])
    for results in (base, new):
        for q, r in results.items():
            if sorted(x["name"] for x in r["images"]) != images:
                raise SystemExit(f"{label(q, r)}: the two pipelines did not score the same images")
    picker = any("member" in x for r in new.values() for x in r["images"])
    lines = [f"| {base_name} q | bpp | Y | RGB | {new_name} q | bpp | Y | RGB | blocks to the plain decode |"
             + (" scales chosen |" if picker else ""),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if picker else "")]

    def point_cells(key, results) -> str:  # one pipeline's four cells of a row (blank past its last point)
        if key is None:
            return " | | | |"
        m = results[key]["mean"]
        return f" {label(key, results[key])} | {m['bpp']:.4f} | {m['psnr_y']:.2f} | {m['psnr_rgb']:.2f} |"

    for qa, qb in itertools.zip_longest(sorted(base), sorted(new)):
        fb = [] if qb is None else [x.get("fallback") for x in new[qb]["images"] if x.get("fallback") is not None]
        lines.append("|" + point_cells(qa, base) + point_cells(qb, new) + f" {f'{sum(fb) / len(fb):.1%}' if fb else '-'} |"
                     + (f" {members(new[qb]) if qb is not None else ''} |" if picker else ""))
    lines += ["", f"| BD-rate against {base_name} | mean curve | " + " | ".join(images) + " |",
              "|---|---:|" + "---:|" * len(images)]
    keys = [("psnr_y", "PSNR-Y"), ("psnr_rgb", "PSNR-RGB")]
    if all("psnr_y_changed" in r["mean"] for results in (base, new) for r in results.values()):
        keys.append(("psnr_y_changed", "PSNR-Y, changed pixels"))  # cities with a change mask (refscale evaluate)
    for key, title in keys:
        m = bd(points(base, key), points(new, key))
        per = [bd(points(base, key, n), points(new, key, n)).get("bd_rate") if has(base, key, n) else None for n in images]
        cells = " | ".join("-" if r is None else f"{r:+.1f}%" for r in per)
        rate = "-" if m.get("bd_rate") is None else f"**{m['bd_rate']:+.1f}%**"
        mean = rate + ("" if m.get("bd_psnr") is None else f" ({m['bd_psnr']:+.2f} dB)")
        lines.append(f"| {title} | {mean} | {cells} |")
    y = bd(points(base, "psnr_y"), points(new, "psnr_y"))
    spans = [f"BD-rate over PSNR-Y {y['psnr_range'][0]:.2f}-{y['psnr_range'][1]:.2f} dB" if y.get("psnr_range") else "",
             f"BD-PSNR over {y['bpp_range'][0]:.3f}-{y['bpp_range'][1]:.3f} bpp" if y.get("bpp_range") else ""]
    if any(spans):
        lines += ["", "Mean curves over their overlap: " + "; ".join(filter(None, spans)) + "."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, nargs="+", required=True, help="the reference pipeline's files, one per quality")
    ap.add_argument("--new", type=Path, nargs="+", required=True, help="the compared pipeline's files, one per quality")
    ap.add_argument("--names", nargs=2, default=None, metavar=("BASE", "NEW"),
                    help="what the table calls the two pipelines (default: the models' names)")
    ap.add_argument("--write", type=Path, default=None, help="docs page whose --block is replaced")
    ap.add_argument("--block", default=None, help="the block's name (<!-- NAME:start -->)")
    args = ap.parse_args(argv)
    if bool(args.write) != bool(args.block):
        ap.error("--write and --block go together")
    (bn, base), (nn, new) = load(args.base), load(args.new)
    bn, nn = args.names or (bn, nn)
    body = report(base, new, bn, nn)
    print(body)
    if args.write:
        write_section(args.write, body, f"<!-- {args.block}:start -->", f"<!-- {args.block}:end -->")


if __name__ == "__main__":
    main()
