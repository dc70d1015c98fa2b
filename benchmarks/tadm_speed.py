"""CPU time and memory of one TADM encode/decode with full-size random-init SD 2.1-base parts.

No weights are needed: the UNet and VAE are built from :data:`backbone.SD21_BASE` (hand-written
SD 2.1-base configs; 865.9M + 83.7M parameters) with random weights, which cost exactly as much
to run as the real ones. One synthetic image goes through ``refscale.pipeline.encode`` (PNG
container) and ``refscale.pipeline.decode``; each precision runs in its own process so that the
peak resident memory (``ru_maxrss``) of one does not hide the other's. Prints one JSON object.

    python -m benchmarks tadm_speed --size 512 --scale 16 --precision fp32 bf16 --threads 2

The quality of the output is meaningless (random weights); only time and memory are measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import benchmarks


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class _Timer:
    """Accumulated forward time of a module (forward pre/post hooks)."""

    def __init__(self, module):
        self.seconds, self.calls, self._t = 0.0, 0, 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *args):
        self._t = time.perf_counter()

    def _stop(self, *args):
        self.seconds += time.perf_counter() - self._t
        self.calls += 1


def run_one(size: int, scale: int, precision: str, threads: int, base: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    from refscale import pipeline, zoo
    from refscale.format.container import Packet

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    base_cfg = json.loads(open(base).read()) if base.endswith(".json") else base
    model = zoo.build(f"tadm-x{scale}", base=base_cfg).eval()
    build_s = time.perf_counter() - t0
    rss_built = _rss_mb()
    timers = {"vae_encoder": _Timer(model.vae.encoder), "unet": _Timer(model.unet), "vae_decoder": _Timer(model.vae.decoder)}
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    hr = torch.stack([0.5 + 0.4 * torch.sin(9 * xx), 0.5 + 0.4 * torch.cos(7 * yy), (xx + yy) / 2]).unsqueeze(0)

    t = time.perf_counter()
    model.base_fingerprint()  # SHA-256 of the frozen base, once per process (the first encode/decode pays it)
    fingerprint_s = time.perf_counter() - t
    t = time.perf_counter()
    packet = pipeline.encode(model, hr, precision=precision)
    data = packet.to_bytes()
    encode_s = time.perf_counter() - t
    rss_enc = _rss_mb()
    t = time.perf_counter()
    out = pipeline.decode(model, Packet.from_bytes(data))
    decode_s = time.perf_counter() - t
    rss_dec = _rss_mb()
    return {
        "precision": precision, "size": [size, size], "scale": scale, "threads": threads,
        "params": model.num_parameters(), "tadm_weights_params": sum(v.numel() for v in model.state_dict().values()),
        "build_s": round(build_s, 1), "base_fingerprint_s": round(fingerprint_s, 2),
        "encode_s": round(encode_s, 2), "decode_s": round(decode_s, 2),
        "module_s": {k: round(v.seconds, 2) for k, v in timers.items()},
        "module_calls": {k: v.calls for k, v in timers.items()},
        "peak_rss_mb": {"start": round(rss0), "after_build": round(rss_built), "after_encode": round(rss_enc),
                        "after_decode": round(rss_dec)},
        "container_bytes": len(data), "lr_shape": list(packet.lr.shape), "output_finite": bool(torch.isfinite(out).all()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="TADM CPU time and memory with full-size random SD 2.1-base parts")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--scale", type=int, default=16, choices=[16, 32])
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--base", default="sd21-base", help="'sd21-base' or a JSON file of {unet, vae, scheduler} configs")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(a.size, a.scale, a.precision[0], a.threads, a.base)))
        return 0
    import torch

    runs = []
    for prec in a.precision:
        cmd = benchmarks.command("tadm_speed", "--one", "--size", a.size, "--scale", a.scale, "--precision", prec,
                                 "--threads", a.threads, "--base", a.base)
        res = subprocess.run(cmd, capture_output=True, text=True, env=benchmarks.env())
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return res.returncode
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    info = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "runs": runs}
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
