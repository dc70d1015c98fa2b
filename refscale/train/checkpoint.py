"""Checkpoints: weights as safetensors (+ model card), everything else in a ``weights_only`` file.

Layout inside ``<run>/checkpoints/``::

    step_00001000.safetensors   weights (refscale.zoo.save_weights; arch + config in metadata)
    step_00001000.json          model card
    step_00001000.state.pt      optimizer, step, RNG states (torch, numpy, python, dataset) per
                                process, guard counters, wall time -- plain tensors/dicts only,
                                read back with torch.load(..., weights_only=True)
    latest.json                 pointer to the newest complete checkpoint, written last

Every file is written to a temporary name and moved into place with ``os.replace``; the pointer
is replaced only after both files of a checkpoint exist, so a crash at any moment leaves the
previous checkpoint usable. Older checkpoints beyond ``keep`` are removed afterwards.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refscale import zoo
from refscale.errors import RefScaleError

POINTER = "latest.json"
FORMAT = 1


# ---------------------------------------------------------------------------- RNG states
def _generator_state(obj: Any) -> dict | None:
    if isinstance(obj, torch.Generator):
        return {"type": "torch", "state": obj.get_state()}
    if isinstance(obj, np.random.Generator):
        return {"type": "numpy", "state": obj.bit_generator.state}
    if isinstance(obj, random.Random):
        return {"type": "python", "state": _py_state(obj.getstate())}
    return None


def _set_generator_state(obj: Any, saved: dict) -> None:
    if saved["type"] == "torch":
        obj.set_state(saved["state"])
    elif saved["type"] == "numpy":
        obj.bit_generator.state = saved["state"]
    else:
        obj.setstate(_py_unstate(saved["state"]))


def _py_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_unstate(saved: list) -> tuple:
    return (saved[0], tuple(saved[1]), saved[2])


def dataset_state(dataset: Any) -> dict:
    """The random state of a dataset: its ``state_dict()`` if it has one, otherwise the states
    of the random generators it holds as attributes (numpy, torch or python generators) and its
    private integer counters (``PairCropDataset._draws`` seeds each crop)."""
    if hasattr(dataset, "state_dict") and callable(dataset.state_dict):
        return {"state_dict": dataset.state_dict()}
    gens, counters = {}, {}
    for name, value in sorted(vars(dataset).items()):
        st = _generator_state(value)
        if st is not None:
            gens[name] = st
        elif name.startswith("_") and isinstance(value, int) and not isinstance(value, bool):
            counters[name] = value
    return {"generators": gens, "counters": counters}


def set_dataset_state(dataset: Any, saved: dict) -> None:
    if "state_dict" in saved:
        dataset.load_state_dict(saved["state_dict"])
        return
    for name, st in saved.get("generators", {}).items():
        if hasattr(dataset, name):
            _set_generator_state(getattr(dataset, name), st)
    for name, value in saved.get("counters", {}).items():
        setattr(dataset, name, value)


def rng_state(dataset: Any = None) -> dict:
    """Global torch/numpy/python RNG states (and the dataset's), as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _py_state(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if dataset is not None:
        state["dataset"] = dataset_state(dataset)
    return state


def set_rng_state(state: dict, dataset: Any = None) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_py_unstate(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if dataset is not None and "dataset" in state:
        set_dataset_state(dataset, state["dataset"])


# ---------------------------------------------------------------------------- save / load
def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def save(ckpt_dir: Path, step: int, model, card: dict, state: dict, keep: int = 2) -> Path:
    """Write one checkpoint (weights + card, then state, then the pointer); prune old ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step:08d}"
    weights = ckpt_dir / f"{stem}.safetensors"
    sha = zoo.save_weights(model, weights, card=card)
    _atomic_torch_save({**state, "format": FORMAT, "step": step, "weights": weights.name, "weights_sha256": sha},
                       ckpt_dir / f"{stem}.state.pt")
    _atomic_json({"step": step, "weights": weights.name, "state": f"{stem}.state.pt", "sha256": sha}, ckpt_dir / POINTER)
    stems = sorted({p.name.split(".")[0] for p in ckpt_dir.glob("step_*.state.pt")})
    for old in stems[: max(0, len(stems) - max(1, keep))]:
        for p in ckpt_dir.glob(f"{old}.*"):
            p.unlink(missing_ok=True)
    return weights


def latest(ckpt_dir: Path) -> dict | None:
    """The pointer of the newest complete checkpoint, or None."""
    p = ckpt_dir / POINTER
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise RefScaleError(f"checkpoint pointer {p} is corrupt; delete it to start over") from None


def load(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights state dict, training state) of the newest checkpoint; checks the weights' sha256."""
    from safetensors.torch import load_file

    ptr = latest(ckpt_dir)
    if ptr is None:
        raise RefScaleError(f"no checkpoint to resume from in {ckpt_dir}")
    weights, state_file = ckpt_dir / ptr["weights"], ckpt_dir / ptr["state"]
    if not weights.is_file() or not state_file.is_file():
        raise RefScaleError(f"checkpoint step {ptr['step']} in {ckpt_dir} is incomplete (missing files)")
    if zoo.sha256_file(weights) != ptr["sha256"]:
        raise RefScaleError(f"checkpoint weights {weights.name} do not match their sha256; the file is damaged")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise RefScaleError(f"cannot read checkpoint state {state_file.name}: {str(e).splitlines()[0]}") from None
    if state.get("format") != FORMAT or state.get("weights_sha256") != ptr["sha256"]:
        raise RefScaleError(f"checkpoint state {state_file.name} does not belong to {weights.name}")
    return load_file(str(weights)), state
