"""Accuracy and cost of the reference registration (refscale.registration; issue 14, item 3).

    python -m benchmarks registration_accuracy [--data ../shared/data/oscd]

1. Known shifts: the shipped demo pair (Sentinel-2, Aguas Claras 2017 and its 2015 reference)
   with the 2015 image moved by known sub-pixel amounts (scipy cubic spline): the error of the
   estimate, full window and through the central window of large images.
2. The OSCD pairs as distributed (registered to the pixel): the shift each is estimated at, i.e.
   the scatter below which refscale.registration.MIN_SHIFT treats a shift as none.
3. The guard against spurious peaks: each OSCD test city's img1 shifted by 0.6 / 2 px or rotated
   by 1-10 degrees (scipy, mirrored borders): the detail-band correlation before and after the
   peak's shift, and the shift registration records (none when the guard rejects the peak).
4. Cost of estimate_shift, estimate_transform and the reference fingerprint on a 6264 x 3456 scene.
5. Rotation (estimate_transform): the 24 OSCD pairs as distributed (no rotation should be
   recorded), then each test city's img1 turned by known angles (scipy.ndimage.rotate, mirrored
   borders; -3 degrees also moved by (7, -4) px): the angle recorded, and the detail-band
   correlation with img2 before and after the recorded warp (central part, 40 px from the border).

    python -m benchmarks registration_accuracy --parts 5
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import shift as nd_shift

from refscale import ops, pipeline, registration
from refscale.demo import real_pair
from refscale.format.rounding import round_8bit
from refscale.io.image import as_image_tensor, read_image


def moved(img: torch.Tensor, shift) -> torch.Tensor:
    a = img.double()[0].numpy()
    return torch.from_numpy(np.stack([nd_shift(c, shift, order=3, mode="mirror") for c in a])).float()[None].clamp(0, 1)


def guard_table(data: Path, cities: list[str]) -> None:
    from scipy.ndimage import rotate
    from skimage.registration import phase_cross_correlation

    cases = [("shift", 0.6), ("shift", 2.0), ("rotate", 1), ("rotate", 2), ("rotate", 5), ("rotate", 10)]
    print("| city | " + " | ".join(f"{k} {v}" for k, v in cases) + " |")
    print("|---|" + "---|" * len(cases))
    for c in cities:
        new, old = read_image(data / c / "img2.png"), read_image(data / c / "img1.png")
        cells = []
        for kind, v in cases:
            a = old.double()[0].numpy()
            warp = [nd_shift(ch, (v, v), order=3, mode="mirror") if kind == "shift" else
                    rotate(ch, v, reshape=False, order=3, mode="mirror") for ch in a]
            ref = torch.from_numpy(np.stack(warp)).float()[None].clamp(0, 1)
            x, y = (registration.luma(ops.centre_crop(t, registration.MAX_SIDE)) for t in (new, ref))
            peak, _, _ = phase_cross_correlation(x, y, upsample_factor=20, normalization="phase")
            band = registration.detail_band(x)
            before = registration.correlation(band, registration.detail_band(y))
            after = registration.correlation(band, registration.detail_band(nd_shift(y, peak, order=1, mode="mirror")))
            rec = registration.estimate_shift(new, ref)
            cells.append(f"{before:.2f} -> {after:.2f}, peak ({peak[0]:.0f}, {peak[1]:.0f}), kept ({rec[0]:.2f}, {rec[1]:.2f})")
        print(f"| {c} | " + " | ".join(cells) + " |")


def rotation_table(data: Path, cities: list[str], train: list[str]) -> None:
    import warnings

    from scipy.ndimage import rotate

    warnings.simplefilter("ignore")
    start = time.perf_counter()
    found = {c: registration.estimate_transform(read_image(data / c / "img2.png"), read_image(data / c / "img1.png"))
             for c in train + cities}
    print(f"OSCD pairs as distributed: {sum(a != 0 for _, a in found.values())} of {len(found)} get a rotation "
          f"({', '.join(f'{c} {a:.2f}' for c, (_, a) in found.items() if a)}); {time.perf_counter() - start:.0f} s")
    cases = [(1.0, (0, 0)), (2.0, (0, 0)), (5.0, (0, 0)), (10.0, (0, 0)), (-3.0, (7, -4))]
    print("| city | img1 as is | " + " | ".join(f"{a:g} deg{f', shift {s}' if any(s) else ''}" for a, s in cases) + " |")
    print("|---|---:|" + "---|" * len(cases))
    errors, times = [], []
    for c in cities:
        new, old = read_image(data / c / "img2.png"), read_image(data / c / "img1.png")
        band = registration.detail_band(registration.luma(new))[40:-40, 40:-40]
        agree = lambda x: registration.correlation(band, registration.detail_band(registration.luma(x))[40:-40, 40:-40])  # noqa: E731
        cells = []
        for angle, shift in cases:
            a = old.double()[0].numpy()
            ref = moved(torch.from_numpy(np.stack([rotate(ch, angle, reshape=False, order=3, mode="mirror") for ch in a]))
                        .float()[None].clamp(0, 1), shift)
            ref = round_8bit(ref)
            t = time.perf_counter()
            sh, got = registration.estimate_transform(new, ref)
            times.append(time.perf_counter() - t)
            errors.append(abs(got + angle))
            cells.append(f"{got:.2f}: {agree(ref):.2f} -> {agree(registration.apply_shift(ref, sh, got)):.2f}")
        print(f"| {c} | {agree(old):.2f} | " + " | ".join(cells) + " |")
    errors = np.array(errors)
    print(f"angle error: median {np.median(errors):.2f}, largest {errors.max():.2f} degrees; "
          f"estimate_transform {np.median(times):.2f} s median, {max(times):.2f} s largest (1 thread)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "oscd")
    ap.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3, 4, 5],
                    help="5: the rotation part; any of 1-4: parts 1-4 (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    split = json.loads((args.data / "split.json").read_text()) if (args.data / "split.json").is_file() else None
    if 5 in args.parts and split:
        rotation_table(args.data, split["test"], split["train"])
    if not set(args.parts) & {1, 2, 3, 4}:
        return
    new, old = (as_image_tensor(a) for a in real_pair())
    shifts = [(0.3, 0.6), (3.4, -5.7), (-12.25, 7.5), (20.0, -40.0), (0.5, 0.0)]
    print("| true shift (px) | estimated (384 px) | error | estimated (central 160 px) | error |")
    print("|---|---|---:|---|---:|")
    for s in shifts:
        ref = moved(old, s)
        full = registration.estimate_shift(new, ref)
        keep, registration.MAX_SIDE = registration.MAX_SIDE, 160
        crop = registration.estimate_shift(new, ref)
        registration.MAX_SIDE = keep
        err = lambda e: float(np.abs(np.add(e, s)).max())  # noqa: E731  (the estimate undoes the shift)
        print(f"| {s} | {tuple(round(v, 2) for v in full)} | {err(full):.2f} | {tuple(round(v, 2) for v in crop)} | {err(crop):.2f} |")
    if (args.data / "split.json").is_file():
        split = json.loads((args.data / "split.json").read_text())
        est = {c: registration.estimate_shift(read_image(args.data / c / "img2.png"), read_image(args.data / c / "img1.png"))
               for c in split["train"] + split["test"]}
        worst = max(max(abs(v) for v in s) for s in est.values())
        print(f"OSCD pairs as distributed: largest estimated component {worst:.2f} px; "
              f"{sum(registration.is_none(s) for s in est.values())} of {len(est)} below MIN_SHIFT {registration.MIN_SHIFT}")
        print("  " + ", ".join(f"{c} {s}" for c, s in est.items()))
        guard_table(args.data, split["test"])
    scene = torch.rand(1, 3, 3456, 6264, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    registration.estimate_shift(scene, scene)
    t_reg = time.perf_counter() - t
    t = time.perf_counter()
    registration.estimate_transform(scene, scene)
    t_tr = time.perf_counter() - t
    t = time.perf_counter()
    pipeline.fingerprint(scene)
    t_fp = time.perf_counter() - t
    print(f"6264 x 3456 scene, 1 thread: estimate_shift {t_reg:.2f} s, estimate_transform (with the rotation) {t_tr:.2f} s, "
          f"reference fingerprint {t_fp:.2f} s")


if __name__ == "__main__":
    main()
