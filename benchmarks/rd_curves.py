"""Rate-distortion curves against still-image codecs, BD table, figures (issue 15, item 1).

    python -m benchmarks rd_curves run --data ../shared/data/oscd --split test \\
        --models bicubic-x2 irn-x2 refscale-x2 bicubic-x4 irn-x4 refscale-x4 --precision bf16 --out rd_oscd.json
    python -m benchmarks rd_curves report --results rd_oscd.json --name oscd --figures docs/figures --write docs/rate-distortion.md

``run`` measures, per image, PSNR-Y and SSIM-Y, PSNR-RGB and SSIM-RGB and the fraction of pixels
with an RGB channel off by more than 40 levels (``frac_off40``) against bits per HR pixel for

* ``full``: each still codec alone at full resolution (the bare codec bitstream, no container:
  this favours the codec by the ~100 container bytes a refscale file carries); each inter codec
  at full resolution through the ``inter-*`` model and a real ``.rsc``, three ways (issue 30):
  the P-frame predicted from the reference (``--inter-mode inter``, curve ``h264-inter`` etc.,
  issue 19), the same encoder intra-only (``intra``, curve ``h264-intra``) and whichever of the
  two the encoder chooses per image and quality (``auto``, the default, curve ``h264-auto``; its
  points record the mode chosen and every inter point its encode time; ``--inter-v2`` adds the
  P-frame as payload version 2 coded it, curve ``h264-v2``);
* every ``--models`` pipeline: ``model.encode`` once (once more with the reference at LR size
  for the inter codecs: the LR coded as a P-frame from the equally downscaled reference), then the LR coded by each codec at each
  quality inside a real ``.rsc`` (``Packet.to_bytes``: the rate is the *whole file*, header and
  similarity map included) and decoded with ``model.decode`` (t = 1, seed 0, one draw).

Every image is mod-cropped to a multiple of 4 so all pipelines see the same pixels, and every
metric crops 4 px of border (BasicSR convention, the largest scale). Results are cached per
(image, pipeline, codec, quality) in the ``--out`` JSON, so an interrupted run resumes (one
``run`` per ``--out`` file at a time: two writers would overwrite each other's points).

``report`` averages rate and PSNR over the images at each quality (a curve per pipeline and
codec), computes BD-rate / BD-PSNR (``refscale.rd``: ``bjontegaard``, pchip, over the
overlapping range only) of every curve against every codec alone, on PSNR-Y and (where the points
have it: files measured before RGB was recorded show "-") on PSNR-RGB, draws one figure per codec
and scale, tabulates which pipeline is best at a few rates, and the colour at each curve's
highest quality (PSNR-RGB, the worst image, >40 levels).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import store
from benchmarks.report_common import to_palette, write_section

from refscale import metrics, zoo
from refscale.format import codecs, inter
from refscale.format.container import Packet
from refscale.format.rounding import to_uint8_hwc
from refscale.data import discover, iter_full_images
from refscale.io.image import is_greyscale_file
from refscale.ops import centre_crop
from refscale.rd import bd

STILL = ("jpeg", "webp", "avif", "jxl", "j2k")
INTER = ("h264-inter", "hevc-inter", "av1-inter")  # P-frame from the reference (refscale.format.inter)
CODECS = STILL + INTER
#: the intra-only curve and the ``--inter-mode auto`` curve of each inter codec (pipeline ``full``
#: only; curve labels, not container codecs)
INTRA = {c: c.replace("-inter", "-intra") for c in INTER}
AUTO = {c: c.replace("-inter", "-auto") for c in INTER}
#: the P-frame as payload version 2 coded it (the inter mode before issue 30; ``--inter-v2``)
V2 = {c: c.replace("-inter", "-v2") for c in INTER}
MODE = {**{c: "inter" for c in INTER}, **{v: "intra" for v in INTRA.values()}, **{v: "auto" for v in AUTO.values()},
        **{v: "inter" for v in V2.values()}}
ALL = CODECS + tuple(INTRA.values()) + tuple(AUTO.values()) + tuple(V2.values())  # every curve label, in report order
#: quality sweeps: 7 points each, spanning ~0.02-2 bpp at full resolution and at x2 / x4 on OSCD
#: (j2k's quality is a target PSNR 20 + 0.3 q dB, so its useful range is lower; inter codecs:
#: CRF = 51 (100 - q) / 99, i.e. CRF 51 .. 13 for x265's intra frame, whose frame QP is the CRF
#: from payload version 3 on; x265's P-frame of versions 2 and 4 (QP about CRF + 7) takes the sweep
#: 10 .. 90 for about the same QPs, 51 .. 12: --points 5 (10, 40, 55, 70, 90) at QP 51, 38, 30, 22,
#: 12, the intra frame's (1, 25, 40, 55, 75) at 51, 38, 31, 23, 13; x264 codes both at QP about
#: CRF + 5, so all its curves take version 2's sweep; SVT-AV1 ``av1-v2`` too)
QUALITIES = {
    **{c: (1, 10, 25, 40, 55, 65, 75) for c in INTER + tuple(INTRA.values()) + tuple(AUTO.values())},
    **{c: (10, 25, 40, 55, 70, 80, 90) for c in tuple(V2.values()) + ("h264-inter", "h264-intra", "h264-auto", "hevc-inter", "hevc-auto")},
    "jpeg": (5, 15, 30, 50, 70, 85, 95),
    "webp": (5, 15, 30, 50, 70, 85, 95),
    "avif": (5, 15, 30, 45, 60, 75, 90),
    "jxl": (5, 15, 30, 50, 70, 85, 95),
    "j2k": (5, 15, 25, 35, 45, 55, 70),
}
CROP = 4  # border cropped by every metric (the largest scale)


def sweep(points: int) -> dict[str, tuple[int, ...]]:
    """``points`` qualities of each codec's sweep, evenly spread over :data:`QUALITIES` (ends kept)."""
    if not 2 <= points <= 7:
        raise SystemExit(f"--points must be 2..7, got {points}")
    return {c: tuple(qs[round(i * (len(qs) - 1) / (points - 1))] for i in range(points)) for c, qs in QUALITIES.items()}
FULL = "full"  # the pipeline name of "the codec alone at full resolution"
RATES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # bpp at which the report names the best pipeline


# ============================================================================= run
def _key(image: str, pipeline: str, codec: str, q: int) -> str:
    return f"{image}|{pipeline}|{codec}|{q}"


def _scores(hat: torch.Tensor, hr: torch.Tensor, grey: bool) -> dict:
    a, b = (metrics.grey_luma(hat), metrics.grey_luma(hr)) if grey else (hat, hr)
    return {"psnr_y": float(metrics.psnr(a, b, crop_border=CROP)[0]), "ssim_y": float(metrics.ssim(a, b, crop_border=CROP)[0]),
            "psnr_rgb": float(metrics.psnr(hat, hr, crop_border=CROP, y_channel=False)[0]),
            "ssim_rgb": float(metrics.ssim(hat, hr, crop_border=CROP, y_channel=False)[0]),
            "frac_off40": float(metrics.fraction_off(hat, hr, crop_border=CROP)[0])}


#: what a mean curve point averages; a key some point lacks (older results files) averages to None
MEANS = ("bpp", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "frac_off40")


def _mean_point(q: int, pts_list: list[dict], names: list[str]) -> dict:
    """The mean over images of one quality, and the image of lowest PSNR-RGB (``worst``) where known."""
    out = {"q": q, "images": len(pts_list)}
    for k in MEANS:
        vals = [pts[q].get(k) for pts in pts_list]
        out[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    if out["psnr_rgb"] is not None:
        i = int(np.argmin([pts[q]["psnr_rgb"] for pts in pts_list]))
        out["worst"] = {"name": names[i], "psnr_rgb": pts_list[i][q]["psnr_rgb"]}
    return out


@contextlib.contextmanager
def _payload_version(version: int):
    """Inter payloads of another ``version`` inside (the codecs call ``inter.encode`` by name)."""
    encode = inter.encode
    inter.encode = functools.partial(encode, version=version)
    try:
        yield
    finally:
        inter.encode = encode


def save_results(results: dict, path: Path) -> None:
    """Write ``results`` to ``path`` as JSON atomically (a stopped run keeps every point it saved)."""
    store.save(results, path)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"meta": {}, "points": {}}
    qualities = sweep(args.points)
    old_q = {c: list(q) for c, q in results["meta"].get("qualities", qualities).items()}
    if results["points"] and old_q != {c: list(q) for c, q in qualities.items()}:
        raise SystemExit(f"{out} was measured with another quality sweep; use the same --points or a new --out")
    labels = args.labels or list(args.models)
    if len(labels) != len(args.models):
        raise SystemExit(f"--labels needs one label per model ({len(args.models)}), got {len(labels)}")
    weights = {label: zoo.card_for(name).get("sha256") for name, label in zip(args.models, labels)}
    for name, sha in weights.items():  # points of other weights must not be mixed in silently
        old = results["meta"].get("weights", {}).get(name, sha)
        if old != sha:
            raise SystemExit(f"{out} holds {name} points of other weights (sha256 {str(old)[:12]}, now {str(sha)[:12]}); use a new --out")
    if results["points"] and results["meta"].get("centre_crop", 0) != args.crop:
        raise SystemExit(f"{out} was measured with --crop {results['meta'].get('centre_crop', 0)}; use the same or a new --out")
    results["meta"].update(data=str(args.data), split=args.split, crop=CROP, centre_crop=args.crop, qualities=qualities,
                           precision=args.precision, draws=1, temperature=1.0, seed=0)
    results["meta"].setdefault("weights", {}).update(weights)
    points = results["points"]
    codec_list = [c for c in args.codecs if codecs.available_codecs()[c]]
    samples = discover(args.data, split=args.split)
    if args.limit:
        samples = samples[: args.limit]
    models = {label: zoo.load(name) for name, label in zip(args.models, labels)}
    for m in models.values():
        m.eval()
    for sample, (name, hr, ref) in zip(samples, iter_full_images(samples, multiple=CROP)):
        if args.crop:  # the centre args.crop px (a multiple of 4): CPU time
            hr, ref = centre_crop(hr, args.crop), (centre_crop(ref, args.crop) if ref is not None else None)
        if args.reverse:  # the older image as the new one, predicted from the newer
            if ref is None:
                raise SystemExit(f"--reverse needs pairs; {name} has no reference")
            name, hr, ref = f"{name}~reverse", ref, hr
        h, w = hr.shape[-2:]
        grey = is_greyscale_file(sample.ref if args.reverse else sample.hr)
        full_codecs = [x for c in codec_list for x in ((c, INTRA[c], AUTO[c]) + ((V2[c],) if args.inter_v2 else ()) if c in INTER else (c,))]
        todo = [(c, q) for c in full_codecs for q in qualities[c] if _key(name, FULL, c, q) not in points]
        if any(c in MODE for c, _ in todo) and ref is None:
            raise SystemExit(f"the inter codecs need references; {name} has none")
        start = time.perf_counter()
        hr_u8 = to_uint8_hwc(hr).copy()
        inter_packets = {}
        for c, q in todo:
            extra = {}
            if c in MODE:  # an inter codec through the container, like any refscale file, in one mode
                codec = next(k for k in INTER if k.split("-")[0] == c.split("-")[0])
                imodel = zoo.load(f"inter-{c.split('-')[0]}")
                if codec not in inter_packets:
                    inter_packets[codec] = imodel.encode(hr, ref)
                t0 = time.perf_counter()
                with inter.default_mode(MODE[c]), _payload_version(2 if c in V2.values() else inter.PAYLOAD_VERSION):
                    data = inter_packets[codec].to_bytes(codec, q)
                extra = {"encode_s": time.perf_counter() - t0, "mode": codecs.inter_payload(codec, Packet.from_bytes(data).lr_data)["mode"]}
                hat = imodel.decode(Packet.from_bytes(data), ref)
                nbytes = len(data)
            else:
                data = codecs.encode_image(hr_u8, c, q)
                nbytes = len(data)
                hat = torch.from_numpy(codecs.decode_image(data, c, (h, w))).permute(2, 0, 1)[None].float() / 255
            points[_key(name, FULL, c, q)] = {"bpp": nbytes * 8 / (h * w), **_scores(hat, hr, grey), **extra}
        if todo:
            print(f"{name} {FULL}: {len(todo)} points, {time.perf_counter() - start:.1f} s", flush=True)
            save_results(results, out)
        for mname, model in models.items():
            todo = [(c, q) for c in codec_list for q in qualities[c] if _key(name, mname, c, q) not in points]
            if not todo:
                continue
            r = ref if model.needs_reference else None
            if model.needs_reference and r is None:
                raise SystemExit(f"{mname} needs references; {name} has none")
            start = time.perf_counter()
            with torch.inference_mode():
                packet = model.encode(hr, r, precision=args.precision) if any(c in STILL for c, _ in todo) else None
                if any(c in INTER for c, _ in todo):  # the same LR, plus the reference at LR size
                    inter_packet = model.encode(hr, ref, precision=args.precision, codec=INTER[0])
                for c, q in todo:
                    data = (inter_packet if c in INTER else packet).to_bytes(c, q)
                    hat = model.decode(Packet.from_bytes(data), ref if c in INTER else r, seed=0)
                    points[_key(name, mname, c, q)] = {"bpp": len(data) * 8 / (h * w), **_scores(hat, hr, grey)}
            print(f"{name} {mname}: {len(todo)} points, {time.perf_counter() - start:.1f} s", flush=True)
            save_results(results, out)
    print("wrote", out)


# ============================================================================= report
def _points(results: dict):
    """``(image, pipeline, codec, quality, point)`` for every point of a results file."""
    for key, p in results["points"].items():
        image, pipe, codec, q = key.split("|")
        yield image, pipe, codec, int(q), p


def curves(results: dict, images: list[str] | None = None) -> dict[tuple[str, str], list[dict]]:
    """``{(pipeline, codec): [{q, images, bpp, psnr_y, ssim_y, psnr_rgb, ssim_rgb, frac_off40, worst}, ...]}``:
    means over one common set
    of images (``images``, default every image the full-resolution curves, or without them all
    curves, have complete), so that
    all curves, and so every BD delta, average the same images; a curve not complete on that set
    is left out with a note."""
    by: dict[tuple[str, str], dict[str, dict[int, dict]]] = {}
    for image, pipe, codec, q, p in _points(results):
        by.setdefault((pipe, codec), {}).setdefault(image, {})[q] = p
    qs = {codec: tuple(results["meta"]["qualities"][codec]) for _, codec in by}
    complete = {k: {im for im, pts in v.items() if all(q in pts for q in qs[k[1]])} for k, v in by.items()}
    if images:
        known = set().union(*complete.values())
        if set(images) - known:
            print(f"note: no complete curve has {', '.join(sorted(set(images) - known))}; left out", file=sys.stderr)
        common = set(images) & known
    else:  # the full-resolution curves' images, or without them every curve's
        full = [v for k, v in complete.items() if k[0] == FULL] or list(complete.values())
        common = set.intersection(*full) if full else set()
    out = {}
    for (pipe, codec), per_image in by.items():
        if not common or not common <= complete[(pipe, codec)]:
            print(f"note: {pipe} + {codec} is not complete on the {len(common)} images; left out", file=sys.stderr)
            continue
        names = sorted(common)
        pts_list = [per_image[im] for im in names]
        out[(pipe, codec)] = [_mean_point(q, pts_list, names) for q in qs[codec]]
    return out


def select(results: dict, pipelines: list[str] | None, codecs_: list[str] | None, images: list[str] | None) -> dict:
    """The results restricted to some pipelines, codec curves (e.g. ``h264-intra``) and images."""
    keep = {_key(image, pipe, codec, q): p for image, pipe, codec, q, p in _points(results)
            if not ((pipelines and pipe not in pipelines) or (codecs_ and codec not in codecs_) or (images and image not in images))}
    return {**results, "points": keep}


def _scale(pipe: str) -> int:
    m = re.search(r"-x(\d+)", pipe)  # irn-x2, fgrn-x2-oscd; scale 1 for the codec alone and inter-*
    return int(m.group(1)) if m else 1


def _pts(curve: list[dict], metric: str = "psnr_y") -> list[tuple[float, float]]:
    return [(p["bpp"], p[metric]) for p in curve]


def _has(curve: list[dict], metric: str) -> bool:
    return all(p.get(metric) is not None for p in curve)


def bd_table(cs: dict) -> list[dict]:
    """BD of every curve against every codec alone on PSNR-Y, and on PSNR-RGB (``bd_rate_rgb``,
    ``bd_psnr_rgb``; None where a curve has no RGB values)."""
    rows = []
    anchors = {codec: c for (pipe, codec), c in cs.items() if pipe == FULL}
    for (pipe, codec), c in sorted(cs.items(), key=lambda kv: (_scale(kv[0][0]), kv[0][0], ALL.index(kv[0][1]))):
        for anchor_codec, anchor in anchors.items():
            if (pipe, codec) == (FULL, anchor_codec):
                continue
            rgb = {"bd_rate_rgb": None, "bd_psnr_rgb": None}
            if _has(anchor, "psnr_rgb") and _has(c, "psnr_rgb"):
                d = bd(_pts(anchor, "psnr_rgb"), _pts(c, "psnr_rgb"))
                rgb = {"bd_rate_rgb": d["bd_rate"], "bd_psnr_rgb": d["bd_psnr"]}
            rows.append({"pipeline": pipe, "codec": codec, "anchor": anchor_codec, **bd(_pts(anchor), _pts(c)), **rgb})
    return rows


def per_image_bd(results: dict, pipe: str, codec: str, anchor: str, images: set[str] | None = None) -> dict[str, float | None]:
    """BD-rate of ``pipe + codec`` against ``full + anchor`` image by image (the spread the mean
    curves hide: season, change, haze)."""
    pts: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    qs = results["meta"]["qualities"]
    for image, pp, c, q, p in _points(results):
        if q in qs[c]:  # the sweep the mean curves use
            pts.setdefault((pp, c), {}).setdefault(image, []).append((p["bpp"], p["psnr_y"]))
    test, base = pts.get((pipe, codec), {}), pts.get((FULL, anchor), {})
    both = set(test) & set(base) & (images if images is not None else set(test))
    return {im: bd(base[im], test[im])["bd_rate"] for im in sorted(both) if min(len(base[im]), len(test[im])) >= 4}


def spread_markdown(results: dict, images: set[str] | None = None) -> list[str]:
    """Per-image BD-rate of each full-resolution inter codec against AVIF and its own intra-only,
    and of its ``auto`` curve against both of its modes."""
    lines = []
    for codec in INTER + tuple(AUTO.values()):
        anchors = ("avif", INTRA[codec]) if codec in INTER else next((INTRA[k], k) for k, v in AUTO.items() if v == codec)
        for anchor in anchors:
            per = {k: v for k, v in per_image_bd(results, FULL, codec, anchor, images).items() if v is not None}
            if not per:
                continue
            vals = sorted(per.values())
            worst = max(per, key=per.get)
            median = statistics.median(vals)
            if not lines:
                lines = ["", "**Spread over images** (BD-rate of each image's own curves; `~reverse`: the pair "
                         "the other way round):", "",
                         "| inter codec | vs | images | min | median | max (image) | images with fewer bits |",
                         "|---|---|---:|---:|---:|---|---:|"]
            lines.append(f"| {codec} | {anchor} | {len(vals)} | {vals[0]:+.1f} % | {median:+.1f} % "
                         f"| {per[worst]:+.1f} % ({worst}) | {sum(v < 0 for v in vals)} |")
    return lines


def psnr_at(curve: list[dict], rate: float, metric: str = "psnr_y") -> float | None:
    """PSNR of a mean curve at ``rate`` (linear in log-rate between its points; None outside or
    where the curve has no ``metric``)."""
    if not _has(curve, metric):
        return None
    pts = sorted(_pts(curve, metric))
    for (r0, d0), (r1, d1) in zip(pts, pts[1:]):
        if r0 <= rate <= r1:
            return d0 if r1 == r0 else d0 + (d1 - d0) * (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
    return None


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report_markdown(cs: dict, rows: list[dict], name: str, command: str) -> str:
    n_images = max(p["images"] for c in cs.values() for p in c)
    lines = [f"R-D on {name}: means over {n_images} images per quality (PSNR-Y / SSIM-Y and PSNR-RGB, 4 px border cropped; "
             "rate = whole .rsc file per HR pixel; the codec alone = its bare bitstream; `-`: not measured, e.g. RGB in "
             "results files of before issue 26). Regenerate with:", "",
             f"    {command}", ""]
    lines += ["**BD against the same codec alone at full resolution** (an inter codec at full resolution, and its "
              "`auto` curve: against its encoder intra-only; negative BD-rate = fewer bits for the same PSNR-Y; ranges are the overlap "
              "the deltas integrate over):", "",
              "| pipeline | codec | against | BD-rate | over PSNR-Y | BD-PSNR | over bpp | BD-rate RGB | BD-PSNR RGB |",
              "|---|---|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        intra_of = INTRA.get(r["codec"]) or next((INTRA[k] for k, v in AUTO.items() if v == r["codec"]), None)
        same = r["codec"] == r["anchor"] or (r["pipeline"] == FULL and intra_of == r["anchor"])
        if not same:
            continue
        pr = "-" if r["psnr_range"] is None else f"{r['psnr_range'][0]:.1f}-{r['psnr_range'][1]:.1f} dB"
        br = "-" if r["bpp_range"] is None else f"{r['bpp_range'][0]:.3f}-{r['bpp_range'][1]:.3f}"
        lines.append(f"| {r['pipeline']} | {r['codec']} | {r['anchor']} alone | {_fmt(r['bd_rate'], '+.1f')}{'' if r['bd_rate'] is None else ' %'} "
                     f"| {pr} | {_fmt(r['bd_psnr'], '+.2f')}{'' if r['bd_psnr'] is None else ' dB'} | {br} "
                     f"| {_fmt(r.get('bd_rate_rgb'), '+.1f')}{'' if r.get('bd_rate_rgb') is None else ' %'} "
                     f"| {_fmt(r.get('bd_psnr_rgb'), '+.2f')}{'' if r.get('bd_psnr_rgb') is None else ' dB'} |")
    anchors = [c for c in STILL + tuple(INTRA.values()) if (FULL, c) in cs]
    lines += ["", "**BD-rate (%) against each still codec alone and each video encoder intra-only** "
              "(rows: pipeline + codec; `-`: no overlap):", "",
              "| pipeline + codec | " + " | ".join(f"vs {a}" for a in anchors) + " |",
              "|---|" + "---:|" * len(anchors)]
    table: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in rows:
        table.setdefault((r["pipeline"], r["codec"]), {})[r["anchor"]] = r["bd_rate"]
    for (pipe, codec), vals in table.items():
        if any(vals.get(a) is not None for a in anchors):
            lines.append(f"| {pipe} + {codec} | " + " | ".join(_fmt(vals.get(a), "+.1f") for a in anchors) + " |")
    lines += ["", "**Best pipeline at a given rate** (highest mean PSNR-Y among all curves that reach that rate; "
              "linear in log-rate between measured points):", "",
              "| bpp | best | PSNR-Y | PSNR-RGB | best at full resolution | PSNR-Y | PSNR-RGB | best rescaler + codec | PSNR-Y "
              "| PSNR-RGB |", "|---:|---|---:|---:|---|---:|---:|---|---:|---:|"]
    for rate in RATES:
        found = {k: psnr_at(c, rate) for k, c in cs.items()}
        found = {k: v for k, v in found.items() if v is not None}
        if not found:
            continue
        best = max(found, key=found.get)
        alone = {k: v for k, v in found.items() if k[0] == FULL}
        resc = {k: v for k, v in found.items() if k[0] != FULL}
        ba = max(alone, key=alone.get) if alone else None
        br = max(resc, key=resc.get) if resc else None
        rgb = {k: psnr_at(cs[k], rate, "psnr_rgb") for k in (best, ba, br) if k is not None}
        lines.append(f"| {rate:g} | {' + '.join(best)} | {found[best]:.2f} | {_fmt(rgb.get(best), '.2f')} | {ba[1] if ba else '-'} "
                     f"| {_fmt(alone.get(ba), '.2f')} | {_fmt(rgb.get(ba), '.2f')} | {' + '.join(br) if br else '-'} "
                     f"| {_fmt(resc.get(br), '.2f')} | {_fmt(rgb.get(br), '.2f')} |")
    lines += ["", "**Colour at each curve's highest quality** (means over the images; worst image = lowest PSNR-RGB; "
              ">40 levels = fraction of pixels with an RGB channel off by more than 40 levels):", "",
              "| pipeline | codec | q | bpp | PSNR-Y | PSNR-RGB | SSIM-RGB | worst image (PSNR-RGB) | >40 levels |",
              "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for (pipe, codec), curve in sorted(cs.items(), key=lambda kv: (_scale(kv[0][0]), kv[0][0], ALL.index(kv[0][1]))):
        top = max(curve, key=lambda p: p["q"])
        worst = top.get("worst")
        worst = "-" if not worst else f"{worst['name']} {worst['psnr_rgb']:.2f}"
        lines.append(f"| {pipe} | {codec} | {top['q']} | {top['bpp']:.3f} | {top['psnr_y']:.2f} | {_fmt(top.get('psnr_rgb'), '.2f')} "
                     f"| {_fmt(top.get('ssim_rgb'), '.4f')} | {worst} | {_fmt(top.get('frac_off40'), '.2%')} |")
    return "\n".join(lines)


def figures(cs: dict, name: str, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    scales = sorted({_scale(p) for p, _ in cs} - {1})
    for codec in CODECS:
        if (FULL, codec) not in cs:
            continue
        for s in scales:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            for (pipe, c), curve in sorted(cs.items()):
                if c != codec or _scale(pipe) not in (1, s):
                    continue
                ax.plot(*zip(*_pts(curve)), marker="o", ms=3, label=f"{codec} alone" if pipe == FULL else f"{pipe} + {codec}",
                        lw=2 if pipe == FULL else 1.3, color="black" if pipe == FULL else None)
            for extra, style in ((INTRA.get(codec), ":"), (AUTO.get(codec), "-."), ("avif" if codec in INTER else None, "--")):
                if extra and (FULL, extra) in cs:  # inter codecs: beside their intra-only curve and AVIF
                    ax.plot(*zip(*_pts(cs[(FULL, extra)])), ls=style, color="grey", marker=".", label=f"{extra} alone")
            ax.set_xscale("log")
            ax.set_xlabel("bits per HR pixel (whole file)")
            ax.set_ylabel("PSNR-Y (dB)")
            ax.set_title(f"{name}: {codec}, x{s} pipelines vs the codec alone")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            path = folder / f"rd_{name}_{codec}_x{s}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            to_palette(path)
            written.append(path)
    return written


def report(args) -> None:
    results = {"meta": {"qualities": {}}, "points": {}}
    for path in args.results:  # a codec's curves use the qualities every file that has it measured
        part = json.loads(Path(path).read_text())
        for c, qs in part["meta"]["qualities"].items():
            have = results["meta"]["qualities"].get(c)
            results["meta"]["qualities"][c] = [q for q in qs if have is None or q in have]
        results["points"].update(part["points"])
    cs = curves(select(results, args.pipelines, args.curves, args.images), args.images)
    rows = bd_table(cs)
    command = args.command or " ".join(["python -m benchmarks rd_curves", *sys.argv[1:]])
    md = report_markdown(cs, rows, args.name, command)
    spread = spread_markdown(select(results, args.pipelines, args.curves, args.images), set(args.images or []) or None)
    if spread:
        md += "\n" + "\n".join(spread)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"curves": {f"{p}|{c}": v for (p, c), v in cs.items()}, "bd": rows}, indent=1))
    if args.figures:
        for p in figures(cs, args.name, Path(args.figures)):
            print("wrote", p)
    if args.write:
        write_section(Path(args.write), md, f"<!-- rd:{args.name}:start -->", f"<!-- rd:{args.name}:end -->")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (resumable)")
    r.add_argument("--data", required=True)
    r.add_argument("--split", default=None)
    r.add_argument("--models", nargs="*", default=[], help="catalogue or weights names (the codec alone is always measured)")
    r.add_argument("--labels", nargs="*", default=None,
                   help="the pipeline names of --models in the results, one per model (default: the names given), "
                        "e.g. to measure weights not shipped yet beside the shipped ones")
    r.add_argument("--codecs", nargs="*", default=list(CODECS), choices=CODECS)
    r.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--reverse", action="store_true", help="swap image and reference (names get ~reverse)")
    r.add_argument("--inter-v2", action="store_true", help="also each inter codec's P-frame as payload version 2 coded it (curve h264-v2 etc.)")
    r.add_argument("--limit", type=int, default=0, help="first N images only (a quick look)")
    r.add_argument("--crop", type=int, default=0, help="only the centre N x N px of each image (N a multiple of 4; 0: whole images)")
    r.add_argument("--points", type=int, default=7, help="qualities per curve, evenly spread over each codec's sweep (2..7)")
    r.add_argument("--out", required=True, help="results JSON (read first if it exists: resumes)")
    r.set_defaults(func=run)
    p = sub.add_parser("report", help="BD table, figures, docs section")
    p.add_argument("--results", required=True, nargs="+", help="one or more results JSON files of `run`")
    p.add_argument("--name", required=True, help="dataset label, e.g. oscd (figure names, docs markers)")
    p.add_argument("--pipelines", nargs="*", default=None, help="only these pipelines (full, bicubic-x2, ...)")
    p.add_argument("--curves", nargs="*", default=None, help="only these codec curves (jpeg, ..., h264-inter, h264-intra)")
    p.add_argument("--images", nargs="*", default=None, help="only these images")
    p.add_argument("--figures", default=None, help="folder for rd_<name>_<codec>_x<s>.png")
    p.add_argument("--json", default=None, help="also write curves and BD rows here")
    p.add_argument("--write", default=None, help="docs/rate-distortion.md or docs/rd-natural.md: replace the <!-- rd:<name>:start/end --> block (found in any page beside the file named)")
    p.add_argument("--command", default=None, help="the command line to quote in the docs (default: this one)")
    p.set_defaults(func=report)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
