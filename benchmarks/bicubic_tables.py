"""Regenerate the bicubic tables of docs/evaluation.md with the real CLI, one run at a time.

    python benchmarks/bicubic_tables.py [--data ../shared/data] [--out runs/bicubic]

Runs ``refscale evaluate`` for bicubic-x2/x4 on Set5, Set14, Urban100 (literature check) and
on the OSCD test split, writes each JSON/Markdown to ``--out`` and prints two Markdown tables
(with the literature values of FGRN Table 1 beside ours).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

#: bicubic-down / bicubic-up Y-PSNR of the rescaling papers (FGRN Table 1, IRN Table 1)
LITERATURE = {("Set5", 2): 33.66, ("Set5", 4): 28.42, ("Set14", 2): 30.24, ("Set14", 4): 26.00,
              ("Urban100", 2): 26.88, ("Urban100", 4): 23.14}


def run(data: Path, name: str, scale: int, out: Path, split: str | None = None) -> tuple[str, dict]:
    stem = f"{name.lower()}{'_' + split if split else ''}_x{scale}"
    cmd = ["refscale", "evaluate", "--data", str(data), "-m", f"bicubic-x{scale}",
           "--json", str(out / f"{stem}.json"), "--md", str(out / f"{stem}.md"), "--force"]
    if split:
        cmd[4:4] = ["--split", split]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    return " ".join(cmd), json.loads((out / f"{stem}.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", type=Path)
    ap.add_argument("--out", default="runs/bicubic", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    lit_rows = ["| dataset | scale | PSNR-Y | literature | diff | SSIM-Y | PSNR-RGB | SSIM-RGB | SI (LR) | bpp | images |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("Set5", "Set14", "Urban100"):
        for scale in (2, 4):
            _, r = run(args.data / "natural" / name, name, scale, args.out)
            m, lit = r["mean"], LITERATURE[(name, scale)]
            lit_rows.append(f"| {name} | x{scale} | {m['psnr_y']:.2f} | {lit:.2f} | {m['psnr_y'] - lit:+.2f} | {m['ssim_y']:.4f} | "
                            f"{m['psnr_rgb']:.2f} | {m['ssim_rgb']:.4f} | {m['si_lr']:.3f} | {m['bpp']:.3f} | {len(r['images'])} |")
    oscd_rows = ["| scale | PSNR-Y | SSIM-Y | PSNR-RGB | SSIM-RGB | SI (LR) | bpp (container) | bpp LR | images |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for scale in (2, 4):
        _, r = run(args.data / "oscd", "oscd", scale, args.out, split="test")
        m = r["mean"]
        oscd_rows.append(f"| x{scale} | {m['psnr_y']:.2f} | {m['ssim_y']:.4f} | {m['psnr_rgb']:.2f} | {m['ssim_rgb']:.4f} | "
                         f"{m['si_lr']:.3f} | {m['bpp']:.3f} | {m['bpp_lr']:.3f} | {len(r['images'])} |")
    print("\n".join(lit_rows) + "\n\n" + "\n".join(oscd_rows))


if __name__ == "__main__":
    main()
