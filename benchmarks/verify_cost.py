"""What the verifying encoder costs in time (issue 26): encode with and without the check.

    python benchmarks/verify_cost.py --models refscale-x2 irn-x2 fgrn-x2-oscd irn-x4 \\
        --data ../shared/data/oscd --names aguasclaras bordeaux --threads 2 --md verify_cost.md

For each model and image (a sample of ``refscale.data.discover``: an OSCD city gives its new image
and reference): the wall time of ``refscale.pipeline.encode`` without (``verify=False``) and with
the check (median of ``--reps`` runs after one warm-up), of one decode, the number of decodes the
check ran (``rounds``) and the share of blocks it gave to bicubic. Precision: the pipeline's
default (bf16 where the CPU has it natively). Say what else ran on the machine when quoting it.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import refscale
from refscale import pipeline
from refscale.data import discover, iter_full_images


def timed(fn, reps: int):
    fn()  # warm-up
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["refscale-x2", "irn-x2", "fgrn-x2-oscd"])
    ap.add_argument("--data", required=True, help="dataset folder or manifest")
    ap.add_argument("--names", nargs="*", default=None, help="samples to time (default: the first two)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = discover(args.data)
    samples = [s for s in samples if s.name in args.names] if args.names else samples[:2]
    lines = [f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads, median of {args.reps} runs", "",
             "| model | image | Mpx | encode, no check (s) | encode with the check (s) | check / encode | decode (s) | rounds | blocks to bicubic |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models:
        model = refscale.load(name)
        for image, hr, ref in iter_full_images(samples, multiple=model.alignment):
            ref = ref if model.needs_reference else None
            plain, packet = timed(lambda: pipeline.encode(model, hr, ref, verify=False), args.reps)
            checked, vpacket = timed(lambda: pipeline.encode(model, hr, ref), args.reps)
            dec, _ = timed(lambda: pipeline.decode(model, vpacket.to_bytes(), ref), args.reps)
            v = vpacket.verify_report
            mpx = hr.shape[-2] * hr.shape[-1] / 1e6
            done = ("-", "not checked") if v is None else (v["rounds"], f"{v['fallback_blocks']}/{v['blocks']}")
            lines.append(f"| {name} | {image} | {mpx:.2f} | {plain:.2f} | {checked:.2f} | {checked / plain:.1f}x | {dec:.2f} "
                         f"| {done[0]} | {done[1]} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
