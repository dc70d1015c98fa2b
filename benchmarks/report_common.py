"""Helpers shared by the report scripts (oscd_report.py, natural_report.py, the issue-14 studies)."""
from __future__ import annotations

import argparse
import re
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
    print("wrote", path)


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
    """'N steps x batch B x P px, H h' from a model card ('-' for untrained models); a continued
    run 'K + N steps x ...', a warm start from other weights 'W (K steps) + N steps x ...' (B, P:
    of the last N steps; H: the wall time of all K + N)."""
    if not card.get("iterations"):
        return "-"
    data_cfg = card.get("training_config", {}).get("data", {})
    init = card.get("init_from") or {}
    steps = str(card["iterations"])
    if init.get("iterations"):
        source, own = Path(init["weights"]).stem, card["iterations"] - init["iterations"]
        # a continuation of the same weights: 'K + N'; a warm start from other weights names them
        steps = f"{init['iterations']} + {own}" if source == card.get("name") else f"{source} ({init['iterations']} steps) + {own}"
    return (f"{steps} steps x batch {data_cfg.get('batch_size', '?')} x "
            f"{data_cfg.get('patch_size', '?')} px, {card.get('wall_time_s', 0) / 3600:.2f} h")


def write_section(results: Path, body: str, start: str, end: str) -> None:
    """Replace the text between the ``start`` and ``end`` markers (append the block if absent)."""
    text = results.read_text()
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    results.write_text(text)
    print("updated", results)
