"""Helpers shared by the report scripts (oscd_report.py, natural_report.py)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

def add_precision_option(ap: argparse.ArgumentParser) -> None:
    """``--precision``, passed on to every ``refscale evaluate`` a report runs."""
    ap.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                    help="model arithmetic passed to refscale evaluate (default: its default, auto)")


def training_budget(card: dict) -> str:
    """'N steps x batch B x P px, H h' from a model card ('-' for untrained models)."""
    if not card.get("iterations"):
        return "-"
    data_cfg = card.get("training_config", {}).get("data", {})
    return (f"{card['iterations']} steps x batch {data_cfg.get('batch_size', '?')} x "
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
