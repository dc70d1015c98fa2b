"""Inference speed of IRN and RefScale in fp32 / bf16 autocast / channels_last, and what bf16 does to quality.

    python -m benchmarks inference_speed [--size 128] [--reps 3] [--threads N] [--models irn-x2,refscale-x2]

For each model and setting (``model.set_speed(bf16=..., channels_last=...)``, see
``refscale.nn.speed``) it prints HR megapixels per second of ``downscale`` and ``upscale`` on a
synthetic ``size x size`` revisit pair (``refscale.demo``), median of ``reps`` runs after a
warm-up, and the quality change against fp32:

* ``LR dB``: PSNR (RGB, 8-bit) of the setting's LR against the fp32 LR;
* ``HR dB``: PSNR of the setting's upscaling of the fp32 8-bit LR (same z) against fp32's;
* ``d e2e``: change of the end-to-end PSNR (HR -> 8-bit LR -> HR, t = 0, against the
  original) relative to fp32 (negative = worse);
* ``inv err``: max |f^-1(f(x)) - x| of the flow with the exact z (no quantization);
* ``smap ==``: share of similarity-map entries equal to fp32's (RefScale).

Shipped weights are used when present; otherwise a random model whose zero-initialised convs
are perturbed (so the couplings are not the identity) and whose ActNorms are initialised on
the image. The numbers are short single runs on a shared machine: treat them as indicative.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from refscale import metrics, ops, zoo
from refscale.synthetic import synthetic_revisit_pair

SETTINGS = {"fp32": (False, False), "channels_last": (False, True), "bf16": (True, False), "bf16+cl": (True, True)}


def make_model(name: str, hr: torch.Tensor, ref: torch.Tensor | None):
    try:
        return zoo.load(name), "shipped weights"
    except Exception:  # no weights yet: an untrained but non-trivial model
        pass
    torch.manual_seed(0)
    model = zoo.build(name).train()
    with torch.no_grad():
        model.training_losses(hr, ref)  # ActNorm data-dependent init
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model.eval(), "random init, perturbed"


def timed(fn, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(metrics.psnr(a, b, y_channel=False))


def exact_inverse_error(model, hr, ref) -> float:
    with model.speed_context(hr):
        if hasattr(model, "flow_forward"):
            fc, _ = model.encoder_side(hr, ref, training=False)
            y = model.flow_forward(hr, fc)
            x = model.flow_inverse(y, fc)
        else:
            y, _ = model.flow(hr)
            x = model.flow.inverse(y)
    return float((x - hr).abs().max())


def run(name: str, size: int, reps: int) -> None:
    new, old = synthetic_revisit_pair(size, size, seed=1)
    hr = torch.from_numpy(new).permute(2, 0, 1)[None].float() / 255
    ref = torch.from_numpy(old).permute(2, 0, 1)[None].float() / 255
    model, origin = make_model(name, hr, ref if zoo.build(name).needs_reference else None)
    ref = ref if model.needs_reference else None
    mp = size * size / 1e6
    print(f"\n{name} ({origin}), {size}x{size} HR, {torch.get_num_threads()} threads")
    print(f"{'setting':<14} {'down MP/s':>9} {'up MP/s':>8} {'LR dB':>7} {'HR dB':>7} {'d e2e':>7} {'inv err':>9} {'smap ==':>8}")
    base = {}
    with torch.no_grad():
        for setting, (bf16, cl) in SETTINGS.items():
            model.set_speed(bf16=bf16, channels_last=cl)
            t_down, (lr, side) = timed(lambda: model.downscale(hr, ref), reps)
            lr8 = ops.quantize_8bit(lr)
            gen = lambda: torch.Generator().manual_seed(0)
            lr_in = base.get("lr8", lr8)
            side_in = base.get("side", side)
            t_up, hr_from_base = timed(lambda: model.upscale(lr_in, side_in, ref, generator=gen()), reps)
            e2e = psnr(model.upscale(lr8, side, ref, temperature=0.0), hr)
            inv = exact_inverse_error(model, hr, ref)
            if setting == "fp32":
                base = {"lr8": lr8, "side": side, "hr": hr_from_base, "e2e": e2e}
                lr_db = hr_db = float("inf")
            else:
                lr_db, hr_db = psnr(lr8, base["lr8"]), psnr(hr_from_base, base["hr"])
            smap = "-"
            if "smap" in side:
                smap = f"{float((side['smap'] == base['side']['smap']).float().mean()):.4f}"
            print(f"{setting:<14} {mp / t_down:>9.3f} {mp / t_up:>8.3f} {lr_db:>7.2f} {hr_db:>7.2f}"
                  f" {e2e - base['e2e']:>+7.3f} {inv:>9.2e} {smap:>8}")
    model.set_speed()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", default="irn-x2,irn-x4,refscale-x2,refscale-x4")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        run(name.strip(), args.size, args.reps)


if __name__ == "__main__":
    main()
