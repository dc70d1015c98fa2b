"""Copy a training run's weights into the package as shipped weights with a model card.

    python scripts/ship_weights.py RUN_DIR NAME [--note TEXT]

Takes the run's final weights (``RUN_DIR/NAME.safetensors``) or, if the run has not finished,
its latest checkpoint; re-saves them with :func:`refscale.zoo.save_weights` as
``refscale/weights/NAME.safetensors`` + ``NAME.json`` (the run's card: config, data, steps, wall
time, command, validation metrics; plus ``note`` and the new file's sha256).
"""
import argparse
import json
import os
from pathlib import Path

from refscale import zoo

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("run", type=Path)
ap.add_argument("name")
ap.add_argument("--note", default="")
args = ap.parse_args()

final = args.run / f"{args.name}.safetensors"
if final.exists():
    weights = final
else:
    latest = json.loads((args.run / "checkpoints" / "latest.json").read_text())
    weights = args.run / "checkpoints" / latest["weights"]
card = json.loads(weights.with_suffix(".json").read_text())
model = zoo.load_weights_file(weights, card.get("sha256"))
keep = ("data", "needs_reference", "params", "iterations", "wall_time_s", "command", "metrics", "val_history",
        "init_from", "training_config")
new_card = {k: card[k] for k in keep if k in card}
new_card["note"] = args.note
new_card["source"] = f"{weights.name} of run {args.run.name}"
out = zoo.WEIGHTS_DIR / f"{args.name}.safetensors"
digest = zoo.save_weights(model, out, card=new_card)
for p in (out, out.with_suffix(".json")):
    os.chmod(p, 0o644)
print(f"shipped {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}, {new_card.get('iterations')} steps)")
