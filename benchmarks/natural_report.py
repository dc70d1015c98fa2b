"""FGRN vs IRN on natural images (issue 6): FGRN Table 1 and Table 2 in our numbers.

    python -m benchmarks natural_report all --weights-dir runs --write docs/natural.md

* ``table``: ``refscale evaluate`` (PSNR/SSIM on Y and on RGB, border cropped by the scale) of
  bicubic, IRN and FGRN at 2x and 4x on Set5, Set14 and Urban100, beside the paper's IRN and FGRN
  rows (FGRN Table 1, Y only) and each model's training budget from its card; then the colour
  table: the worst image (lowest PSNR-RGB) and the fraction of pixels off by more than 40 levels.
* ``glance``: the natural "Shipped models at a glance" table from the same evaluations (Y / RGB
  per set, worst image, >40 levels and, with ``--ood``, PSNR-RGB / PSNR-Y against bicubic on the
  OSCD test cities from ``benchmarks/out_of_domain.py``); ``--write`` replaces its
  ``natural-glance`` block.
* ``curves``: validation PSNR-Y against the training step of every natural model (model cards'
  ``val_history``), ``docs/figures/natural_learning_curves.png``.
* ``lrq``: PIQE and NIQE of the LR images of bicubic, IRN and FGRN on the same sets, beside FGRN
  Table 2: ``python -m benchmarks lr_quality --lr DIR`` on the LR images that ``table`` saved
  (``refscale evaluate --save-lr``), so no model runs twice; run ``table`` first.

The models are the shipped ``*-natural`` weights unless ``--weights-dir`` points at run folders
``<dir>/<arch>-x<s>-natural``. IRN's decode samples z (t = 1); ``--draws`` averages over draws.
The test sets are never used for training or validation (configs/natural-train.csv).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import benchmarks
from benchmarks.report_common import (add_precision_option, fmt, learning_curves, load_ood, ood_cell, training_budget, worst_cell,
                                      write_section)

from refscale.zoo import card_for

ROOT = Path(__file__).resolve().parents[1]
SETS = ("Set5", "Set14", "Urban100")
ARCHS = ("bicubic", "irn", "fgrn")
#: FGRN Table 1: PSNR-Y / SSIM-Y of the paper's IRN and FGRN (trained on DIV2K at full budget)
PAPER_TABLE1 = {
    ("bicubic", 2): ((33.66, 0.9299), (30.24, 0.8688), (26.88, 0.8403)),
    ("irn", 2): ((43.99, 0.9871), (40.79, 0.9778), (39.92, 0.9865)),
    ("fgrn", 2): ((44.15, 0.9902), (42.28, 0.9840), (41.71, 0.9904)),
    ("bicubic", 4): ((28.42, 0.8104), (26.00, 0.7027), (23.14, 0.6577)),
    ("irn", 4): ((36.19, 0.9451), (32.67, 0.9015), (31.41, 0.9157)),
    ("fgrn", 4): ((36.97, 0.9505), (33.77, 0.9168), (31.91, 0.9253)),
}
#: FGRN Table 2: NIQE / PIQE of the LR images
PAPER_TABLE2 = {
    ("bicubic", 2): ((16.027, 38.561), (8.519, 39.802), (5.708, 42.788)),
    ("irn", 2): ((16.017, 34.623), (8.558, 37.001), (6.143, 38.161)),
    ("fgrn", 2): ((16.166, 30.124), (8.621, 32.982), (5.995, 35.051)),
    ("bicubic", 4): ((18.876, 51.101), (17.932, 45.335), (17.378, 46.609)),
    ("irn", 4): ((18.876, 45.112), (17.909, 40.213), (17.755, 39.769)),
    ("fgrn", 4): ((18.876, 40.627), (17.952, 35.464), (17.132, 36.991)),
}
START, END = "<!-- natural-table:start -->", "<!-- natural-table:end -->"
GLANCE_START, GLANCE_END = "<!-- natural-glance:start -->", "<!-- natural-glance:end -->"


def model_ref(arch: str, scale: int, weights_dir: Path | None) -> str:
    """Catalogue name, or the final weights of a run folder ``<weights_dir>/<arch>-x<s>-natural``."""
    if arch == "bicubic":
        return f"bicubic-x{scale}"
    name = f"{arch}-x{scale}-natural"
    return name if weights_dir is None else str(weights_dir / name / f"{name}.safetensors")


def lr_folder(out: Path, arch: str, scale: int, dataset: str) -> Path:
    """Where ``table`` saves the stored LR images of one model on one set."""
    return out / "lr" / f"{arch}_x{scale}_{dataset.lower()}"


def run(cmd: list[str], out: Path, reuse: bool) -> dict:
    if not (reuse and out.exists()):
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, env=benchmarks.env())
    return json.loads(out.read_text())


def evaluations(args) -> list[dict]:
    """Every (scale, method, set) ``{scale, arch, set, ref, result, command}``: ``refscale evaluate``
    (with ``--reuse``, an existing JSON file is read instead); run once per call of the script."""
    if getattr(args, "evaluated", None) is not None:
        return args.evaluated
    from refscale.zoo import weights_cards

    rows, shipped = [], weights_cards()
    for scale in args.scales:
        for arch in ARCHS:
            ref = model_ref(arch, scale, args.weights_dir)
            if arch != "bicubic" and args.weights_dir is None and ref not in shipped:
                print(f"{ref}: no shipped weights, left out", file=sys.stderr)
                continue
            for name in args.sets:
                out = args.out / f"{arch}_x{scale}_{name.lower()}.json"
                cmd = ["refscale", "evaluate", "--data", str(args.data / name), "-m", ref,
                       "--draws", str(args.draws if arch == "irn" else 1), "--json", str(out),
                       "--save-lr", str(lr_folder(args.out, arch, scale, name)), "--force"]
                if args.precision:
                    cmd += ["--precision", args.precision]
                rows.append({"scale": scale, "arch": arch, "set": name, "ref": ref, "command": " ".join(cmd),
                             "result": run(cmd, out, args.reuse)})
    args.evaluated = rows
    return rows


def table_markdown(rows: list[dict], sets: list[str]) -> str:
    """FGRN Table 1 in our numbers (Y and RGB beside the paper's Y), then the colour table."""
    head = " | ".join(f"{s} ours Y | {s} ours RGB | {s} paper Y" for s in sets)
    lines = [f"| scale | method | {head} | training budget |",
             "|---:|---|" + "---:|---:|---:|" * len(sets) + "---|"]
    colour = ["| scale | method | " + " | ".join(f"{s} worst image (PSNR-RGB) | {s} >40 levels" for s in sets) + " |",
              "|---:|---|" + "---|---:|" * len(sets)]
    used = set()
    for (scale, arch) in dict.fromkeys((r["scale"], r["arch"]) for r in rows):
        cells, ccells = [], []
        mine = {r["set"]: r for r in rows if (r["scale"], r["arch"]) == (scale, arch)}
        for name in sets:
            r = mine[name]
            m = r["result"]["mean"]
            if arch != "bicubic":
                used.add(r["result"].get("precision", "fp32"))
            p = PAPER_TABLE1[(arch, scale)][SETS.index(name)]
            cells.append(f"{m['psnr_y']:.2f} / {m['ssim_y']:.4f} | {fmt(m.get('psnr_rgb'), '.2f')} / {fmt(m.get('ssim_rgb'), '.4f')} "
                         f"| {p[0]:.2f} / {p[1]:.4f}")
            ccells.append(f"{worst_cell(r['result'])} | {fmt(m.get('frac_off40'), '.2%')}")
        ref = next(iter(mine.values()))["ref"]
        lines.append(f"| x{scale} | {arch} | {' | '.join(cells)} | {training_budget(card_for(ref))} |")
        colour.append(f"| x{scale} | {arch} | {' | '.join(ccells)} |")
    present = {(r["scale"], r["arch"]) for r in rows}
    missing = [f"{a}-x{sc}-natural" for sc in sorted({r["scale"] for r in rows}) for a in ARCHS if (sc, a) not in present]
    if missing:
        lines.append(f"\nNo shipped weights, left out: {', '.join(missing)}.")
    return ("PSNR / SSIM on Y and on RGB (border of `scale` pixels cropped); paper = FGRN Table 1, Y only "
            f"(DIV2K training at full budget); learned models run in {' and '.join(sorted(used)) or '-'}:\n\n" + "\n".join(lines)
            + "\n\nColour: the worst image of each set (lowest PSNR-RGB) and the mean fraction of pixels with an RGB channel "
            "off by more than 40 levels:\n\n" + "\n".join(colour)
            + "\n\nCommands:\n\n```\n" + "\n".join(r["command"] for r in rows) + "\n```\n")


def cmd_table(args) -> str:
    text = table_markdown(evaluations(args), args.sets)
    print(text)
    return text


def glance_markdown(rows: list[dict], sets: list[str], ood: dict | None, command: str) -> str:
    """The natural at-a-glance table: PSNR-Y / PSNR-RGB per set (best of each scale in bold), the
    worst image over the sets, >40 levels per set and the out-of-domain cell (OSCD test cities)."""
    lines = [f"| model | steps | {' | '.join(f'{s} Y / RGB' for s in sets)} | worst image (PSNR-RGB) | >40 levels "
             f"({' / '.join(sets)}) | out of domain: OSCD test cities, RGB / Y vs bicubic |",
             "|---|---:|" + "---:|" * len(sets) + "---|---|---|"]
    for scale in dict.fromkeys(r["scale"] for r in rows):
        best = {(s, k): max((r["result"]["mean"].get(k) or -1e9) for r in rows if r["scale"] == scale and r["set"] == s)
                for s in sets for k in ("psnr_y", "psnr_rgb")}
        for arch in dict.fromkeys(r["arch"] for r in rows if r["scale"] == scale):
            mine = {r["set"]: r for r in rows if (r["scale"], r["arch"]) == (scale, arch)}
            ref = next(iter(mine.values()))["ref"]
            card = card_for(ref)
            name = card.get("name", ref)

            def val(s, k):
                m = mine[s]["result"]["mean"]
                v = fmt(m.get(k), ".2f")
                return f"**{v}**" if m.get(k) is not None and m[k] == best[(s, k)] and arch != "bicubic" else v

            cells = [f"{val(s, 'psnr_y')} / {val(s, 'psnr_rgb')}" for s in sets]
            worst = [(s, mine[s]["result"]) for s in sets if worst_cell(mine[s]["result"]) != "-"]
            worst_text = "-"
            if worst:
                from refscale.evaluate import worst_image

                s, result = min(worst, key=lambda t: worst_image(t[1])["psnr_rgb"])
                worst_text = f"{s} {worst_cell(result)}"
            frac = " / ".join(fmt(mine[s]["result"]["mean"].get("frac_off40"), ".2%") for s in sets)
            label = name if arch == "bicubic" else f"`{name}`"
            lines.append(f"| {label} | {card.get('iterations') or '-'} | {' | '.join(cells)} | {worst_text} | {frac} "
                         f"| {ood_cell(ood, name, ('oscd',))} |")
    return (f"Regenerated by `{command}` from the evaluations of the table in \"FGRN vs IRN on natural images\" "
            "(PSNR-Y / PSNR-RGB, t = 1; worst image = lowest PSNR-RGB over the sets; >40 levels = mean fraction of "
            "pixels with an RGB channel off by more than 40 levels; out of domain: `benchmarks/out_of_domain.py`, "
            "\"Out of domain (issue 26)\"):\n\n" + "\n".join(lines) + "\n")


def cmd_glance(args) -> str:
    ood = load_ood(args.ood)
    text = glance_markdown(evaluations(args), args.sets, ood, " ".join(["python -m benchmarks natural_report", *sys.argv[1:]]))
    print(text)
    return text


def cmd_lr_quality(args) -> str:
    head = " | ".join(f"{s} ours | {s} paper" for s in args.sets)
    lines = [f"| scale | method | {head} |", "|---:|---|" + "---:|---:|" * len(args.sets)]
    commands = []
    for scale in args.scales:
        per_set = []
        for name in args.sets:
            out = args.out / f"lrq_x{scale}_{name.lower()}.json"
            cmd = benchmarks.command("lr_quality", "--json", out)
            for arch in ARCHS:
                folder = lr_folder(args.out, arch, scale, name)
                if not folder.is_dir():
                    sys.exit(f"no LR images in {folder}; run `python -m benchmarks natural_report table` first")
                cmd += ["--lr", str(folder)]
            commands.append("python " + " ".join(cmd[1:]))
            per_set.append(list(run(cmd, out, args.reuse).values()))
        for a, arch in enumerate(ARCHS):
            cells = []
            for i, name in enumerate(args.sets):
                m = per_set[i][a]["mean"]
                p = PAPER_TABLE2[(arch, scale)][SETS.index(name)]
                cells.append(f"{m['niqe']:.3f} / {m['piqe']:.3f} | {p[0]:.3f} / {p[1]:.3f}")
            lines.append(f"| x{scale} | {arch} | {' | '.join(cells)} |")
    text = ("LR image quality, NIQE / PIQE on Y (lower is better); paper = FGRN Table 2:\n\n"
            + "\n".join(lines) + "\n\nCommands:\n\n```\n" + "\n".join(commands) + "\n```\n")
    print(text)
    return text


def cmd_curves(args) -> None:
    """Validation PSNR-Y vs step of IRN and FGRN at each scale, from the model cards' ``val_history``."""
    panels = [(f"x{scale}: natural-image validation crops (BSD68 + Sun-Hays80)",
               [model_ref(arch, scale, args.weights_dir) for arch in ARCHS if arch != "bicubic"], {})
              for scale in args.scales]
    learning_curves(panels, ROOT / "docs" / "figures" / "natural_learning_curves.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("table", "glance", "lrq", "curves", "all"))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "natural")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS, help="test sets (default: all three)")
    ap.add_argument("--draws", type=int, default=1, help="IRN decodes averaged per image (default 1)")
    add_precision_option(ap)
    ap.add_argument("--weights-dir", type=Path, default=None, help="run folders instead of the shipped weights")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "natural_eval")
    ap.add_argument("--reuse", action="store_true", help="reuse existing evaluation JSON files")
    ap.add_argument("--ood", type=Path, default=None, help="glance: the results JSON of benchmarks/out_of_domain.py")
    ap.add_argument("--write", type=Path, default=None, help="replace the marked section of this results file")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = []
    if args.what in ("table", "all"):
        parts.append(cmd_table(args))
    if args.what in ("lrq", "all"):
        parts.append(cmd_lr_quality(args))
    if args.what == "curves":
        cmd_curves(args)
    if args.write and parts:
        write_section(args.write, "\n\n".join(parts), START, END)
    if args.what in ("glance", "all"):
        glance = cmd_glance(args)
        if args.write:
            write_section(args.write, glance, GLANCE_START, GLANCE_END)


if __name__ == "__main__":
    main()
