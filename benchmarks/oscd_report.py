"""The OSCD reproduction of RefScale's Table 1 (issue 5): table, figures, change masks, curves.

    python -m benchmarks oscd_report all --data ../shared/data/oscd --scales 2 4 --write docs/oscd.md

* ``table``: ``refscale evaluate --split test --draws 5`` for bicubic, IRN, RefScale and FGRN at each
  scale (the shipped weights unless ``--weights-dir`` points at run folders), written to
  ``--out`` as JSON/Markdown; prints our rows beside the paper's Table 1 (RS dataset) and the
  training budget from each model card, and replaces the marked section of
  ``docs/oscd.md`` (``--write docs/oscd.md``).
* ``glance``: the "Shipped models at a glance" table from the same evaluations (``table``'s JSON
  files in ``--out``; missing ones are run): PSNR/SSIM on Y and RGB, the gain over bicubic, the
  worst image, the >40-levels fraction, SI, bpp, size, training and, with ``--ood`` (the JSON of
  ``benchmarks/out_of_domain.py``), the models' PSNR-RGB / PSNR-Y against bicubic on the natural
  test sets; ``--write`` replaces its ``oscd-glance`` block.
* ``figures``: for three test cities, HR / reference / LR of RefScale and IRN / similarity map
  / reconstructions (the paper's Fig. 3 and 5) -> ``docs/figures/oscd_<city>_x<s>.png``.
* ``change``: mean transmitted similarity inside vs outside the changed areas
  (``change_mask.png``) of the train cities.
* ``probe``: RefScale decoded with the true, an oracle, a wrong and a flat reference on the two
  held-out train cities, and the similarity a random init starts from (``--extra`` adds
  variants; one without a similarity map shows mean S as "-").
* ``curves``: validation PSNR-Y vs step from each model card's ``val_history`` -> one figure.
* ``heldout``: the full held-out train cities (aguasclaras, bordeaux; never trained on), PNG LR,
  t = 1, ``--draws`` seeds: PSNR-Y overall, inside and outside the changed areas
  (``change_mask.png``) and the colour error (mean signed error per RGB channel, 8-bit levels)
  for bicubic, IRN, RefScale, FGRN and ``--extra`` weights. The shipping rule of the training campaign
  (issue 13: ship only a >= 0.2 dB gain) reads this table; no test city is touched.

Test cities are only touched by ``table`` and ``figures``; nothing here tunes anything.
``figures`` and ``curves`` need matplotlib (``pip install ".[report]"``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from refscale import zoo

from benchmarks import store
from benchmarks.report_common import (add_precision_option, fmt, learning_curves, load_ood, ood_cell, training_budget, worst_cell,
                                      write_section)

ROOT = Path(__file__).resolve().parents[1]
FIG_DIR = ROOT / "docs" / "figures"
#: RefScale Table 1, RS dataset (SPOT-5, not OSCD): PSNR, SSIM, SI, bpp
PAPER = {
    ("bicubic", 2): (28.82, 0.878, 0.454, 2.55), ("bicubic", 4): (23.21, 0.658, 0.561, 3.12),
    ("irn", 2): (38.22, 0.983, 0.487, 2.59), ("irn", 4): (30.66, 0.876, 0.569, 3.13),
    ("refscale", 2): (43.63, 0.994, 0.385, 2.03), ("refscale", 4): (31.31, 0.897, 0.451, 2.37),
}
FIGURE_CITIES = ("dubai", "valencia", "lasvegas")
START, END = "<!-- oscd-table:start -->", "<!-- oscd-table:end -->"
GLANCE_START, GLANCE_END = "<!-- oscd-glance:start -->", "<!-- oscd-glance:end -->"
NATURAL_SETS = ("Set5", "Set14", "Urban100")  # the out-of-domain sets of the OSCD models


def model_ref(arch: str, scale: int, weights_dir: Path | None) -> str:
    """Catalogue name, or the final weights of a run folder ``<weights_dir>/<arch>-x<s>-oscd``."""
    if arch == "bicubic":
        return f"{arch}-x{scale}"
    if weights_dir is None:  # the catalogue's fgrn-xN are the natural-image weights
        return f"fgrn-x{scale}-oscd" if arch == "fgrn" else f"{arch}-x{scale}"
    return str(weights_dir / f"{arch}-x{scale}-oscd" / f"{arch}-x{scale}-oscd.safetensors")


LEARNED = ("irn", "refscale", "fgrn")


def learned_refs(scale: int, weights_dir: Path | None) -> list[str]:
    """IRN, RefScale and FGRN at ``scale``: a run folder's weights where they exist, else the shipped ones."""
    refs = [model_ref(arch, scale, weights_dir) for arch in LEARNED]
    return [r if not r.endswith(".safetensors") or Path(r).exists() else model_ref(arch, scale, None)
            for r, arch in zip(refs, LEARNED)]


def evaluations(args) -> list[dict]:
    """Every Table 1 row ``{scale, arch, ref, result, command}``: ``refscale evaluate`` on the test
    split (with ``--reuse``, an existing JSON file in ``--out`` is read instead); run once per call
    of the script."""
    if getattr(args, "evaluated", None) is not None:
        return args.evaluated
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scale in args.scales:
        for arch in ("bicubic", *LEARNED):
            ref = model_ref(arch, scale, args.weights_dir)
            stem = f"{arch}_x{scale}"
            cmd = ["refscale", "evaluate", "--data", str(args.data), "--split", "test", "-m", ref,
                   "--draws", str(args.draws), "--json", str(args.out / f"{stem}.json"),
                   "--md", str(args.out / f"{stem}.md"), "--force"]
            if args.precision:
                cmd += ["--precision", args.precision]
            if not args.reuse or not (args.out / f"{stem}.json").exists():
                print("$", " ".join(cmd), file=sys.stderr, flush=True)
                subprocess.run(cmd, check=True)
            rows.append({"scale": scale, "arch": arch, "ref": ref, "command": " ".join(cmd),
                         "result": json.loads((args.out / f"{stem}.json").read_text())})
    args.evaluated = rows
    return rows


def table_markdown(rows: list[dict]) -> str:
    """Table 1 with our rows beside the paper's (RGB columns of older JSON files without them: "-")."""
    lines = [
        "| scale | method | PSNR-Y | SSIM-Y | PSNR-RGB | SSIM-RGB | worst image (PSNR-RGB) | >40 levels | SI (LR) | bpp (.rsc) "
        "| bpp side | paper PSNR / SSIM / SI / bpp | training budget |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        m, scale = row["result"]["mean"], row["scale"]
        p = PAPER.get((row["arch"], scale))
        paper = "-" if p is None else f"{p[0]:.2f} / {p[1]:.3f} / {p[2]:.3f} / {p[3]:.2f}"
        lines.append(f"| x{scale} | {row['arch']} | {m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {fmt(m.get('psnr_rgb'), '.2f')} | "
                     f"{fmt(m.get('ssim_rgb'), '.4f')} | {worst_cell(row['result'])} | {fmt(m.get('frac_off40'), '.2%')} | "
                     f"{m['si_lr']:.3f} | {m['bpp']:.3f} | {m['bpp_side']:.4f} | {paper} | {training_budget(zoo.card_for(row['ref']))} |")
    return ("\n".join(lines) + "\n\nCommands:\n\n```\n" + "\n".join(r["command"] for r in rows) + "\n```\n")


def cmd_table(args) -> str:
    text = table_markdown(evaluations(args))
    print(text)
    return text


def _weights_size(ref: str, card: dict) -> str:
    path = Path(ref) if ref.endswith(".safetensors") else zoo.WEIGHTS_DIR / f"{card.get('name', ref)}.safetensors"
    return f"{path.stat().st_size / 1e6:.1f} MB" if card and path.is_file() else "-"


def glance_markdown(rows: list[dict], ood: dict | None, command: str) -> str:
    """The at-a-glance table: one row per model, gains over bicubic of the same scale, the best
    PSNR-Y and PSNR-RGB of each scale in bold, and the out-of-domain cell (natural test sets)."""
    lines = [
        "| model | PSNR-Y | vs bicubic | SSIM-Y | PSNR-RGB | vs bicubic | SSIM-RGB | worst image (PSNR-RGB) | >40 levels "
        "| SI of the LR | bpp | params | stored | training | out of domain: natural sets, RGB / Y vs bicubic |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for scale in sorted({r["scale"] for r in rows}):
        mine = [r for r in rows if r["scale"] == scale]
        base = next(r["result"]["mean"] for r in mine if r["arch"] == "bicubic")
        best = {k: max((r["result"]["mean"].get(k) or -1e9) for r in mine) for k in ("psnr_y", "psnr_rgb")}
        for r in mine:
            m, card = r["result"]["mean"], zoo.card_for(r["ref"])
            name = card.get("name", r["ref"])
            label = r["ref"] if name == r["ref"] else f"{Path(r['ref']).stem if r['ref'].endswith('.safetensors') else r['ref']} (`{name}`)"

            def val(k, spec=".2f"):
                v = fmt(m.get(k), spec)
                return f"**{v}**" if m.get(k) is not None and m[k] == best.get(k) and r["arch"] != "bicubic" else v

            def gain(k):
                return "" if r["arch"] == "bicubic" or m.get(k) is None or base.get(k) is None else f"{m[k] - base[k]:+.2f}"

            params = f"{card['params'] / 1e6:.2f}M" if card.get("params") else "0"
            lines.append(f"| {label} | {val('psnr_y')} | {gain('psnr_y')} | {fmt(m.get('ssim_y'), '.4f')} | {val('psnr_rgb')} "
                         f"| {gain('psnr_rgb')} | {fmt(m.get('ssim_rgb'), '.4f')} | {worst_cell(r['result'])} "
                         f"| {fmt(m.get('frac_off40'), '.2%')} | {m['si_lr']:.3f} | {m['bpp']:.3f} | {params} "
                         f"| {_weights_size(r['ref'], card)} | {training_budget(card)} | {ood_cell(ood, name, NATURAL_SETS)} |")
    draws = max(r["result"].get("draws", 1) for r in rows)
    precision = " and ".join(sorted({r["result"].get("precision") or "-" for r in rows if r["arch"] != "bicubic"})) or "-"
    cities = len(rows[0]["result"]["images"])
    at_t0 = [r["ref"] for r in rows if r["arch"] != "bicubic" and r["result"].get("temperature") == 0]
    temps = f"t = 1 ({', '.join(at_t0)}: t = 0, its weights' decoding temperature)" if at_t0 else "t = 1"
    return (f"Regenerated by `{command}` from the Table 1 evaluations ({cities} test cities, PNG LR, {temps}, PSNR/SSIM averaged "
            f"over {draws} decode(s) of the stochastic models, {precision}; worst image = lowest "
            "PSNR-RGB; >40 levels = mean fraction of pixels with an RGB channel off by more than 40 levels; "
            "out of domain: `benchmarks/out_of_domain.py`, \"Out of domain (issue 26)\"):\n\n" + "\n".join(lines) + "\n")


def cmd_glance(args) -> str:
    ood = load_ood(args.ood)
    text = glance_markdown(evaluations(args), ood, " ".join(["python -m benchmarks oscd_report", *sys.argv[1:]]))
    print(text)
    return text


@torch.no_grad()
def _run_models(hr, ref, scale, weights_dir):
    import refscale
    from refscale.format.container import Packet

    out = {}
    for arch in ("irn", "refscale"):
        model = refscale.load(model_ref(arch, scale, weights_dir))
        packet = model.encode(hr, ref if model.needs_reference else None)
        data = packet.to_bytes()
        rec = model.decode(Packet.from_bytes(data), ref if model.needs_reference else None, seed=0)
        out[arch] = {"lr": packet.lr, "rec": rec, "bpp": len(data) * 8 / (hr.shape[-2] * hr.shape[-1]),
                     "smap": packet.side.get("smap"), "levels": getattr(model, "levels_q", None), "model": model}
    return out


def cmd_figures(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from refscale.io.image import read_image
    from refscale.metrics import psnr, spatial_information

    FIG_DIR.mkdir(parents=True, exist_ok=True)
    for scale in args.scales:
        for city in FIGURE_CITIES:
            hr = read_image(args.data / city / "img2.png")
            ref = read_image(args.data / city / "img1.png")
            c = args.crop
            hr, ref = hr[..., :c, :c], ref[..., :c, :c]
            res = _run_models(hr, ref, scale, args.weights_dir)
            smap = res["refscale"]["smap"]
            fig, axes = plt.subplots(2, 4, figsize=(16, 8.4))
            img = lambda t: t[0].permute(1, 2, 0).clamp(0, 1).numpy()  # noqa: E731
            panels = [
                (img(hr), "HR (new, img2)"), (img(ref), "reference (old, img1)"),
                (res["refscale"]["lr"], "LR RefScale  SI %.3f, %.2f bpp" % (
                    float(spatial_information(torch.from_numpy(res["refscale"]["lr"]).permute(2, 0, 1)[None].float() / 255)[0]),
                    res["refscale"]["bpp"])),
                (res["irn"]["lr"], "LR IRN  SI %.3f, %.2f bpp" % (
                    float(spatial_information(torch.from_numpy(res["irn"]["lr"]).permute(2, 0, 1)[None].float() / 255)[0]),
                    res["irn"]["bpp"])),
                (None, "similarity map (transmitted)"),
                (img(res["refscale"]["rec"]), "RefScale rebuilt  PSNR-Y %.2f" % float(psnr(res["refscale"]["rec"], hr, crop_border=scale)[0])),
                (img(res["irn"]["rec"]), "IRN rebuilt  PSNR-Y %.2f" % float(psnr(res["irn"]["rec"], hr, crop_border=scale)[0])),
                (np.abs(img(hr) - img(ref)).mean(-1), "|HR - reference| (mean over RGB)"),
            ]
            for ax, (data, title) in zip(axes.flat, panels):
                if data is None:
                    s = smap[0, 0].astype(np.float32) / (res["refscale"]["levels"] - 1)
                    im = ax.imshow(s, cmap="jet", vmin=0, vmax=1)
                    fig.colorbar(im, ax=ax, fraction=0.046)
                elif data.ndim == 2:
                    ax.imshow(data, cmap="gray")
                else:
                    ax.imshow(data, interpolation="nearest")
                ax.set_title(title, fontsize=10)
                ax.axis("off")
            fig.suptitle(f"OSCD test city {city}, x{scale}, top-left {c}x{c} crop")
            fig.tight_layout()
            path = FIG_DIR / f"oscd_{city}_x{scale}.png"
            fig.savefig(path, dpi=72)
            plt.close(fig)
            print("wrote", path.relative_to(ROOT))


@torch.no_grad()
def cmd_change(args) -> str:
    import torch.nn.functional as F

    import refscale
    from refscale import ops
    from refscale.data import read_change_mask
    from refscale.io.image import read_image

    split = json.loads((args.data / "split.json").read_text())
    lines = ["| scale | city | changed pixels | mean S in changed | mean S elsewhere |", "|---:|---|---:|---:|---:|"]
    for scale in args.scales:
        model = refscale.load(model_ref("refscale", scale, args.weights_dir))
        ins, outs = [], []
        for city in split["train"]:
            mask_p = args.data / city / "change_mask.png"
            if not mask_p.exists():
                continue
            hr = read_image(args.data / city / "img2.png")
            ref = read_image(args.data / city / "img1.png")
            hr_p, _ = ops.pad_to_multiple(hr, model.alignment)
            ref_p, _ = ops.pad_to_multiple(ref, model.alignment)
            _, side = model.downscale(hr_p, ref_p)
            s = side["smap"].float() / (model.levels_q - 1)
            s = F.interpolate(s, size=hr_p.shape[-2:], mode="nearest")[..., :hr.shape[-2], :hr.shape[-1]][0, 0]
            mask = torch.from_numpy(read_change_mask(mask_p))
            if mask.sum() == 0:
                continue
            si, so = float(s[mask].mean()), float(s[~mask].mean())
            ins.append(si)
            outs.append(so)
            lines.append(f"| x{scale} | {city} | {100 * float(mask.float().mean()):.1f}% | {si:.3f} | {so:.3f} |")
        lines.append(f"| x{scale} | **mean over cities** | | **{np.mean(ins):.3f}** | **{np.mean(outs):.3f}** |")
    text = "\n".join(lines)
    print(text)
    return text


VAL_CITIES = ("aguasclaras", "bordeaux")  # the held-out train cities of the OSCD configs


@torch.no_grad()
def cmd_probe(args) -> str:
    """Does RefScale use the reference? Decode the held-out train cities (centre crops) with the
    true reference, the HR image itself as an oracle reference, the other city's reference and a
    flat grey image; report PSNR-Y (t = 1) and the mean transmitted similarity. The same maps of
    a randomly initialised model show where the similarity starts."""
    import refscale
    from refscale.io.image import read_image
    from refscale.format.rounding import levels, to_uint8
    from refscale.metrics import psnr

    c = args.crop
    crops = {}
    for city in VAL_CITIES:
        hr, ref = read_image(args.data / city / "img2.png"), read_image(args.data / city / "img1.png")
        t, left = (hr.shape[-2] - c) // 2, (hr.shape[-1] - c) // 2
        crops[city] = (hr[..., t:t + c, left:left + c], ref[..., t:t + c, left:left + c])
    lines = ["| scale | model | reference | " + " | ".join(f"{city} PSNR-Y / mean S" for city in VAL_CITIES) + " |",
             "|---:|---|---|" + "---:|" * len(VAL_CITIES)]
    extras = [(Path(e).stem, refscale.load(e)) for e in args.extra]  # ablations and variants
    for scale in args.scales:
        irn = refscale.load(model_ref("irn", scale, args.weights_dir))
        cells = []
        for city in VAL_CITIES:
            hr = crops[city][0]
            lr, side = irn.downscale(hr)
            out = irn.upscale(to_uint8(lr).float() / 255, side, generator=torch.Generator().manual_seed(0))
            cells.append(f"{float(psnr(out, hr, crop_border=scale)[0]):.2f} / -")
        lines.append(f"| x{scale} | IRN | none | " + " | ".join(cells) + " |")
        torch.manual_seed(0)
        models = [("RefScale", refscale.load(model_ref("refscale", scale, args.weights_dir))),
                  ("RefScale, random init", refscale.load(f"refscale-x{scale}", pretrained=False))]
        models += [(label, m) for label, m in extras if m.scale == scale and m.needs_reference]
        for label, model in models:
            for kind in ("true (img1)", "oracle (HR itself)", "other city's img1", "flat grey"):
                cells = []
                for i, city in enumerate(VAL_CITIES):
                    hr, ref = crops[city]
                    other = crops[VAL_CITIES[1 - i]][1]
                    r = {"true (img1)": ref, "oracle (HR itself)": hr, "other city's img1": other,
                         "flat grey": torch.full_like(ref, 0.5)}[kind]
                    lr, side = model.downscale(hr, r)
                    s_mean = float(side["smap"].float().mean()) / (model.levels_q - 1) if "smap" in side else None
                    if label.endswith("random init"):
                        cells.append(f"- / {s_mean:.3f}")
                        continue
                    out = model.upscale(to_uint8(lr).float() / 255, side, r, generator=torch.Generator().manual_seed(0))
                    s_text = "-" if s_mean is None else f"{s_mean:.3f}"
                    cells.append(f"{float(psnr(out, hr, crop_border=scale)[0]):.2f} / {s_text}")
                lines.append(f"| x{scale} | {label} | {kind} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    return text


@torch.no_grad()
def cmd_heldout(args) -> str:
    """Held-out train cities, whole images: PSNR-Y overall / in changed areas / elsewhere and the
    colour error, averaged over cities (PSNR: mean of per-city values, each the mean over draws)."""
    import refscale
    from refscale.data import read_change_mask
    from refscale.format.container import Packet
    from refscale.io.image import read_image
    from refscale.metrics import psnr, psnr_y_masked

    images = {c: (read_image(args.data / c / "img2.png"), read_image(args.data / c / "img1.png"),
                  torch.from_numpy(read_change_mask(args.data / c / "change_mask.png")))
              for c in VAL_CITIES}
    lines = ["| scale | model | steps | PSNR-Y | PSNR-Y changed | PSNR-Y unchanged | colour error R / G / B | bpp (.rsc) |",
             "|---:|---|---:|---:|---:|---:|---|---:|"]
    rows = []
    extras = list(args.extra)
    for scale in args.scales:
        refs = [f"bicubic-x{scale}", *learned_refs(scale, args.weights_dir)]
        refs += [e for e in extras if zoo.card_for(e).get("arch", "").endswith(f"-x{scale}")]
        for ref in refs:
            model = refscale.load(ref)
            vals = {"all": [], "changed": [], "unchanged": [], "err": [], "bpp": []}
            for city, (hr, img1, mask) in images.items():
                r = img1 if model.needs_reference else None
                data = model.encode(hr, r, precision=args.precision).to_bytes()
                packet = Packet.from_bytes(data)
                per = {"all": [], "changed": [], "unchanged": [], "err": []}
                for seed in range(args.draws if model.stochastic else 1):
                    rec = model.decode(packet, r, seed=seed)
                    per["all"].append(float(psnr(rec, hr, crop_border=scale)[0]))
                    per["changed"].append(psnr_y_masked(rec, hr, mask, scale))
                    per["unchanged"].append(psnr_y_masked(rec, hr, ~mask, scale))
                    diff = levels(rec) - levels(hr)
                    per["err"].append(diff[0].mean(dim=(1, 2)).numpy())
                for k in per:
                    vals[k].append(np.mean(per[k], axis=0))
                vals["bpp"].append(len(data) * 8 / (hr.shape[-2] * hr.shape[-1]))
            card = zoo.card_for(ref)
            label = f"{Path(ref).parent.name}/{Path(ref).stem}" if ref.endswith(".safetensors") else ref
            err = np.mean(vals["err"], axis=0)
            row = {"scale": scale, "model": label, "steps": card.get("iterations"),
                   **{k: float(np.mean(vals[k])) for k in ("all", "changed", "unchanged", "bpp")},
                   "colour_error_rgb": [round(float(e), 2) for e in err]}
            rows.append(row)
            lines.append(f"| x{scale} | {label} | {row['steps'] or '-'} | {row['all']:.2f} | {row['changed']:.2f} | "
                         f"{row['unchanged']:.2f} | {' / '.join(f'{e:+.2f}' for e in err)} | {row['bpp']:.3f} |")
            print(lines[-1], flush=True)
    store.save(rows, args.out / "heldout.json")
    text = "\n".join(lines)
    print(text)
    return text


def cmd_curves(args) -> None:
    """Validation PSNR-Y vs step of IRN, RefScale and FGRN at each scale (and any ``--extra`` weights),
    from the ``val_history`` of each model card, which spans continued runs (``model.init_weights``)."""
    panels = []
    for scale in args.scales:
        extra = [e for e in args.extra if zoo.card_for(e).get("arch", "").endswith(f"-x{scale}")]
        panels.append((f"x{scale}: held-out train cities aguasclaras + bordeaux", learned_refs(scale, args.weights_dir) + extra,
                       {e: Path(e).stem for e in extra}))  # extras: by file name
    learning_curves(panels, FIG_DIR / "oscd_learning_curves.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("table", "glance", "figures", "change", "probe", "curves", "heldout", "all"))
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "oscd")
    ap.add_argument("--scales", type=int, nargs="+", default=[2])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--weights-dir", type=Path, default=None, help="run folders instead of the shipped weights")
    ap.add_argument("--extra", nargs="*", default=[], help="more weights (.safetensors with cards) for the curves and the probe, e.g. ablations")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "oscd_eval")
    ap.add_argument("--crop", type=int, default=384, help="crop size (HR pixels) of the figures and of the probe")
    add_precision_option(ap)
    ap.add_argument("--reuse", action="store_true", help="reuse existing evaluation JSON files")
    ap.add_argument("--ood", type=Path, default=None, help="glance: the results JSON of benchmarks/out_of_domain.py")
    ap.add_argument("--write", type=Path, default=None, help="replace the marked section of this results file")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    parts = []
    if args.what in ("table", "all"):
        parts.append(cmd_table(args))
    if args.what in ("change", "all"):
        parts.append("Similarity inside vs outside the changed areas (train cities, `change_mask.png`):\n\n" + cmd_change(args))
    if args.what in ("probe", "all"):
        parts.append(f"What the reference does (held-out train cities, {args.crop} px centre crops, t = 1, seed 0; "
                     "mean S = mean transmitted similarity in [0, 1]):\n\n" + cmd_probe(args))
    if args.what in ("heldout", "all"):
        parts.append(f"Held-out train cities ({', '.join(VAL_CITIES)}; whole images, PNG LR, t = 1, {args.draws} draws; "
                     "changed = `change_mask.png`; colour error = mean signed error per channel in 8-bit levels):\n\n"
                     + cmd_heldout(args))
    if args.what in ("figures", "all"):
        cmd_figures(args)
    if args.what in ("curves", "all"):
        cmd_curves(args)
    if args.write and parts:
        write_section(args.write, "\n\n".join(parts), START, END)
    if args.what in ("glance", "all"):
        glance = cmd_glance(args)
        if args.write:
            write_section(args.write, glance, GLANCE_START, GLANCE_END)


if __name__ == "__main__":
    main()
