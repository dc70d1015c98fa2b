"""Out of domain (issue 26, item 4): every shipped model on the test images of the other domain.

    python benchmarks/out_of_domain.py --data ../shared/data --precision bf16 --no-verify \\
        --out ../eval10/ood.json --md ../eval10/ood.md --write docs/robustness.md

* The OSCD-trained models without a reference (``irn-x2`` / ``irn-x4``, i.e. ``irn-x{2,4}-oscd``,
  and ``fgrn-x{2,4}-oscd``) on the natural test sets Set5, Set14 and Urban100 (Urban100: the
  centre ``--urban-crop`` px of each image, 512 by default, for time). ``refscale-x2`` /
  ``refscale-x4`` need a reference image of the same place and a natural photograph has none:
  they are listed as not run.
* The natural-image models (``irn-x{2,4}-natural``, ``fgrn-x{2,4}-natural``) on the ten OSCD test
  cities (img2; these models take no reference).
* ``bicubic-x2`` / ``bicubic-x4`` on every set, the baseline at the same scale.

Each (model, set) is one :func:`refscale.evaluate.evaluate` through real ``.rsc`` files (PNG LR,
t = 1, ``--draws`` seeds): mean PSNR-Y and PSNR-RGB (and SSIM), the worst image (lowest
PSNR-RGB) and the mean fraction of pixels with a channel off by more than 40 levels
(``frac_off40``). ``--verify`` / ``--no-verify``: with or without the verifying encoder
(``refscale.pipeline.encode(..., verify=)``). Both go into one ``--out`` file (run the command
once with each) and one table with a column for it.

Results are kept in ``--out`` per (model, set, verify) with the weights' SHA-256 and the settings;
re-running the command measures only what is missing or stale (other weights, other settings),
so after new weights ship the same command measures them. ``--max-images N`` (first N images of
each set by name) and ``--sets`` / ``--models`` make a quick check.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import torch

import refscale
from refscale import zoo
from refscale.data import Sample, discover
from refscale.evaluate import evaluate, worst_image
from refscale.imageio import read_image, write_image
from refscale.ops import centre_crop

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks folder: report_common
from report_common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NATURAL_SETS = ("Set5", "Set14", "Urban100")
OSCD = "oscd"  # the ten OSCD test cities (split.json "test")
#: models trained on OSCD, run on the natural sets; the reference models cannot run there
OSCD_MODELS = ("irn-x2", "fgrn-x2-oscd", "irn-x4", "fgrn-x4-oscd")
REFERENCE_MODELS = ("refscale-x2", "refscale-x4")
NATURAL_MODELS = ("irn-x2-natural", "fgrn-x2-natural", "irn-x4-natural", "fgrn-x4-natural")
NOT_RUN = "needs a reference: not run (natural images have none)"
START, END = "<!-- ood:start -->", "<!-- ood:end -->"
MEAN_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "frac_off40", "bpp", "seconds")




def plan(models: list[str] | None, sets: list[str], in_domain: bool = False) -> list[tuple[str, str, str]]:
    """``(model, set, trained_on)`` of every run, bicubic first on each set; ``models`` restricts
    the learned ones (bicubic at their scales is always kept); ``in_domain``: the models trained
    on the set's own domain instead of the other one."""
    todo = []
    for name in sets:
        natural_here = (name == OSCD) != in_domain
        learned = list(NATURAL_MODELS) if natural_here else list(OSCD_MODELS + REFERENCE_MODELS)
        learned = [m for m in learned if models is None or m in models]
        trained_on = "natural" if natural_here else "oscd"
        scales = sorted({scale_of(m) for m in learned})
        todo += [(f"bicubic-x{s}", name, "-") for s in scales]
        todo += [(m, name, trained_on) for m in learned]
    return todo


def scale_of(model: str) -> int:
    return int(re.search(r"-x(\d+)", model).group(1))


def samples_of(data: Path, name: str, max_images: int, urban_crop: int, crop_dir: Path) -> list[Sample]:
    """The samples of one test set: the OSCD test cities or a natural set, the first ``max_images``
    (0: all); Urban100 as centre crops written once to ``crop_dir``."""
    samples = discover(data / OSCD, split="test") if name == OSCD else discover(data / "natural" / name)
    if max_images:
        samples = samples[:max_images]
    if name != "Urban100" or not urban_crop:
        return samples
    folder = crop_dir / f"{name}_c{urban_crop}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in samples:
        path = folder / f"{s.name}.png"
        if not path.exists():
            write_image(centre_crop(read_image(s.hr), urban_crop), path)
        out.append(Sample(s.name, path, None))
    return out


def measure(model_name: str, set_name: str, trained_on: str, args, verify: bool) -> dict:
    """One evaluation, summarised (the whole result is kept under ``result``)."""
    model = refscale.load(model_name)
    card = zoo.card_for(model_name)
    samples = samples_of(args.data, set_name, args.max_images, args.urban_crop, args.crop_dir)
    result = evaluate(model, samples, draws=args.draws, progress=False, dataset=set_name,
                      split="test" if set_name == OSCD else None, precision=args.precision, verify=verify)
    return {**entry_head(model_name, set_name, trained_on, args), "images": len(result["images"]),
            **{k: result["mean"][k] for k in MEAN_KEYS}, "worst": worst_image(result), "sha256": card.get("sha256"),
            "draws": result["draws"], "precision": result["precision"], "result": result}


def entry_head(model_name: str, set_name: str, trained_on: str, args) -> dict:
    card = zoo.card_for(model_name)
    return {"model": model_name, "weights": card.get("name", model_name), "trained_on": trained_on, "set": set_name,
            "scale": scale_of(model_name), "verify": args.verify, "settings": settings(set_name, args)}


def settings(set_name: str, args) -> dict:
    """What a cached run must match to be reused (besides the weights)."""
    return {"max_images": args.max_images, "urban_crop": args.urban_crop if set_name == "Urban100" else 0,
            "draws": args.draws, "precision": args.precision}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    runs = results["runs"]
    for model_name, set_name, trained_on in plan(args.models, args.sets, args.in_domain):
        key = f"{model_name}|{set_name}|verify={args.verify}"
        if model_name in REFERENCE_MODELS and set_name != OSCD:
            runs[key] = {**entry_head(model_name, set_name, trained_on, args), "images": 0, "skipped": NOT_RUN}
            continue
        old = runs.get(key)
        if old and old.get("sha256") == zoo.card_for(model_name).get("sha256") and old["settings"] == settings(set_name, args):
            continue
        print(f"{model_name} on {set_name} (verify={args.verify}) ...", file=sys.stderr, flush=True)
        runs[key] = measure(model_name, set_name, trained_on, args, args.verify)
        r = runs[key]
        print(f"  PSNR-Y {r['psnr_y']:.2f}  PSNR-RGB {r['psnr_rgb']:.2f}  worst {r['worst']['name']} "
              f"{r['worst']['psnr_rgb']:.2f}  >40 levels {r['frac_off40']:.2%}", file=sys.stderr, flush=True)
        save(results, args.out)
    save(results, args.out)
    return results


def save(results: dict, path: Path) -> None:
    """Write the results atomically (an interrupted run keeps every finished evaluation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def label(r: dict) -> str:
    """'irn-x2 (`irn-x2-oscd` df524a64f301)': the model, its weights where the name differs, the sha256 prefix."""
    inside = [f"`{r['weights']}`"] if r["weights"] != r["model"] else []
    inside += [r["sha256"][:12]] if r.get("sha256") else []
    return f"{r['model']} ({' '.join(inside)})" if inside else r["model"]


def to_markdown(results: dict, command: str) -> str:
    """One row per (test set, scale, model, verify), bicubic first; deltas against bicubic on the
    same images with the same encoder setting."""
    runs = list(results["runs"].values())
    order = {s: i for i, s in enumerate(NATURAL_SETS + (OSCD,))}
    runs.sort(key=lambda r: (order.get(r["set"], 99), r["scale"], r["verify"], not r["model"].startswith("bicubic"), r["model"]))
    crops = sorted({r["settings"]["urban_crop"] for r in runs if r["set"] == "Urban100"} - {0})
    caps = sorted({r["settings"]["max_images"] for r in runs} - {0})
    lines = [
        "Every OSCD-trained model without a reference on the natural test sets and every natural model on the "
        "ten OSCD test cities (img2), beside bicubic at the same scale on the same images; PNG LR, t = 1, "
        "`refscale.evaluate` (PSNR/SSIM with the border of `scale` px cropped); worst image = lowest PSNR-RGB; "
        ">40 levels = mean fraction of pixels with an RGB channel off by more than 40 levels. "
        + (f"Urban100: centre {', '.join(map(str, crops))} px of each image. " if crops else "")
        + (f"First {', '.join(map(str, caps))} images of each set only (a quick check). " if caps else "")
        + "`refscale-x2` / `refscale-x4` need a reference image of the same place, which a natural photograph "
        "does not have: not run there. Regenerate with:",
        "",
        f"    {command}",
        "",
        "| test set | trained on | model (weights, sha256) | images | verifying encoder | PSNR-Y | vs bicubic | "
        "PSNR-RGB | vs bicubic | SSIM-RGB | worst image (PSNR-RGB) | >40 levels | worst image vs bicubic, RGB | "
        "worst block vs bicubic, RGB | blocks to bicubic |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        weights = label(r)
        verify = "yes" if r["verify"] else "no"
        if r.get("skipped"):
            lines.append(f"| {r['set']} | {r['trained_on']} | {weights} | - | {verify} | {r['skipped']} | | | | | | | | | |")
            continue
        base = next((b for b in runs if b["model"] == f"bicubic-x{r['scale']}" and b["set"] == r["set"]
                     and b["verify"] == r["verify"] and b["images"] == r["images"] and not b.get("skipped")), None)
        dy = "" if base is None or base is r else f"{r['psnr_y'] - base['psnr_y']:+.2f}"
        drgb = "" if base is None or base is r else f"{r['psnr_rgb'] - base['psnr_rgb']:+.2f}"
        w = r.get("worst")
        worst = "-" if not w else f"{w['name']} {w['psnr_rgb']:.2f}"
        gap, block, fallback = image_checks(r, base)
        lines.append(f"| {r['set']} | {r['trained_on']} | {weights} | {r['images']} | {verify} | {_f(r['psnr_y'], '.2f')} | {dy} "
                     f"| {_f(r['psnr_rgb'], '.2f')} | {drgb} | {_f(r.get('ssim_rgb'), '.4f')} | {worst} | {_f(r.get('frac_off40'), '.2%')} "
                     f"| {_f(gap, '+.2f')} | {_f(block, '+.2f')} | {_f(fallback, '.1%')} |")
    return "\n".join(lines) + "\n"


def image_checks(r: dict, base: dict | None) -> tuple[float | None, float | None, float | None]:
    """The checks of the verifying encoder (issue 26): the lowest per-image RGB PSNR minus
    bicubic's on the same image, the lowest worst-block gap the encoder measured, and the mean
    fraction of blocks given to bicubic (None where not known)."""
    rows = (r.get("result") or {}).get("images", [])
    gap = None
    if base is not None and base is not r:
        bic = {b["name"]: b["psnr_rgb"] for b in (base.get("result") or {}).get("images", [])}
        gaps = [x["psnr_rgb"] - bic[x["name"]] for x in rows if x["name"] in bic]
        gap = min(gaps) if gaps else None
    blocks = [x["worst_block_gap"] for x in rows if x.get("worst_block_gap") is not None]
    fallback = [x["fallback"] for x in rows if x.get("fallback") is not None]
    return gap, (min(blocks) if blocks else None), (sum(fallback) / len(fallback) if fallback else None)


def write_block(path: Path, body: str) -> None:
    """Replace the ``<!-- ood:start/end -->`` block in the page that holds it: ``path`` or a
    Markdown file beside it (``report_common.write_section``; appended to ``path`` where absent)."""
    write_section(path, body, START, END)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with oscd/ and natural/ (default ../shared/data)")
    ap.add_argument("--sets", nargs="+", default=[*NATURAL_SETS, OSCD], choices=[*NATURAL_SETS, OSCD])
    ap.add_argument("--in-domain", action="store_true",
                    help="the models on their own domain's test sets instead (OSCD models on the OSCD test cities, "
                         "natural models on Set5/Set14/Urban100): with --verify, the checks of the verifying encoder")
    ap.add_argument("--models", nargs="+", default=None, choices=[*OSCD_MODELS, *REFERENCE_MODELS, *NATURAL_MODELS],
                    help="only these learned models (bicubic at their scales always runs)")
    ap.add_argument("--max-images", type=int, default=0, help="first N images of each set only (0: all)")
    ap.add_argument("--urban-crop", type=int, default=512, help="Urban100: centre N px of each image (0: whole images)")
    ap.add_argument("--crop-dir", type=Path, default=None, help="where the Urban100 crops are written (default: beside --out)")
    ap.add_argument("--draws", type=int, default=1, help="decodes averaged per image (stochastic models; default 1)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None)
    ap.add_argument("--verify", action=argparse.BooleanOptionalAction, default=False,
                    help="the verifying encoder (encode(verify=True)); default --no-verify")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="results JSON (read first: only missing or stale runs are measured)")
    ap.add_argument("--md", type=Path, default=None, help="the Markdown table")
    ap.add_argument("--write", type=Path, default=None, help="docs/robustness.md: replace the <!-- ood:start/end --> block (found in any page beside the file named)")
    ap.add_argument("--table-only", action="store_true", help="tabulate --out without measuring")
    ap.add_argument("--command", default=None, help="the command line to quote in the table (default: this one)")
    args = ap.parse_args(argv)
    args.crop_dir = args.crop_dir or args.out.with_name(args.out.stem + "_crops")
    results = json.loads(args.out.read_text()) if args.table_only else run(args)
    md = to_markdown(results, args.command or " ".join(["python benchmarks/out_of_domain.py", *(argv or sys.argv[1:])]))
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    if args.write:
        write_block(args.write, md)


if __name__ == "__main__":
    main()
