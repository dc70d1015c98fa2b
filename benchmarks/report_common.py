"""Helpers shared by the report scripts (oscd_report.py, natural_report.py, the issue-14 studies)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

#: the shared OSCD folder next to the repository (../shared/data/oscd)
OSCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd"


def learning_curves(panels: list[tuple[str, list[str], dict[str, str]]], path: Path) -> None:
    """One panel per ``(title, weights refs, labels)``: validation PSNR-Y against the training step,
    from each model card's ``val_history`` (which spans continued runs; ``labels`` names a ref
    other than by its card's name), with the bicubic baseline of the validation crops."""
    import sys

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from refscale import zoo

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (title, refs, labels) in zip(axes[0], panels):
        bicubic = None
        for ref in refs:
            card = zoo.card_for(ref)
            hist = [h for h in zoo.val_history(card) if "psnr_y" in h]
            if not hist:
                print(f"{ref}: no val_history in its card, left out", file=sys.stderr)
                continue
            label = labels.get(ref, card.get("name", Path(ref).stem))
            ax.plot([h["step"] for h in hist], [h["psnr_y"] for h in hist], marker=".", label=label)
            bicubic = hist[-1].get("bicubic_psnr_y", bicubic)
        if bicubic is not None:
            ax.axhline(bicubic, ls="--", color="gray", lw=1, label="bicubic down/up")
        ax.set_xlabel("training step (batch 8; crops in the model cards)")
        ax.set_ylabel("validation PSNR-Y (dB), t = 1")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    to_palette(path)
    print("wrote", path)


def to_palette(path: Path, colours: int = 32) -> None:
    """Rewrite a line plot as a 32-colour palette PNG (a quarter of the size; the repository's size
    budget): every figure under docs/figures is written through this."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def add_precision_option(ap: argparse.ArgumentParser) -> None:
    """``--precision``, passed on to every ``refscale evaluate`` a report runs."""
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                    help="model arithmetic passed to refscale evaluate (default: its default, auto)")


def add_study_options(ap: argparse.ArgumentParser, data: Path = OSCD, out: str = "JSON of every measurement") -> None:
    """The options of a study that measures or re-tabulates: ``--data``, ``--out`` (JSON),
    ``--md`` (Markdown), ``--load`` (earlier ``--out`` files instead of measuring), ``--threads``."""
    ap.add_argument("--data", type=Path, default=data, help=f"dataset folder (default {data})")
    ap.add_argument("--load", nargs="+", type=Path, default=None, help="tabulate earlier --out files instead of measuring")
    ap.add_argument("--out", type=Path, help=out)
    ap.add_argument("--md", type=Path, help="the Markdown table(s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def write_text(path: Path | None, text: str) -> None:
    """Write ``text`` to ``path`` (its folder created) when a path is given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def training_budget(card: dict) -> str:
    """'N steps x batch B x P px, H h' from a model card ('-' for untrained models). A card
    continued from earlier weights lists its stages, 'K + M + N steps (the last N: batch B x P
    px)', following the ``init_from`` records back to the first weights of another name, which
    it names: 'W (K steps) + N steps x ...' (a warm start, e.g. a natural-image model from an
    OSCD one). B and P are known for the last stage only; H is the wall time of all stages."""
    if not card.get("iterations"):
        return "-"
    data_cfg = card.get("training_config", {}).get("data", {})
    stages, steps, source, init = [], card["iterations"], None, card.get("init_from") or {}
    while init.get("iterations"):
        stages.insert(0, steps - init["iterations"])
        steps = init["iterations"]
        if Path(init["weights"]).stem != card.get("name"):
            source = Path(init["weights"]).stem
            break
        init = init.get("init_from") or {}
    shape = f"batch {data_cfg.get('batch_size', '?')} x {data_cfg.get('patch_size', '?')} px"
    hours = f"{card.get('wall_time_s', 0) / 3600:.2f} h"
    if not stages:
        return f"{steps} steps x {shape}, {hours}"
    first = f"{source} ({steps} steps)" if source else str(steps)
    if source and len(stages) == 1:  # a warm start, then one run: the shape is that run's
        return f"{first} + {stages[0]} steps x {shape}, {hours}"
    return f"{' + '.join([first, *map(str, stages)])} steps (the last {stages[-1]}: {shape}), {hours}"


def page_with(results: Path, start: str) -> Path:
    """The page that holds the ``start`` marker: ``results`` itself, else the one Markdown file
    beside it that does (the docs pages keep each regenerated block beside its text, so a block
    may move between pages: ``--write docs/oscd.md`` finds the ``oscd-glance`` block in
    ``docs/index.md``), else ``results`` (where the block is then appended)."""
    if results.is_file() and start in results.read_text():
        return results
    holders = [p for p in sorted(results.parent.glob("*.md")) if p != results and start in p.read_text()]
    if len(holders) > 1:
        raise SystemExit(f"{start} is in several pages: {', '.join(map(str, holders))}")
    return holders[0] if holders else results


def command_line() -> str:
    """This process's command line as a user would type it: ``python -m benchmarks NAME ARGS``
    (also for ``python -m benchmarks.NAME``; another program: its file name, never its path)."""
    import shlex
    import sys

    from benchmarks import names

    prog = sys.argv[0]
    if prog.endswith(".py"):
        stem = Path(prog).stem
        prog = f"python -m benchmarks {stem}" if stem in names() else Path(prog).name
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


def write_section(results: Path, body: str, start: str, end: str, source: str | list[str] | None = None) -> None:
    """Replace the text between the ``start`` and ``end`` markers in the page that holds them
    (:func:`page_with`; append the block to ``results`` if no page does), and keep the block as
    data: ``results/NAME.json`` beside the page (:mod:`benchmarks.render`, whose renderer then
    writes the page: ``python -m benchmarks render`` gives the same), measured by ``source``
    (default: this command line)."""
    from benchmarks import render

    name = re.fullmatch(r"<!-- ([\w:.-]+):start -->", start).group(1)
    assert end == f"<!-- {name}:end -->", (start, end)
    results = page_with(Path(results), start)
    doc = render.document(name, body, source or command_line())
    render.save(doc, results.parent / "results")
    text = results.read_text() if results.exists() else ""
    if name in render.blocks(text):
        text = render.replace_block(text, name, render.render(doc))
    elif start in text:
        raise SystemExit(f"{results}: the markers of {name} are not alone on their lines")
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + f"{start}\n{render.render(doc)}\n{end}\n"
    results.write_text(text)
    print("updated", results)


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or "-" for a value a result does not have (older JSON files)."""
    return "-" if value is None else format(value, spec)


def worst_cell(result: dict) -> str:
    """'name PSNR-RGB' of the image of lowest PSNR-RGB in a ``refscale evaluate`` result, or "-"."""
    from refscale.evaluate import worst_image

    w = worst_image(result)
    return "-" if w is None else f"{w['name']} {w['psnr_rgb']:.2f}"


def ood_cell(ood: dict | None, weights: str, sets: tuple[str, ...] | None = None) -> str:
    """The "out of domain" cell of an at-a-glance table: PSNR-RGB and PSNR-Y of the weights named
    ``weights`` against bicubic at the same scale on each set (``sets``: only these) of a
    ``benchmarks/out_of_domain.py`` results file, without the verifying encoder where both were
    run; bicubic's own cell gives its values. The reason where the weights were not run; "-"
    where the file has nothing for them."""
    runs = [r for r in (ood or {}).get("runs", {}).values() if r["weights"] == weights and (sets is None or r["set"] in sets)]
    skipped = [r["skipped"] for r in runs if r.get("skipped")]
    if skipped:
        return skipped[0]
    verify = False if any(not r["verify"] for r in runs) else True
    cells = []
    for r in (r for r in runs if r["verify"] == verify):
        base = next((b for b in ood["runs"].values() if b["model"] == f"bicubic-x{r['scale']}" and b["set"] == r["set"]
                     and b["verify"] == verify and b["images"] == r["images"] and not b.get("skipped")), None)
        if base is None or base is r:
            cells.append(f"{r['set']} RGB {r['psnr_rgb']:.2f} / Y {r['psnr_y']:.2f}")
        else:
            cells.append(f"{r['set']} RGB {r['psnr_rgb'] - base['psnr_rgb']:+.2f} / Y {r['psnr_y'] - base['psnr_y']:+.2f}")
    return "; ".join(cells) if cells else "-"


def load_ood(path: Path | None) -> dict | None:
    """The results of ``python -m benchmarks out_of_domain --out PATH`` for an at-a-glance table's
    "out of domain" column; None (an empty column, with a note) where there are none."""
    if path is None:
        return None
    if not path.exists():
        print(f"note: {path} does not exist; the out-of-domain column is empty", file=sys.stderr)
        return None
    return json.loads(path.read_text())
