"""Training speed per model and precision setting, and the PSNR those settings reach.

    python -m benchmarks train_speed                       # batch 8 x 128 px, the four models
    python -m benchmarks train_speed --models irn-x2 --batch 2 --patch 64 --quality-steps 0

Part 1 (speed): for each model and setting (fp32, channels_last, bf16 autocast,
bf16 + channels_last at the first ``--threads`` count, the fast setting at the others),
``--warmup`` untimed then ``--steps`` timed calls
of the engine's own ``training_step`` (loss, backward, gradient norm + clipping, Adam) on a fixed
batch cut from ``refscale.demo.synthetic_revisit_pair``. Prints seconds per step, HR pixels per
second and achieved GFLOP/s, where the FLOPs of one step (forward + backward, convolutions and
matrix products, multiply-add = 2 FLOPs) are counted once in fp32 with
``torch.utils.flop_counter.FlopCounterMode``.

Part 2 (quality): trains each ``--quality-models`` model twice through ``refscale.train.engine``
with its CPU config (``configs/<model>-oscd-cpu.yaml``: OSCD train cities, validation on the two
held-out cities) for ``--quality-steps`` steps at ``--quality-patch`` px, once in fp32 and once
with bf16 + channels_last, the same seed and the same batches, and prints validation PSNR-Y
(fp32 evaluation; temperature 1 and 0) and the final training loss of both. Without the OSCD
folder it falls back to synthetic revisit pairs (and says so).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from refscale import zoo
from refscale.synthetic import synthetic_revisit_pair
from refscale.train.config import load_file
from refscale.train.engine import train, training_step

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {  # name -> (bf16 autocast, channels_last)
    "fp32": (False, False),
    "channels_last": (False, True),
    "bf16": (True, False),
    "bf16+channels_last": (True, True),
}
FAST = "bf16+channels_last"


def make_batch(batch: int, patch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` co-located random crops of synthetic revisit pairs (HR = new image, ref = old)."""
    rng = np.random.default_rng(seed)
    size = max(256, patch)
    new, old = synthetic_revisit_pair(size, size, seed=seed)
    hr, ref = [], []
    for _ in range(batch):
        y, x = rng.integers(0, size - patch + 1, size=2)
        hr.append(torch.from_numpy(new[y:y + patch, x:x + patch].copy()).permute(2, 0, 1))
        ref.append(torch.from_numpy(old[y:y + patch, x:x + patch].copy()).permute(2, 0, 1))
    return torch.stack(hr).float() / 255, torch.stack(ref).float() / 255


def build(arch: str, channels_last: bool):
    torch.manual_seed(0)
    model = zoo.build(arch).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step_flops(arch: str, hr: torch.Tensor, ref: torch.Tensor) -> float:
    """FLOPs of one training step (forward + backward) for this batch, counted in fp32."""
    model = build(arch, False)
    with torch.no_grad():  # data-dependent initialisation outside the count
        model.training_losses(hr[:1], ref[:1] if model.needs_reference else None)
    with FlopCounterMode(display=False) as counter:
        model.training_losses(hr[:1], ref[:1] if model.needs_reference else None)["total"].backward()
    return counter.get_total_flops() * hr.shape[0]


def time_setting(arch: str, setting: str, threads: int, hr, ref, warmup: int, steps: int) -> float:
    """Seconds per training step."""
    bf16, cl = SETTINGS[setting]
    torch.set_num_threads(threads)
    model = build(arch, cl)
    if cl:
        hr, ref = hr.contiguous(memory_format=torch.channels_last), ref.contiguous(memory_format=torch.channels_last)
    ref = ref if model.needs_reference else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-4, weight_decay=1e-5)
    for _ in range(warmup):
        training_step(model.training_losses, opt, params, hr, ref, bf16=bf16, grad_clip=10.0)
    t0 = time.perf_counter()
    for _ in range(steps):
        training_step(model.training_losses, opt, params, hr, ref, bf16=bf16, grad_clip=10.0)
    return (time.perf_counter() - t0) / steps


def synthetic_pairs(root: Path) -> Path:
    """Five synthetic revisit pairs in the pair-folder layout (names pair0..pair4)."""
    from PIL import Image

    for i in range(5):
        new, old = synthetic_revisit_pair(256, 256, seed=100 + i)
        (root / f"pair{i}").mkdir(parents=True)
        Image.fromarray(new).save(root / f"pair{i}" / "hr.png")
        Image.fromarray(old).save(root / f"pair{i}" / "ref.png")
    return root


def quality(arch: str, steps: int, patch: int, data: Path | None, tmp: Path, threads: int | None = None) -> dict[str, dict]:
    """Validation metrics after ``steps`` steps in fp32 and in the fast setting, same seed and batches."""
    config = ROOT / "configs" / f"{arch}-oscd-cpu.yaml"
    base = [f"schedule.steps={steps}", f"data.patch_size={patch}", "val.every_steps=null",
            "checkpoint.every_minutes=null", "log.progress=false", "log.tensorboard=false", "val.crop=128"]
    if threads:
        base.append(f"precision.threads={threads}")
    if data is None:
        base += [f"data.path={synthetic_pairs(tmp / 'pairs') if not (tmp / 'pairs').exists() else tmp / 'pairs'}",
                 "data.split=null", "data.val_names=[pair0]"]
    out = {}
    for setting in ("fp32", FAST):
        bf16, cl = SETTINGS[setting]
        cfg = load_file(config, base + [f"precision.bf16={str(bf16).lower()}", f"precision.channels_last={str(cl).lower()}"])
        t0 = time.perf_counter()
        result = train(cfg, tmp / f"{arch}-{setting}")
        out[setting] = {**result["val"], "loss": result["loss"].get("total", float("nan")),
                        "s_per_step": (time.perf_counter() - t0) / steps}
    return out


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="irn-x2,irn-x4,refscale-x2,refscale-x4")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--threads", default=f"{torch.get_num_threads()},1", help="thread counts; after the first, only the fast setting is timed")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--quality-models", default="irn-x2,refscale-x2")
    ap.add_argument("--quality-steps", type=int, default=25)
    ap.add_argument("--quality-patch", type=int, default=64)
    ap.add_argument("--quality-threads", type=int, default=None, help="override the configs' precision.threads in part 2")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "oscd", help="OSCD folder for part 2")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    settings = [s for s in args.settings.split(",") if s]
    threads = [int(t) for t in args.threads.split(",") if t]

    print(f"$ python -m benchmarks train_speed {' '.join(sys.argv[1:])}")
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, batch {args.batch} x {args.patch} px, "
          f"{args.warmup} warm-up + {args.steps} timed steps per row; load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs on this machine slow every row)\n")
    hr, ref = make_batch(args.batch, args.patch)
    pixels = args.batch * args.patch * args.patch
    if models:
        print("| model | setting | threads | s/step | HR Mpx/s | GFLOP/s | speed-up vs fp32 |")
        print("|---|---|---:|---:|---:|---:|---:|")
    for arch in models:
        flops = step_flops(arch, hr, ref)
        base = None
        for i, n in enumerate(threads):
            for setting in settings:
                if i > 0 and setting != FAST:
                    continue
                sec = time_setting(arch, setting, n, hr, ref, args.warmup, args.steps)
                if base is None and setting == "fp32":
                    base = sec
                speedup = f"{base / sec:.2f}x" if base else "-"
                print(f"| {arch} | {setting} | {n} | {sec:.2f} | {pixels / sec / 1e6:.4f} | {flops / sec / 1e9:.0f} | {speedup} |",
                      flush=True)
        print(f"<!-- {arch}: {flops / args.batch / 1e9:.2f} GFLOP per {args.patch}x{args.patch} training crop -->", flush=True)
    torch.set_num_threads(threads[0])

    qmodels = [m for m in args.quality_models.split(",") if m] if args.quality_steps > 0 else []
    if qmodels:
        data = args.data if args.data.is_dir() else None
        where = f"OSCD ({args.data}), validation on the held-out train cities of each CPU config" if data else \
            "synthetic revisit pairs (OSCD folder not found)"
        print(f"\nPSNR after {args.quality_steps} steps, batch 8 x {args.quality_patch} px, same seed and batches; {where}; "
              "validation: fp32, centre crops 128 px, PSNR-Y border = scale")
        print("| model | setting | val PSNR-Y (t=1) | val PSNR-Y (t=0) | bicubic | final loss | s/step |")
        print("|---|---|---:|---:|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as tmp:
            for arch in qmodels:
                for setting, r in quality(arch, args.quality_steps, args.quality_patch, data, Path(tmp), args.quality_threads).items():
                    print(f"| {arch} | {setting} | {r.get('psnr_y', float('nan')):.2f} | {r.get('psnr_y_t0', float('nan')):.2f} | "
                          f"{r.get('bicubic_psnr_y', float('nan')):.2f} | {r['loss']:.1f} | {r['s_per_step']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
