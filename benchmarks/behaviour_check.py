"""Bit-identity check of a refactoring (issue 18): hashes of the stored LR and of the
reconstructions (t = 0 and t = 1, seed 0) of given weights on centre crops of the OSCD test
cities. Run it with two versions of the code on the same weights files and compare the lines:

    PYTHONPATH=/path/to/old/checkout python -m benchmarks behaviour_check W1.safetensors W2.safetensors > old.txt
    python -m benchmarks behaviour_check W1.safetensors W2.safetensors > new.txt && diff old.txt new.txt
"""
import argparse
import hashlib
import json
from pathlib import Path

import torch

import refscale
from refscale.io.image import read_image


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd")
    ap.add_argument("--crop", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cities = json.loads((args.data / "split.json").read_text())["test"]
    for w in args.weights:
        model = refscale.load(w)
        h = hashlib.sha256()
        for city in cities:
            hr, ref = read_image(args.data / city / "img2.png"), read_image(args.data / city / "img1.png")
            t, left = (hr.shape[-2] - args.crop) // 2, (hr.shape[-1] - args.crop) // 2
            hr, ref = (x[..., t:t + args.crop, left:left + args.crop] for x in (hr, ref))
            r = ref if model.needs_reference else None
            packet = model.encode(hr, r, precision="fp32")
            h.update(packet.lr.tobytes())
            for temperature in (0.0, 1.0):
                h.update(model.decode(packet, r, temperature=temperature, seed=0).numpy().tobytes())
        print(Path(w).name, h.hexdigest())


if __name__ == "__main__":
    main()
