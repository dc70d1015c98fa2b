"""Copy a training run's weights into the package as shipped weights with a model card.

    python scripts/ship_weights.py RUN_DIR NAME [--note TEXT] [--min-gain 0.2] [--force] [--fp32] [--check-only]

Takes the run's final weights (``RUN_DIR/NAME.safetensors``) or, if the run has not finished,
its latest checkpoint, and applies the training campaign's shipping rule (issue 13):

* validation: PSNR-Y and PSNR-RGB at latent temperature t = 1 (mean over ``--draws`` seeds) and
  t = 0 on the *whole* held-out images of the run's config (``data.val_names``, e.g. the OSCD
  cities aguasclaras and bordeaux), for the new weights and for the weights shipped under NAME
  now, each at its decoding temperature;
* decoding temperature (stochastic models): ``--decode-temperature auto`` (the default) keeps
  t = 1 unless t = 0 scores higher in ``--metric`` (weights trained with latent temperatures 0-1,
  issue 26), and records the choice in the file's metadata
  (:attr:`refscale.protocol.Rescaler.decode_temperature`); ``0`` / ``1`` force one;
* the new weights ship only if they gain at least ``--min-gain`` dB in ``--metric`` (PSNR-Y by
  default; PSNR-RGB for the colour-robust runs) (``--force`` ships anyway, e.g. a new architecture);
* storage: float16 (half the bytes) unless ``--fp32``; refused if that moves the validation
  PSNR-Y by 0.01 dB or more.
* through the verifying encoder (models it checks, ``refscale.pipeline.verifiable``): PSNR-RGB of
  the whole held-out images encoded with verification and decoded, new against shipped; refused
  when the new weights lose more than ``--min-gain`` there (a colour-robust ``irn-x4`` passed the
  rule above, but its inverse broke around the bicubic fallback blocks, so the verification sent
  whole images to bicubic: docs/robustness.md).

The card (``refscale/weights/NAME.json``) keeps the run's card (config, data, steps, wall time,
command, validation history, init_from) and adds ``note``, ``source`` and ``ship_check`` (the
numbers above), then the new file's sha256.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from refscale import pipeline, zoo
from refscale.train import engine
from refscale.train.config import resolve


def heldout_scores(model, cfg: dict, draws: int) -> dict[str, float]:
    """Mean PSNR-Y, PSNR-RGB (t = 1, over ``draws`` seeds) and PSNR-Y at t = 0 on the whole
    held-out images of a training config."""
    cfg = resolve({**cfg, "val": {**cfg["val"], "crop": 100000, "max_images": 100}})
    _, val = engine.split_samples(cfg)
    crops = engine.val_crops(val, cfg, model.alignment, model.needs_reference)
    if not crops:
        raise SystemExit("ship_weights: the run's config holds no validation images (data.val_names)")
    runs = [engine.validate(model, crops, seed=1000 * d) for d in range(draws)]
    return {k: sum(r[k] for r in runs) / draws for k in ("psnr_y", "psnr_rgb", "psnr_y_t0", "psnr_rgb_t0")}


def verified_psnr_rgb(model, cfg: dict) -> tuple[float, float]:
    """``(PSNR-RGB, fraction of blocks to the fallback)`` on the whole held-out images of a
    training config, each encoded with the verifying encoder (the model's default codec and
    quality), written and decoded from the file's bytes as the receiver will (the recorded seed
    and temperature)."""
    from refscale.format.container import Packet
    from refscale.metrics import psnr

    cfg = resolve({**cfg, "val": {**cfg["val"], "crop": 100000, "max_images": 100}})
    _, val = engine.split_samples(cfg)
    crops = engine.val_crops(val, cfg, model.alignment, model.needs_reference)
    scores, fallback, blocks = [], 0, 0
    for name, hr, ref, *_ in crops:
        packet = pipeline.encode(model, hr, ref if model.needs_reference else None, verify=True)
        sent = Packet.from_bytes(packet.to_bytes(), lr_ref=packet.lr_ref)  # the file: a lossy codec's LR as decoded
        out = pipeline.decode(model, sent, ref if model.needs_reference else None)
        scores.append(float(psnr(out, hr, y_channel=False)[0]))
        report = packet.verify_report or {}
        fallback, blocks = fallback + report.get("fallback_blocks", 0), blocks + report.get("blocks", 0)
    return sum(scores) / len(scores), fallback / max(blocks, 1)


def at_temperature(scores: dict[str, float], t: float) -> dict[str, float]:
    """PSNR-Y / PSNR-RGB of ``scores`` (:func:`heldout_scores`) as decoded at temperature ``t``."""
    suffix = "_t0" if t == 0 else ""
    return {k: scores[k + suffix] for k in ("psnr_y", "psnr_rgb")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("name")
    ap.add_argument("--note", default="")
    ap.add_argument("--min-gain", type=float, default=0.2, help="dB of validation PSNR (--metric) over the shipped weights")
    ap.add_argument("--metric", choices=("psnr_y", "psnr_rgb"), default="psnr_y",
                    help="what the gain is measured in (psnr_rgb for the colour-robust runs of issue 26)")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--force", action="store_true", help="ship even without the gain")
    ap.add_argument("--check-only", action="store_true", help="print the held-out comparison and ship nothing")
    ap.add_argument("--fp32", action="store_true", help="store float32 instead of float16")
    ap.add_argument("--data", default=None, help="dataset path if not the one in the run's config")
    ap.add_argument("--decode-temperature", choices=("auto", "0", "1"), default="auto",
                    help="the weights' decoding temperature (stochastic models; auto: the better of 0 and 1 in --metric)")
    args = ap.parse_args()
    torch.set_num_threads(2)

    final = args.run / f"{args.name}.safetensors"
    if final.exists():
        weights = final
    else:
        latest = json.loads((args.run / "checkpoints" / "latest.json").read_text())
        weights = args.run / "checkpoints" / latest["weights"]
    card = json.loads(weights.with_suffix(".json").read_text())
    model = zoo.load_weights_file(weights, card.get("sha256"))
    cfg = card["training_config"]
    if args.data:
        cfg = {**cfg, "data": {**cfg["data"], "path": args.data}}

    scores = heldout_scores(model, cfg, args.draws)
    if not model.stochastic:
        model.decode_temperature = 1.0
    elif args.decode_temperature == "auto":
        model.decode_temperature = 0.0 if scores[args.metric + "_t0"] > scores[args.metric] else 1.0
    else:
        model.decode_temperature = float(args.decode_temperature)
    new = at_temperature(scores, model.decode_temperature)
    old = old_scores = None
    if args.name in zoo.weights_cards():
        shipped = zoo.load(args.name)
        if (shipped.arch, shipped.scale) == (model.arch, model.scale):
            old_scores = heldout_scores(shipped, cfg, args.draws)
            old = at_temperature(old_scores, shipped.decode_temperature)
        elif not args.force:
            sys.exit(f"not shipped: {args.name} now holds {shipped.arch}-x{shipped.scale} weights, these are "
                     f"{model.arch}-x{model.scale}; use --force to replace them")
    gain = None if old is None else new[args.metric] - old[args.metric]
    for key, what in (("psnr_y", "PSNR-Y"), ("psnr_rgb", "PSNR-RGB"), ("psnr_y_t0", "PSNR-Y at t = 0"),
                      ("psnr_rgb_t0", "PSNR-RGB at t = 0")):
        before = "-" if old_scores is None else f"{old_scores[key]:.3f}"
        print(f"{args.name}: held-out {what} {scores[key]:.3f} dB (shipped now: {before})")
    print(f"decoding temperature {model.decode_temperature:g}: PSNR-Y {new['psnr_y']:.3f}, PSNR-RGB {new['psnr_rgb']:.3f} dB")
    print(f"gain in {args.metric}: {'-' if gain is None else f'{gain:+.3f}'} dB")
    verified = None
    if pipeline.verifiable(model):
        verified = {"psnr_rgb": None, "previous_psnr_rgb": None}
        verified["psnr_rgb"], verified["fallback"] = verified_psnr_rgb(model, cfg)
        if old is not None:
            verified["previous_psnr_rgb"], verified["previous_fallback"] = verified_psnr_rgb(shipped, cfg)
        print(f"verifying encoder: PSNR-RGB {verified['psnr_rgb']:.3f} dB, {verified['fallback']:.1%} of the blocks to the fallback"
              + ("" if old is None else f" (shipped now: {verified['previous_psnr_rgb']:.3f} dB, {verified['previous_fallback']:.1%})"))
    if args.check_only:
        sys.exit(0)
    if gain is not None and gain < args.min_gain and not args.force:
        sys.exit(f"not shipped: gain {gain:+.3f} dB < {args.min_gain} dB (use --force to ship anyway)")
    if verified is not None and verified["previous_psnr_rgb"] is not None and \
            verified["psnr_rgb"] < verified["previous_psnr_rgb"] - args.min_gain and not args.force:
        sys.exit("not shipped: through the verifying encoder the new weights lose "
                 f"{verified['previous_psnr_rgb'] - verified['psnr_rgb']:.3f} dB RGB (use --force to ship anyway)")

    check = {"heldout_psnr_y": round(new["psnr_y"], 4), "previous_psnr_y": None if old is None else round(old["psnr_y"], 4),
             "heldout_psnr_rgb": round(new["psnr_rgb"], 4), "previous_psnr_rgb": None if old is None else round(old["psnr_rgb"], 4),
             "decode_temperature": model.decode_temperature,
             "heldout_t1": {k: round(scores[k], 4) for k in ("psnr_y", "psnr_rgb")},
             "heldout_t0": {k: round(scores[k + "_t0"], 4) for k in ("psnr_y", "psnr_rgb")}, "metric": args.metric,
             "draws": args.draws, "images": list(cfg["data"]["val_names"]), "stored": "float32" if args.fp32 else "float16"}
    if verified is not None:
        check["verified"] = {k: v if v is None else round(v, 4) for k, v in verified.items()}
    if not args.fp32:
        with tempfile.TemporaryDirectory() as tmp:
            half = Path(tmp) / f"{args.name}.safetensors"
            zoo.save_weights(model, half, half=True)
            half_model = zoo.load_weights_file(half)
            half_psnr = at_temperature(heldout_scores(half_model, cfg, args.draws), half_model.decode_temperature)["psnr_y"]
        check["fp16_delta_db"] = round(half_psnr - new["psnr_y"], 5)
        print(f"float16 storage: {half_psnr:.4f} dB ({half_psnr - new['psnr_y']:+.5f} dB)")
        if abs(half_psnr - new["psnr_y"]) >= 0.01:
            sys.exit("not shipped: float16 storage moves PSNR-Y by 0.01 dB or more; use --fp32")

    keep = ("data", "needs_reference", "params", "iterations", "wall_time_s", "command", "metrics", "val_history",
            "init_from", "bf16", "training_config")
    new_card = {k: card[k] for k in keep if k in card}
    new_card.update(note=args.note, source=f"{weights.name} of run {args.run.name}", ship_check=check)
    out = zoo.WEIGHTS_DIR / f"{args.name}.safetensors"
    digest = zoo.save_weights(model, out, card=new_card, half=not args.fp32)
    for p in (out, out.with_suffix(".json")):
        os.chmod(p, 0o644)
    print(f"shipped {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}, {new_card.get('iterations')} steps)")


if __name__ == "__main__":
    main()
