"""ONNX export check (issue 17): every shipped model exported, run with ONNX Runtime, compared with PyTorch.

    python benchmarks/export_check.py --data ../shared/data/oscd [--tiles 4] [--size 256] [--reps 3] \
        [--models irn-x2-oscd ...] [--json out.json] [--md out.md]

For each model (default: every shipped weights file of the catalogue plus bicubic-x2/x4; TADM and
inter-* are listed as not exportable) both graphs are exported (dynamic H/W, opset 17) and run on
``--tiles`` centre crops of ``--size`` px of the OSCD *test* cities (img2 = HR, img1 = reference):

* ``LR max|d|``: max |PyTorch - ONNX Runtime| of the encoder's LR before rounding (fp32 both);
  ``LR8 !=``: share of 8-bit LR values that differ after the pipeline's rounding;
* ``smap !=``: share of similarity-map levels that differ (RefScale);
* ``HR max|d|``: max |d| of the decoder given the same 8-bit LR, map, reference and z;
* ``PSNR-Y``: end to end, (refscale encode -> refscale decode) and (ONNX encoder on board ->
  ``refscale.onnx.wrap`` -> ``.rsc`` -> refscale decode), mean over tiles, seed 0, t = 1, with
  ``register=False`` (the on-board loop does not register); ``d dB`` = ONNX - PyTorch;
* speed: HR Mpx/s of one ``--size`` tile, median of ``--reps`` after a warm-up, encoder and
  decoder, ONNX Runtime (CPU provider, fp32) vs PyTorch fp32 and bf16 autocast + channels_last
  (``model.set_speed``), with 1 and 2 threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from refscale import metrics, pipeline, zoo
from refscale import onnx as export
from refscale.container import Packet
from refscale.data import discover
from refscale.imageio import read_image


def default_models() -> list[str]:
    return sorted(zoo.weights_cards()) + ["bicubic-x2", "bicubic-x4"]


def tiles(data: str, n: int, size: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    out = []
    for s in discover(data, split="test")[:n]:
        hr, ref = read_image(s.hr), read_image(s.ref)
        h, w = hr.shape[-2:]
        y, x = (h - size) // 2, (w - size) // 2
        out.append((s.name, hr[..., y:y + size, x:x + size].contiguous(), ref[..., y:y + size, x:x + size].contiguous()))
    return out


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def accuracy(model, graphs: dict[str, export.Graph], pairs) -> dict:
    sig = export.signature(model)
    lr_max = hr_max = 0.0
    lr8 = smap_n = smap_d = 0
    lr8_n = 0
    psnr_t, psnr_o, psnr_between = [], [], []
    for name, hr, ref in pairs:
        r = ref if model.needs_reference else None
        feed = {"hr": hr, **({"ref": r} if r is not None else {})}
        ours = export.reference_outputs(model, "encoder", feed)
        theirs = graphs["encoder"].run(**feed)
        lr_max = max(lr_max, float(np.abs(ours["lr"] - theirs["lr"]).max()))
        a = metrics.to_uint8(torch.from_numpy(ours["lr"])).numpy().astype(int)
        b = metrics.to_uint8(torch.from_numpy(theirs["lr"])).numpy().astype(int)
        lr8 += int((a != b).sum())
        lr8_n += a.size
        for k in sig.side:
            smap_d += int((ours[k].astype(int) != theirs[k].astype(int)).sum())
            smap_n += ours[k].size
        # decoder on the same 8-bit LR, side, reference and z
        dec = {"lr": torch.from_numpy(a.astype(np.float32) / 255), **{k: torch.from_numpy(ours[k]) for k in sig.side}}
        if r is not None:
            dec["ref"] = r
        if sig.z_channels:
            dec["z"] = export.latent(model, dec["lr"], 1.0, 0)
        hr_t = export.reference_outputs(model, "decoder", dec, seed=0)["hr"]
        hr_o = graphs["decoder"].run(**dec)["hr"]
        hr_max = max(hr_max, float(np.abs(hr_t - hr_o).max()))
        # end to end: refscale encode -> decode vs ONNX encoder -> wrap -> decode
        packet = pipeline.encode(model, hr, r, register=False, precision="fp32")
        out_t = pipeline.decode(model, Packet.from_bytes(packet.to_bytes()), r, seed=0)
        board = export.onboard_encode(graphs["encoder"], hr, r)
        wrapped = export.wrap(board.lr, board.side, graphs["encoder"].meta, size=board.size, ref=r, tiles=board.tiles)
        out_o = pipeline.decode(model, Packet.from_bytes(wrapped.to_bytes()), r, seed=0)
        s = model.scale
        psnr_t.append(float(metrics.psnr(out_t, hr, crop_border=s)))
        psnr_o.append(float(metrics.psnr(out_o, hr, crop_border=s)))
        psnr_between.append(float(metrics.psnr(out_o, out_t, crop_border=s)))
    return {
        "lr_max_abs": lr_max, "lr8_differ": lr8 / lr8_n, "smap_differ": (smap_d / smap_n) if smap_n else None,
        "hr_max_abs": hr_max, "psnr_y_pytorch": float(np.mean(psnr_t)), "psnr_y_onnx": float(np.mean(psnr_o)),
        # the two reconstructions against each other, worst tile (inf: identical 8-bit pixels everywhere)
        "psnr_y_onnx_vs_pytorch_min": float(np.min(psnr_between)),
    }


def speed(model, paths: dict[str, Path], hr, ref, reps: int) -> dict:
    sig = export.signature(model)
    r = ref if model.needs_reference else None
    enc = {"hr": hr, **({"ref": r} if r is not None else {})}
    with torch.no_grad():
        lr, side = model.downscale(hr, r)
    dec = {"lr": metrics.to_uint8(lr).float() / 255, **{k: side[k] for k in sig.side}}
    if r is not None:
        dec["ref"] = r
    if sig.z_channels:
        dec["z"] = export.latent(model, dec["lr"], 1.0, 0)
    mpx = hr.shape[-2] * hr.shape[-1] / 1e6
    out = {}
    old = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for part, feed in (("encoder", enc), ("decoder", dec)):
            g = export.Graph(paths[part], threads=threads)
            np_feed = {k: v.numpy() for k, v in feed.items()}
            out[f"{part}/onnx/{threads}"] = mpx / timed(lambda: g.session.run(None, np_feed), reps)
            for prec in ("fp32", "bf16"):
                if not model.supports_bf16 and prec == "bf16":
                    continue
                if model.supports_bf16:
                    model.set_speed(bf16=prec == "bf16", channels_last=prec == "bf16")
                gen = torch.Generator()
                with torch.no_grad():
                    if part == "encoder":
                        fn = lambda: model.downscale(hr, r)  # noqa: E731
                    else:
                        sd = {k: feed[k] for k in sig.side}
                        fn = lambda: model.upscale(feed["lr"], sd, r, generator=gen.manual_seed(0))  # noqa: E731
                    out[f"{part}/{prec}/{threads}"] = mpx / timed(fn, reps)
                if model.supports_bf16:
                    model.set_speed(False, False)
    torch.set_num_threads(old)
    return out


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--tiles", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--speed-size", type=int, default=None, help="side of the speed tile (default --size)")
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = args.models or default_models()
    pairs = tiles(args.data, args.tiles, args.size)
    result = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "tiles": [n for n, _, _ in pairs],
              "size": args.size, "speed_size": args.speed_size or args.size, "reps": args.reps, "cpu": platform.processor() or platform.machine(),
              "load_before": load_avg(), "torch": torch.__version__, "models": {}, "not_exportable": {}}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    for name, spec in zoo.architectures().items():
        reason = export.refusal(spec.cls, name)
        if reason:
            result["not_exportable"][name] = reason
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            t0 = time.perf_counter()
            model = zoo.load(name)
            paths = {}
            checks = {}
            for part in export.PARTS:
                paths[part] = Path(tmp) / f"{name}-{part}.onnx"
                meta = export.export_onnx(model, part, paths[part])
                checks[part] = meta["check"]["max_abs_diff"]
            graphs = {part: export.Graph(paths[part], threads=2) for part in export.PARTS}
            torch.set_num_threads(2)
            acc = accuracy(model, graphs, pairs)
            k = args.speed_size or args.size
            spd = speed(model, paths, pairs[0][1][..., :k, :k].contiguous(), pairs[0][2][..., :k, :k].contiguous(), args.reps)
            result["models"][name] = {"accuracy": acc, "speed": spd, "export_check": checks,
                                      "onnx_bytes": {k: v.stat().st_size for k, v in paths.items()},
                                      "seconds": time.perf_counter() - t0}
            print(name, json.dumps(result["models"][name]), flush=True)
            if args.json:  # partial results survive an interrupted run
                Path(args.json).write_text(json.dumps({**result, "load_after": load_avg()}, indent=2) + "\n")
    result["load_after"] = load_avg()
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    md = to_markdown(result)
    if args.md:
        Path(args.md).write_text(md)
    print(md)
    return 0


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def to_markdown(r: dict) -> str:
    between = all("psnr_y_onnx_vs_pytorch_min" in m["accuracy"] for m in r["models"].values())
    lines = [f"Tiles: {len(r['tiles'])} x {r['size']} px centre crops of the OSCD test cities {', '.join(r['tiles'])}; "
             f"torch {r['torch']}, onnxruntime {r['onnxruntime']}; load average {r['load_before']} before, "
             f"{r['load_after']} after.", "",
             "| model | LR max\\|d\\| | LR 8-bit values != | smap levels != | HR max\\|d\\| (decoder) | PSNR-Y refscale | "
             "PSNR-Y ONNX enc -> decode | d dB |" + (" ONNX vs refscale decode, PSNR-Y worst tile |" if between else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if between else "")]
    for name, m in r["models"].items():
        a = m["accuracy"]
        lines.append(f"| {name} | {a['lr_max_abs']:.1e} | {a['lr8_differ']:.4%} | "
                     f"{_f(a['smap_differ'], '{:.3%}')} | {a['hr_max_abs']:.1e} | {a['psnr_y_pytorch']:.2f} | "
                     f"{a['psnr_y_onnx']:.2f} | {a['psnr_y_onnx'] - a['psnr_y_pytorch']:+.5f} |"
                     + (f" {_f(a['psnr_y_onnx_vs_pytorch_min'], '{:.1f}')} |" if between else ""))
    lines += ["", f"Speed, HR Mpx/s on one {r.get('speed_size', r['size'])} px tile (median of {r['reps']}), encoder / decoder:", "",
              "| model | ONNX RT 1 thr | ONNX RT 2 thr | PyTorch fp32 1 thr | PyTorch fp32 2 thr | PyTorch bf16 1 thr | PyTorch bf16 2 thr |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in r["models"].items():
        s = m["speed"]
        cells = []
        for key in ("onnx/1", "onnx/2", "fp32/1", "fp32/2", "bf16/1", "bf16/2"):
            e, d = s.get(f"encoder/{key}"), s.get(f"decoder/{key}")
            cells.append("-" if e is None else f"{e:.3g} / {d:.3g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if r["not_exportable"]:
        lines += ["", "Not exportable (clear error): " + "; ".join(f"`{k}`" for k in r["not_exportable"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
