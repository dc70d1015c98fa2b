"""Parameters and compute of the learned rescalers, next to the papers' numbers.

    python -m benchmarks model_complexity [--size 128]

Compute is counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products; element-wise ops are not counted, as in thop) while the model downscales (``down``)
and upscales (``up``) one ``size x size`` HR image, and scaled to one HR megapixel. It is
reported as GMAC (multiply-accumulates; what thop and most papers call "FLOPs") per HR
megapixel.

The supplement's Table 1 gives FLOPs for "the RS test set" without the image size: IRN 10.4G
(x2) / 58.6G (x4), RefScale 68.3G / 80.6G. IRN's architecture is known exactly, so its
counted cost tells the image size the paper must have used (assuming down + up were counted
as MACs): ``implied MP = paper IRN GMAC / our IRN GMAC per MP``. The paper's RefScale figure
divided by that implied size is the number comparable to ours (last column). The two implied
sizes differ by 4x between x2 and x4, i.e. the paper seems to have used a fixed LR size.

The last row is RefScale x2 with Ref-Net at full HR resolution (``cond_stride=1``), the
variant whose compute is closest to the paper's implied x2 figure; the default
(``cond_stride=2``: Ref-Net features at the first INN level, H/2) is ~3x cheaper.
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from refscale import zoo

PAPER = {  # supplement Table 1: params, "FLOPs" (down + up, unknown image size)
    "irn-x2": (1.7e6, 10.4e9), "irn-x4": (4.4e6, 58.6e9),
    "refscale-x2": (2.8e6, 68.3e9), "refscale-x4": (3.5e6, 80.6e9),
}


def gmacs(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2 / 1e9


def measure(name: str, size: int, **overrides) -> dict:
    torch.manual_seed(0)
    model = zoo.build(name, **overrides).eval()
    hr = torch.rand(1, 3, size, size)
    ref = torch.rand(1, 3, size, size) if model.needs_reference else None
    out = {}
    with torch.no_grad():
        down = gmacs(lambda: out.update(zip(("lr", "side"), model.downscale(hr, ref))))
        up = gmacs(lambda: model.upscale(out["lr"], out["side"], ref, temperature=0.0))
    per_mp = 1e6 / (size * size)
    return {"params": model.num_parameters(), "down": down * per_mp, "up": up * per_mp}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="HR side used for counting (result is per megapixel)")
    args = ap.parse_args(argv)
    rows = {name: measure(name, args.size) for name in PAPER}
    variants = {"refscale-x2 cond_stride=1": ("refscale-x2", {"cond_stride": 1})}
    rows.update({label: measure(name, args.size, **kw) for label, (name, kw) in variants.items()})
    print(f"compute counted on a {args.size}x{args.size} HR image, scaled to 1 HR megapixel (GMAC = 1e9 multiply-adds)")
    print(f"{'model':<27} {'params':>10} {'paper':>7} {'down GMAC/MP':>13} {'up GMAC/MP':>11} {'sum GMAC/MP':>12}"
          f" {'paper GMAC':>11} {'implied MP':>11} {'paper GMAC/MP':>14}")
    for label, r in rows.items():
        name = variants[label][0] if label in variants else label
        p_params, p_flops = PAPER[name]
        total = r["down"] + r["up"]
        irn = rows["irn-x" + name[-1]]
        implied_mp = PAPER["irn-x" + name[-1]][1] / 1e9 / (irn["down"] + irn["up"])
        print(f"{label:<27} {r['params'] / 1e6:>9.3f}M {p_params / 1e6:>6.1f}M {r['down']:>13.1f} {r['up']:>11.1f}"
              f" {total:>12.1f} {p_flops / 1e9:>10.1f}G {implied_mp:>11.3f} {p_flops / 1e9 / implied_mp:>14.1f}")


if __name__ == "__main__":
    main()
