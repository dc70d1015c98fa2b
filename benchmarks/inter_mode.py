"""The inter-frame mode decision (issue 30): why a P-frame loses to an intra frame, and whether
``--inter-mode auto`` keeps the better of the two.

    python -m benchmarks inter_mode why --data ../shared/data/oscd --split train --crop 320 --codec hevc-inter --out why.json
    python -m benchmarks inter_mode why-report --results why.json
    python -m benchmarks rd_curves run --data ../shared/data/oscd [--reverse] --codecs hevc-inter --points 5 --inter-v2 --out rd.json
    python -m benchmarks inter_mode check-report --results rd.json [rd-reverse.json] --json check-report.json
    python -m benchmarks inter_mode dense --data ../shared/data/oscd --codec h264-inter [--params qcomp=0.99]

``why`` codes each pair (both directions; ``~other``: the new image against another city's older
image, a reference that predicts nothing) with the variants of :data:`VARIANTS`: the P-frame as
payload versions 2 and 3 code it, with psy off, with frame 0 at the P-frame's CRF instead of
near-lossless, predicted from a flat grey frame 0 (the prediction is worth nothing: what the P-frame
costs beyond intra blocks), with more analysis (preset ``slower``), and the image intra-only. Rate:
the coded frame's bits per pixel; distortion: PSNR-Y (4 px border cropped) and the full-range
Y MSE the encoder's decision uses. ``why-report`` gives each variant's BD-rate against the
version-2 P-frame and against intra-only, image by image, and the PSNR gap between I and P at
the same quality.

``simulate`` replays the decision (:func:`refscale.format.inter.rd_cost`) on the ``why`` points and
checks the fast pass. ``check-report`` reads ``rd_curves.py run`` results (each inter codec
through the container with ``--inter-mode`` inter, intra and auto) and gives per image the BD-rate
of auto against the better of inter and intra and against inter, what auto chose and its time.
``why`` results are cached per point in ``--out`` (one writer at a time).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.rd_curves import AUTO, CROP, FULL, INTER, INTRA, MODE, V2, save_results

from refscale import metrics
from refscale.format import inter
from refscale.format.container import Packet
from refscale.format.rounding import to_uint8_hwc
from refscale.data import discover, iter_full_images
from refscale.ops import centre_crop
from refscale.rd import bd

#: qualities of ``why`` by how a variant maps quality to the frame QP, chosen so that each curve
#: spans about the same frame QPs (51, 47, 40, 33, 25, 17): payload version 2's P-frame (CRF 51,
#: 41, 33, 26, 18, 10 with x264/x265; its QP is the CRF plus about 7 here), version 3 (QP = CRF)
#: and version 2's intra frame (x265: QP = CRF - 3, the I/P ratio 1.4; also at the P-frame's
#: qualities; x264 codes both of version 2's frames at about CRF + 5.4, and its version 3 is version 2)
WHY_QUALITIES = {"P v2": (1, 20, 35, 50, 65, 80), "v3": (1, 9, 23, 36, 52, 67), "I v2": (1, 3, 17, 20, 30, 35, 46, 50, 61, 65, 80)}


def _psy_off(codec: str) -> str:
    return {"libx264": "psy=0", "libx265": "psy-rd=0:psy-rdoq=0"}.get(inter.SPECS[codec].encoder, "")


def variants(codec: str) -> dict[str, dict]:
    """label -> ``{kind: pair|intra, version, settings, boost, grey}`` for ``codec``."""
    v3p = inter.SETTINGS[3][codec].get("params", "")

    def join(*p):
        return ":".join(x for x in p if x)

    v3 = V3_SWEEP.get(codec, "v3")
    out = {
        "P v2": {"kind": "pair", "version": 2, "sweep": "P v2"},
        "P v3": {"kind": "pair", "version": 3, "sweep": v3},
        "P v2 psy off": {"kind": "pair", "version": 2, "sweep": "P v2", "settings": {"params": _psy_off(codec)}},
        "P v2 frame 0 at the CRF": {"kind": "pair", "version": 2, "sweep": "P v2", "boost": False},
        "P v2 grey frame 0": {"kind": "pair", "version": 2, "sweep": "P v2", "grey": True},
        "P v2 slower": {"kind": "pair", "version": 2, "sweep": "P v2", "settings": {"preset": "slower" if "av1" not in codec else "4"}},
        "I v2": {"kind": "intra", "version": 2, "sweep": "I v2"},
        "I v3": {"kind": "intra", "version": 3, "sweep": v3},
        "I v3 psy off": {"kind": "intra", "version": 3, "sweep": v3, "settings": {"params": join(v3p, _psy_off(codec))}},
    }
    if codec == "h264-inter":  # what version 3 first tried for x264 and gave up (docs/inter.md)
        out["P v2 qcomp=0.99"] = {"kind": "pair", "version": 2, "sweep": "v3", "settings": {"params": "qcomp=0.99"}}
    for fast in FAST[codec]:
        out[f"P v3 {fast}"] = {"kind": "pair", "version": 3, "sweep": v3, "settings": {"preset": fast}}
        out[f"I v3 {fast}"] = {"kind": "intra", "version": 3, "sweep": v3, "settings": {"preset": fast}}
    if "av1" in codec:
        out.pop("P v2 psy off")
        out.pop("I v3 psy off")
    return out


#: candidate presets of the fast first pass of ``auto``
FAST = {"h264-inter": ("ultrafast",), "hevc-inter": ("ultrafast",), "av1-inter": ("12",)}
#: the variants measured on the ``~other`` pairs too (the decision's calibration)
DECISION = ("P v2", "I v2", "P v3", "I v3")
#: the sweep of version 3's variants where it is not ``v3``: x264's version 3 is version 2
V3_SWEEP = {"h264-inter": "P v2"}


def _u8(t: torch.Tensor) -> np.ndarray:
    return to_uint8_hwc(t).copy()


def code_variant(codec: str, v: dict, new: np.ndarray, ref: np.ndarray, quality: int) -> dict:
    s = inter.SPECS[codec]
    crf = inter.crf_for(codec, quality)
    h, w = new.shape[:2]
    settings = v.get("settings")
    start = time.perf_counter()
    if v["kind"] == "pair":
        r = np.full_like(ref, 128) if v.get("grey") else ref
        packets = inter.encode_frames(s, crf, [inter.to_planes(s, r), inter.to_planes(s, new)], boost_first=v.get("boost", True),
                                       version=v["version"], settings=settings)
    else:
        packets = inter.code_candidate(s, crf, "intra", inter.to_planes(s, new), None, v["version"], settings)  # x264: without its SEI
    seconds = time.perf_counter() - start
    frames = inter.decode_frames(s, packets, inter.padded_size(s, h, w))
    planes = frames[-1]
    rec = inter.from_planes(s, planes, (h, w))
    hat = torch.from_numpy(rec).permute(2, 0, 1)[None].float() / 255
    ref_t = torch.from_numpy(new).permute(2, 0, 1)[None].float() / 255
    return {"bpp": len(packets[-1]) * 8 / (h * w), "psnr_y": float(metrics.psnr(hat, ref_t, crop_border=CROP)[0]),
            "mse_y": inter.luma_mse(s, inter.to_planes(s, new), planes, (h, w)), "encode_s": seconds, "mpx": h * w / 1e6}


def _pairs(args):
    """``(name, new uint8, reference uint8, is_other)``: each pair both ways, then with another city's image."""
    samples = discover(args.data, split=args.split)[: args.limit or None]
    images = []
    for name, hr, ref in iter_full_images(samples, multiple=CROP):
        if args.crop:
            hr, ref = centre_crop(hr, args.crop), centre_crop(ref, args.crop)
        images.append((name, _u8(hr), _u8(ref)))
    for name, new, ref in images:
        yield name, new, ref, False
        yield f"{name}~reverse", ref, new, False
    if args.crop and args.other:  # another city's older image: equal crops, so any pair fits
        for i, (name, new, _) in enumerate(images):
            oname, _, oref = images[(i + 1) % len(images)]
            yield f"{name}~other", new, _u8_of(oref, new), True


def _u8_of(ref: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ref[: like.shape[0], : like.shape[1]])


def why(args) -> None:
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"meta": {}, "points": {}}
    results["meta"].update(data=str(args.data), split=args.split, crop=CROP, centre_crop=args.crop, qualities=WHY_QUALITIES,
                           identity=inter.identity(args.codec))
    points = results["points"]
    vs = variants(args.codec)
    for name, new, ref, other in _pairs(args):
        start = time.perf_counter()
        todo = [(label, q) for label in vs for q in WHY_QUALITIES[vs[label]["sweep"]]
                if (not other or label in DECISION or label.startswith(("P v3 ", "I v3 ")) and "psy" not in label)
                and f"{name}|{args.codec}|{label}|{q}" not in points]
        for label, q in todo:
            points[f"{name}|{args.codec}|{label}|{q}"] = code_variant(args.codec, vs[label], new, ref, q)
        if todo:
            print(f"{name} {args.codec}: {len(todo)} points, {time.perf_counter() - start:.1f} s", flush=True)
            save_results(results, out)
    print("wrote", out)


def _by(results: dict) -> dict:
    by: dict = {}
    for key, p in results["points"].items():
        image, codec, label, q = key.split("|")
        by.setdefault(codec, {}).setdefault(label, {}).setdefault(image, {})[int(q)] = p
    return by


def _curve(per: dict) -> list[tuple[float, float]]:
    return [(p["bpp"], p["psnr_y"]) for _, p in sorted(per.items())]


def why_report(args) -> None:
    results = json.loads(Path(args.results).read_text())
    qs = results["meta"]["qualities"]
    lines = []
    for codec, labels in _by(results).items():
        vs = variants(codec)
        full = {label: len(qs[v["sweep"]]) for label, v in vs.items()}
        images = sorted(im for im in labels["P v2"] if "~other" not in im and len(labels["P v2"][im]) == full["P v2"])
        lines += [f"{codec}: {len(images)} pairs ({'centre ' + str(results['meta']['centre_crop']) + ' px' if results['meta'].get('centre_crop') else 'whole'}, "
                  f"{results['meta']['split']}), qualities {qs}", "",
                  "| variant | vs P v2: BD-rate median | min | max | vs I v2: median | min | max (image) | pairs where it beats I v2 | encode s/Mpx |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for label, per in labels.items():
            ims = [im for im in images if im in per and len(per[im]) == full.get(label, 0)]
            if not ims:
                continue
            a = [bd(_curve(labels["P v2"][im]), _curve(per[im]))["bd_rate"] for im in ims]
            b = {im: bd(_curve(labels["I v2"][im]), _curve(per[im]))["bd_rate"] for im in ims}
            a = [x for x in a if x is not None]
            bv = {k: x for k, x in b.items() if x is not None}
            worst = max(bv, key=bv.get) if bv else None
            speed = statistics.median(p["encode_s"] / p["mpx"] for im in ims for p in per[im].values())

            def f(x):
                return "-" if x is None else f"{x:+.1f} %"
            lines.append(f"| {label} | {f(statistics.median(a) if a else None)} | {f(min(a) if a else None)} | {f(max(a) if a else None)} | "
                         f"{f(statistics.median(bv.values()) if bv else None)} | {f(min(bv.values()) if bv else None)} | "
                         f"{f(bv.get(worst))} ({worst}) | {sum(x < 0 for x in bv.values())} of {len(bv)} | {speed:.2f} |")
        for pl, il in (("P v2", "I v2"), ("P v3", "I v3")):
            gaps = [labels[il][im][q]["psnr_y"] - labels[pl][im][q]["psnr_y"] for im in images if im in labels.get(il, {})
                    for q in labels[pl][im] if q in labels[il][im]]
            if gaps:
                lines.append(f"\nPSNR-Y of {il} minus {pl} at the same quality: median {statistics.median(gaps):+.2f} dB, "
                             f"range {min(gaps):+.2f} .. {max(gaps):+.2f} dB")
        lines.append("")
    print("\n".join(lines))


# ============================================================================= the decision, simulated
def simulate(args) -> None:
    """Replay :func:`refscale.format.inter.choose` on the ``why`` points of version 3 (P v3, I v3 and the
    fast pass): per image the BD-rate of the resulting curve against the better of P and I."""
    results = json.loads(Path(args.results).read_text())
    for codec, labels in _by(results).items():
        qs = results["meta"]["qualities"][args.sweep or variants(codec)[args.pair[0]]["sweep"]]
        crf = {q: inter.crf_for(codec, q) for q in qs}
        P, I = labels[args.pair[0]], labels[args.pair[1]]
        images = sorted(im for im in P if im in I and all(q in P[im] and q in I[im] for q in qs))
        for c in args.lambdas:
            rows = []
            for im in images:
                pick = {q: "inter" if inter.rd_cost(codec, crf[q], P[im][q]["mse_y"], P[im][q]["bpp"], c) <=
                        inter.rd_cost(codec, crf[q], I[im][q]["mse_y"], I[im][q]["bpp"], c) else "intra" for q in qs}
                auto = [(P if pick[q] == "inter" else I)[im][q] for q in qs]
                auto_c = [(p["bpp"], p["psnr_y"]) for p in auto]
                bi, bp = bd(_curve(I[im]), auto_c)["bd_rate"], bd(_curve(P[im]), auto_c)["bd_rate"]
                ip = bd(_curve(P[im]), _curve(I[im]))["bd_rate"]
                better = bi if (ip is not None and ip < 0) else bp
                rows.append((im, better, bp, "".join("P" if pick[q] == "inter" else "I" for q in qs)))
            worst = max((r for r in rows if r[1] is not None), key=lambda r: r[1])
            print(f"{codec} lambda x{c}: auto vs the better: max {worst[1]:+.2f} % ({worst[0]} {worst[3]}), "
                  f"median {statistics.median(r[1] for r in rows if r[1] is not None):+.2f} %, over 1 %: "
                  f"{sum(r[1] is not None and r[1] > 1 for r in rows)} of {len(rows)}")
            if args.verbose:
                for r in rows:
                    print(f"   {r[0]:24s} vs better {r[1] if r[1] is None else round(r[1], 2)}  vs P {r[2] if r[2] is None else round(r[2], 2)}  {r[3]}")
        for fast in FAST[codec]:  # the fast intra frame against the P-frame (inter.choose)
            fi = labels.get(f"I v3 {fast}", {})
            pts = [(inter.rd_cost(codec, crf[q], fi[im][q]["mse_y"], fi[im][q]["bpp"]),
                    inter.rd_cost(codec, crf[q], I[im][q]["mse_y"], I[im][q]["bpp"]),
                    inter.rd_cost(codec, crf[q], P[im][q]["mse_y"], P[im][q]["bpp"]), im, q)
                   for im in images for q in qs if q in fi.get(im, {})]
            if not pts:
                continue
            gain = [np.log(jf / ji) for jf, ji, _, _, _ in pts]
            t = {k: statistics.median(p["encode_s"] / p["mpx"] for im in images if im in labels[k] for p in labels[k][im].values())
                 for k in ("P v3", "I v3", f"I v3 {fast}")}
            print(f"{codec} fast pass {fast}: log(fast intra cost / intra cost) median {statistics.median(gain):+.3f}, "
                  f"range {min(gain):+.3f} .. {max(gain):+.3f} over {len(gain)} points; encode s/Mpx " +
                  ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
            for m in args.margins:
                clear = [(jf, ji, jp) for jf, ji, jp, _, _ in pts if np.log(jf / jp) > m]
                wrong = [(jf, ji, jp) for jf, ji, jp in clear if ji < jp]
                print(f"   margin {m:.2f}: the P-frame kept without the slow intra frame at {len(clear)} of {len(pts)} points, "
                      f"wrongly at {len(wrong)}")


# ============================================================================= check: auto vs inter vs intra
def check_rows(results: dict) -> dict[str, list[dict]]:
    """Inter codec -> one row per image of a ``rd_curves.py run`` (pipeline ``full``): the BD-rate
    of its ``auto`` curve against the inter and intra curves, against the better of the two (the
    one with the lower BD-rate against the other) and against payload version 2's P-frame (the
    inter mode before, ``--inter-v2``), the modes auto chose, its encode time over inter's."""
    by: dict = {}
    for key, p in results["points"].items():
        image, pipe, label, q = key.split("|")
        if pipe == FULL and label in MODE:
            by.setdefault(label, {}).setdefault(image, {})[int(q)] = p
    out = {}
    for codec in INTER:
        names = {"inter": codec, "intra": INTRA[codec], "auto": AUTO[codec]}
        labels = {m: by.get(n, {}) for m, n in names.items()}
        qs = {m: results["meta"]["qualities"].get(n, results["meta"]["qualities"][codec]) for m, n in names.items()}
        v2, q2 = by.get(V2[codec], {}), results["meta"]["qualities"].get(V2[codec], [])
        rows = []
        for im in sorted(labels["auto"]):
            if not all(all(q in labels[m].get(im, {}) for q in qs[m]) for m in labels):
                continue
            c = {m: [(labels[m][im][q]["bpp"], labels[m][im][q]["psnr_y"]) for q in qs[m]] for m in labels}
            intra_vs_inter = bd(c["inter"], c["intra"])["bd_rate"]
            vs_inter, vs_intra = bd(c["inter"], c["auto"])["bd_rate"], bd(c["intra"], c["auto"])["bd_rate"]
            better = "intra" if intra_vs_inter is not None and intra_vs_inter < 0 else "inter"
            t = {m: sum(labels[m][im][q]["encode_s"] for q in qs[m]) for m in ("inter", "auto")}
            has_v2 = q2 and all(q in v2.get(im, {}) for q in q2)
            vs_v2 = bd([(v2[im][q]["bpp"], v2[im][q]["psnr_y"]) for q in q2], c["auto"])["bd_rate"] if has_v2 else None
            # where auto shares a quality with version 2's P-frame (else with inter's: version 4's
            # HEVC P-frame is version 2's): auto's point against it (fewer or equal bits and better
            # or equal PSNR-Y: it dominates), the largest rate and PSNR-Y excess
            base, qb = (v2, q2) if has_v2 else (labels["inter"], qs["inter"])
            pts = [(labels["auto"][im][q], base[im][q]) for q in qb if q in labels["auto"][im]]
            rows.append({"image": im, "intra_vs_inter": intra_vs_inter, "better": better,
                         "auto_vs_better": vs_intra if better == "intra" else vs_inter, "auto_vs_inter": vs_inter,
                         "auto_vs_intra": vs_intra, "auto_vs_v2": vs_v2,
                         "rate_over_v2": max((a["bpp"] / b["bpp"] - 1) * 100 for a, b in pts) if pts else None,
                         "psnr_below_v2": max(b["psnr_y"] - a["psnr_y"] for a, b in pts) if pts else None,
                         "chosen": "".join("P" if labels["auto"][im][q]["mode"] == "inter" else "I" for q in qs["auto"]),
                         "time_auto_over_inter": t["auto"] / t["inter"]})
        if rows:
            out[codec] = rows
    return out


def check_report(args) -> None:
    results = {"meta": {"qualities": {}}, "points": {}}
    for path in args.results:
        part = json.loads(Path(path).read_text())
        results["meta"]["qualities"].update(part["meta"]["qualities"])
        results["points"].update(part["points"])
    table = check_rows(results)

    def f(x):
        return "-" if x is None else f"{x:+.2f} %"

    lines = []
    for codec, rows in table.items():
        lines += [f"{codec}: {len(rows)} images, qualities {results['meta']['qualities'][codec]} (chosen: P = inter, I = intra, per quality; "
                  f"at version 2's (or inter's) qualities auto's rate over that P-frame's, its PSNR-Y below it: the largest)", "",
                  "| image | intra vs inter | better | auto vs the better | auto vs inter | auto vs version 2's inter | rate over v2 | PSNR-Y below v2 | chosen | auto time / inter |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]
        for r in rows:
            lines.append(f"| {r['image']} | {f(r['intra_vs_inter'])} | {r['better']} | {f(r['auto_vs_better'])} | {f(r['auto_vs_inter'])} "
                         f"| {f(r['auto_vs_v2'])} | {f(r['rate_over_v2'])} | {'-' if r['psnr_below_v2'] is None else format(r['psnr_below_v2'], '+.3f') + ' dB'} | {r['chosen']} | {r['time_auto_over_inter']:.2f} |")
        vals = [r["auto_vs_better"] for r in rows if r["auto_vs_better"] is not None]
        inter_wins = [r["auto_vs_inter"] for r in rows if r["better"] == "inter" and r["auto_vs_inter"] is not None]
        old = [r["auto_vs_v2"] for r in rows if r["better"] == "inter" and r["auto_vs_v2"] is not None]
        times = [r["time_auto_over_inter"] for r in rows]
        if vals:
            lines += ["", f"auto vs the better: max {max(vals):+.2f} %, median {statistics.median(vals):+.2f} %, over +1 %: "
                      f"{sum(v > 1 for v in vals)} of {len(vals)}; where inter is better ({len(inter_wins)} images) auto vs inter: "
                      f"max {max(inter_wins, default=float('nan')):+.2f} %, auto vs version 2's inter: max {max(old, default=float('nan')):+.2f} %, "
                      f"median {statistics.median(old) if old else float('nan'):+.2f} %; intra better on {sum(r['better'] == 'intra' for r in rows)}; "
                      f"auto's encode time / inter's: median {statistics.median(times):.2f}, max {max(times):.2f}"]
            every = [r["auto_vs_v2"] for r in rows if r["auto_vs_v2"] is not None]
            over = [r["rate_over_v2"] for r in rows if r["rate_over_v2"] is not None]
            below = [r["psnr_below_v2"] for r in rows if r["psnr_below_v2"] is not None]
            intra_pts = sum(r["chosen"].count("I") for r in rows)
            lines += [f"auto coded intra at {intra_pts} of {sum(len(r['chosen']) for r in rows)} points on "
                      f"{sum('I' in r['chosen'] for r in rows)} images" +
                      (f"; every image: auto vs version 2's inter max {max(every):+.2f} %, median {statistics.median(every):+.2f} %" if every else "") +
                      (f"; at version 2's (or inter's) qualities, auto's rate over that P-frame's at most {max(over):+.3f} %, its PSNR-Y below at most "
                       f"{max(below):+.4f} dB" if over else ""), ""]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": table}, indent=1))
        print("wrote", args.json)


def dense(args) -> None:
    """The P-frame of payload versions 2 and 3 at the same dense CRF sweep (51, 46, ..., 6), per
    image both ways: the BD-rate of version 3's against version 2's (what the new settings cost
    the P-frame, free of the sampling of a 5-quality sweep); with ``--params``, version 2 plus
    those encoder parameters instead of version 3 (e.g. x264 ``qcomp=0.99``, which version 3
    does not use)."""
    torch.set_num_threads(1)
    s = inter.SPECS[args.codec]
    crfs = range(s.crf_max, 5, -5)
    rows = {}
    samples = [x for x in discover(args.data, split=args.split) if not args.images or x.name in args.images]
    for name, hr, ref in iter_full_images(samples, multiple=CROP):
        for image, new, old in ((name, hr, ref), (f"{name}~reverse", ref, hr)):
            a, r = _u8(new), _u8(old)
            h, w = a.shape[:2]
            curves = {}
            for version in (2, 3):
                pts = []
                settings = {"params": args.params} if version == 3 and args.params else None
                for crf in crfs:
                    packets = inter.code_candidate(s, crf, "inter", inter.to_planes(s, a), inter.to_planes(s, r),
                                               2 if settings else version, settings)
                    rec = inter.from_planes(s, inter.decode_frames(s, packets, inter.padded_size(s, h, w))[1], (h, w))
                    hat = torch.from_numpy(rec).permute(2, 0, 1)[None].float() / 255
                    pts.append((len(packets[1]) * 8 / (h * w), float(metrics.psnr(hat, new, crop_border=CROP)[0])))
                curves[version] = pts
            rows[image] = bd(curves[2], curves[3])["bd_rate"]
            print(f"{image}: {'version 2 + ' + args.params if args.params else 'version 3'}'s P-frame against version 2's "
                  f"{rows[image]:+.2f} %", flush=True)
    vals = [v for v in rows.values() if v is not None]
    print(f"{args.codec}: {len(vals)} images, median {statistics.median(vals):+.2f} %, range {min(vals):+.2f} .. {max(vals):+.2f} %")


def margin(args) -> None:
    """Calibrate the equal-quality fast pass (:func:`refscale.format.inter.choose_equal_quality`):
    per pair both ways (centre ``--crop`` px) and P-frame CRF, the intra frame at equal quality
    searched with the fast preset and with the real one (no early stop), and the log ratio of
    their sizes: the fast pass is safe with a margin above its maximum. Also where the search
    starts and ends (:data:`~refscale.format.inter.INTRA_OFFSET`) and how often each margin would
    keep the P-frame at once."""
    torch.set_num_threads(1)
    s = inter.SPECS[args.codec]
    fast = inter.FAST_PRESET[args.codec]
    version = inter.PAYLOAD_VERSION
    rows = []
    for name, new, ref, _ in _pairs(args):
        a, r = inter.to_planes(s, new), inter.to_planes(s, ref)
        size = new.shape[:2]
        for crf in args.crfs:
            pframe = inter.code_candidate(s, crf, "inter", a, r, version)
            target = inter.luma_mse(s, a, inter.decode_frames(s, pframe, inter.padded_size(s, *size))[-1], size)
            cu, pu = inter.intra_at_quality(s, a, size, target, crf + inter.INTRA_OFFSET, version, float("inf"), fast)
            cs, ps = inter.intra_at_quality(s, a, size, target, cu, version, float("inf"))
            rows.append({"image": name, "crf": crf, "p_bytes": len(pframe[1]), "fast_crf": cu, "fast_bytes": len(pu[0]),
                         "crf_": cs, "bytes": len(ps[0])})
            x = rows[-1]
            print(f"{name} CRF {crf}: P {x['p_bytes']} B; intra {fast} CRF {cu} {x['fast_bytes']} B, real CRF {cs} {x['bytes']} B; "
                  f"log(fast / real) {math.log(x['fast_bytes'] / x['bytes']):+.3f}", flush=True)
    gain = [math.log(x["fast_bytes"] / x["bytes"]) for x in rows]
    print(f"{args.codec}: {len(rows)} points; log(fast intra bytes / real intra bytes) at equal quality: median "
          f"{statistics.median(gain):+.3f}, range {min(gain):+.3f} .. {max(gain):+.3f}; fast CRF - P CRF: median "
          f"{statistics.median(x['fast_crf'] - x['crf'] for x in rows)}, range {min(x['fast_crf'] - x['crf'] for x in rows)} .. "
          f"{max(x['fast_crf'] - x['crf'] for x in rows)}; real CRF - fast CRF: range {min(x['crf_'] - x['fast_crf'] for x in rows)} .. "
          f"{max(x['crf_'] - x['fast_crf'] for x in rows)}; intra not larger than the P-frame at {sum(x['bytes'] <= x['p_bytes'] for x in rows)}")
    for m in args.margins:
        kept = [x for x in rows if math.log(x["fast_bytes"] / x["p_bytes"]) > m]
        wrong = [x for x in kept if x["bytes"] <= x["p_bytes"]]
        print(f"   margin {m:.2f}: the P-frame kept at once at {len(kept)} of {len(rows)} points, wrongly at {len(wrong)}")
    if args.out:
        save_results({"meta": {"codec": args.codec, "crop": args.crop, "crfs": args.crfs, "identity": inter.identity(args.codec)},
                      "rows": rows}, Path(args.out))


def encoded_images(args):
    """``(name, hr, ref, model, packet)`` of each image of ``args.data`` / ``args.split`` (only
    ``args.images`` if given) encoded by the scale-1 inter model of ``args.codec``; one thread."""
    from refscale import zoo  # noqa: PLC0415

    torch.set_num_threads(1)
    samples = [s for s in discover(args.data, split=args.split) if not args.images or s.name in args.images]
    model = zoo.load(f"inter-{args.codec.split('-')[0]}")
    for name, hr, ref in iter_full_images(samples, multiple=CROP):
        yield name, hr, ref, model, model.encode(hr, ref)


def budget(args) -> None:
    """A size budget (``--bpp``): the PSNR-Y ``auto`` reaches (the quality search on its choice)
    against the better of the searches with the mode forced to inter and to intra."""
    from refscale.format.container import bytes_for_bpp  # noqa: PLC0415

    gaps = []
    for name, hr, ref, model, packet in encoded_images(args):
        for bpp in args.bpp:
            got = {}
            for mode in ("inter", "intra", "auto"):
                with inter.default_mode(mode):
                    data, q = packet.fit(args.codec, bytes_for_bpp(bpp, packet.size))
                hat = model.decode(Packet.from_bytes(data), ref)
                got[mode] = (float(metrics.psnr(hat, hr, crop_border=CROP)[0]), q, len(data) * 8 / (hr.shape[-2] * hr.shape[-1]),
                             inter.parse(args.codec, Packet.from_bytes(data).lr_data).mode)
            gaps.append(got["auto"][0] - max(got["inter"][0], got["intra"][0]))
            print(f"{name} {bpp} bpp: " + ", ".join(f"{m} q{v[1]} {v[2]:.3f} bpp {v[0]:.2f} dB ({v[3]})" for m, v in got.items()) +
                  f"; auto - the better {gaps[-1]:+.2f} dB", flush=True)
    print(f"auto - the better within the budget: median {statistics.median(gaps):+.2f} dB, min {min(gaps):+.2f} dB over {len(gaps)}")


def timing(args) -> None:
    """Encode time of ``auto`` against ``inter`` (the whole LR section: for inter the P-frame and
    frame 0's check; for auto also the decision), the minimum of ``--repeats`` alternating runs."""
    ratios = []
    for name, hr, _ref, _model, packet in encoded_images(args):
        for q in args.qualities:
            best = {"inter": float("inf"), "auto": float("inf")}
            for _ in range(args.repeats):
                for mode in best:
                    t0 = time.perf_counter()
                    with inter.default_mode(mode):
                        data = packet.to_bytes(args.codec, q)
                    best[mode] = min(best[mode], time.perf_counter() - t0)
            chosen = inter.parse(args.codec, Packet.from_bytes(data).lr_data).mode
            mpx = hr.shape[-2] * hr.shape[-1] / 1e6
            ratios.append(best["auto"] / best["inter"])
            print(f"{name} q{q}: inter {best['inter'] / mpx:.2f} s/Mpx, auto {best['auto'] / mpx:.2f} s/Mpx "
                  f"({ratios[-1]:.2f}x, chose {chosen})", flush=True)
    print(f"auto / inter: median {statistics.median(ratios):.2f}, range {min(ratios):.2f} .. {max(ratios):.2f} over {len(ratios)}")


def _add_pair_options(p: argparse.ArgumentParser) -> None:
    """The options of the subcommands that read train pairs (``why``, ``margin``)."""
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--codec", default="hevc-inter", choices=list(inter.SPECS))
    p.add_argument("--limit", type=int, default=0, help="first N cities only")
    p.add_argument("--crop", type=int, default=320, help="centre N x N of each image (0: whole images)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("why", help="variants of the P-frame and of intra-only (resumable)")
    _add_pair_options(w)
    w.add_argument("--no-other", dest="other", action="store_false", help="skip the pairs with another city's reference")
    w.add_argument("--out", required=True)
    w.set_defaults(func=why)
    r = sub.add_parser("why-report", help="BD-rates of the variants")
    r.add_argument("--results", required=True)
    r.set_defaults(func=why_report)
    s = sub.add_parser("simulate", help="replay the decision on the why points")
    s.add_argument("--results", required=True)
    s.add_argument("--lambdas", nargs="*", type=float, default=[1.0], help="multiples of the codec's lambda")
    s.add_argument("--pair", nargs=2, default=["P v3", "I v3"], help="the P-frame and intra variants to decide between")
    s.add_argument("--sweep", default=None, help="their common qualities (a key of WHY_QUALITIES; default: the P-frame variant's)")
    s.add_argument("--margins", nargs="*", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5], help="fast-pass margins to try")
    s.add_argument("--verbose", action="store_true")
    s.set_defaults(func=simulate)
    k = sub.add_parser("check-report", help="per-image BD-rate of auto, from rd_curves.py run results")
    k.add_argument("--results", required=True, nargs="+", help="results JSON of benchmarks/rd_curves.py run with inter codecs")
    k.add_argument("--json", default=None)
    k.set_defaults(func=check_report)
    d = sub.add_parser("dense", help="the P-frame of payload versions 2 and 3 at one dense CRF sweep")
    d.add_argument("--data", required=True)
    d.add_argument("--split", default=None)
    d.add_argument("--images", nargs="*", default=None)
    d.add_argument("--codec", default="hevc-inter", choices=list(inter.SPECS))
    d.add_argument("--params", default=None, help="compare version 2 plus these encoder parameters instead of version 3")
    d.set_defaults(func=dense)
    g = sub.add_parser("margin", help="calibrate the equal-quality fast pass (fast against real intra presets)")
    _add_pair_options(g)
    g.add_argument("--crfs", nargs="*", type=int, default=[46, 38, 30, 22, 14, 6])
    g.add_argument("--margins", nargs="*", type=float, default=[0.1, 0.15, 0.2, 0.3])
    g.add_argument("--out", default=None)
    g.set_defaults(other=False, func=margin)
    b = sub.add_parser("budget", help="a size budget: auto against the better of inter and intra")
    b.add_argument("--data", required=True)
    b.add_argument("--split", default="test")
    b.add_argument("--images", nargs="*", default=None)
    b.add_argument("--codec", default="hevc-inter", choices=list(inter.SPECS))
    b.add_argument("--bpp", nargs="*", type=float, default=[0.5, 2.0, 4.0])
    b.set_defaults(func=budget)
    m = sub.add_parser("timing", help="encode time of auto against inter")
    m.add_argument("--data", required=True)
    m.add_argument("--split", default="test")
    m.add_argument("--images", nargs="*", default=None)
    m.add_argument("--codec", default="hevc-inter", choices=list(inter.SPECS))
    m.add_argument("--qualities", nargs="*", type=int, default=[25, 55, 75])
    m.add_argument("--repeats", type=int, default=3)
    m.set_defaults(func=timing)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
