"""The model catalogue: architectures by name, shipped weights, loading and saving.

* An *architecture* is registered under its catalogue name (``irn-x2``) with a class
  and default constructor arguments (:func:`register`).
* *Weights* live in ``refscale/weights/<name>.safetensors`` with a JSON model card
  ``<name>.json`` (config, training data, command, steps, metrics, sha256). The
  safetensors metadata also carries ``arch`` and ``config``, so a path alone rebuilds
  the model. Loading checks the card's sha256 and refuses a file that does not match.
* A short name (``refscale-x2``) means the default weights in :data:`DEFAULT_WEIGHTS`.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from refscale.errors import ModelError
from refscale.models.base import Rescaler

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: short name -> weights name used when ``pretrained=True``
DEFAULT_WEIGHTS: dict[str, str] = {
    "irn-x2": "irn-x2-oscd",
    "irn-x4": "irn-x4-oscd",
    "refscale-x2": "refscale-x2-oscd",
    "refscale-x4": "refscale-x4-oscd",
    "fgrn-x2": "fgrn-x2-natural",
    "fgrn-x4": "fgrn-x4-natural",
}

#: modules that register built-in architectures when imported
_BUILTIN_MODULES = (
    "refscale.models.bicubic",
    "refscale.models.irn",
    "refscale.models.refscale_net",
    "refscale.models.fgrn",
    "refscale.models.tadm",
)


@dataclass
class ArchSpec:
    name: str
    cls: type[Rescaler]
    defaults: dict[str, Any] = field(default_factory=dict)


_ARCHS: dict[str, ArchSpec] = {}
_loaded_builtins = False


def register(name: str, cls: type[Rescaler], **defaults: Any) -> None:
    """Register an architecture under its catalogue name, e.g. ``register("irn-x2", IRN, scale=2)``."""
    _ARCHS[name] = ArchSpec(name, cls, defaults)


def _ensure_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a model not written yet, or an optional dependency
            if e.name != mod and not (e.name or "").startswith(("diffusers", "peft")):
                raise


def architectures() -> dict[str, ArchSpec]:
    _ensure_builtins()
    return dict(sorted(_ARCHS.items()))


def build(arch: str, **overrides: Any) -> Rescaler:
    """A fresh, randomly initialised model of a registered architecture."""
    specs = architectures()
    if arch not in specs:
        raise ModelError(f"unknown model {arch!r}; known: {', '.join(specs)}")
    spec = specs[arch]
    model = spec.cls(**{**spec.defaults, **overrides})
    model.name = arch
    return model


def weights_cards() -> dict[str, dict[str, Any]]:
    """Model cards of the shipped weights, by weights name."""
    cards = {}
    for p in sorted(WEIGHTS_DIR.glob("*.json")):
        try:
            card = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        cards[p.stem] = card
    return cards


def card_for(name: str | os.PathLike) -> dict[str, Any]:
    """The model card of a weights name, a short name (its default weights) or a ``.safetensors``
    path (the ``.json`` beside it); ``{}`` when there is none (e.g. bicubic)."""
    text = os.fspath(name)
    if text.endswith(".safetensors"):
        p = Path(text).with_suffix(".json")
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except ValueError:
            return {}
    return weights_cards().get(DEFAULT_WEIGHTS.get(text, text), {})


def val_history(card: dict[str, Any]) -> list[dict[str, Any]]:
    """A card's validation history ``[{"step", "psnr_y", ...}]``; for cards written before the
    engine recorded it, the one final validation (``metrics``) at ``iterations``."""
    if card.get("val_history") is not None:
        return list(card["val_history"])
    metrics = {k[4:]: v for k, v in card.get("metrics", {}).items() if k.startswith("val_")}
    return [{"step": card.get("iterations", 0), **metrics}] if metrics else []


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read weights {path}: {e}") from None
    return tensors, meta


def load_weights_file(path: str | os.PathLike, expected_sha256: str | None = None) -> Rescaler:
    """Build a model from a ``.safetensors`` file written by :func:`save_weights`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ModelError(f"weights {path.name} do not match their model card (sha256 {actual[:12]}, card says {expected_sha256[:12]})")
    tensors, meta = _read_safetensors(path)
    if "arch" not in meta or "config" not in meta:
        raise ModelError(f"{path} has no refscale metadata (arch, config); save it with refscale.zoo.save_weights")
    try:
        config = json.loads(meta["config"])
    except ValueError:
        raise ModelError(f"{path}: the config in its metadata is not valid JSON") from None
    model = build(meta["arch"], **config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path} does not fit architecture {meta['arch']}: {str(e).splitlines()[0]}") from None
    model.name = meta.get("name", path.stem)
    return model.eval()


def save_weights(model: Rescaler, path: str | os.PathLike, card: dict[str, Any] | None = None,
                 half: bool = False) -> str:
    """Write ``model`` to ``path`` (.safetensors, atomically) and, if ``card`` is given, a JSON
    model card beside it with the file's sha256 added. Returns the sha256.

    ``half``: store floating-point tensors as float16 (half the bytes; the shipped weights). They
    load into the float32 model as usual (``load_state_dict`` converts); ``scripts/ship_weights.py``
    checks that this moves validation PSNR-Y by less than 0.01 dB before it ships such a file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.stem
    meta = {"arch": f"{model.arch}-x{model.scale}", "config": json.dumps(model.config, sort_keys=True), "name": name}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if half:
        too_big = [k for k, v in state.items() if v.is_floating_point() and v.abs().max() > 65000]
        if too_big:
            raise ModelError(f"cannot store {name} as float16: values beyond its range in {', '.join(too_big[:3])}")
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        meta["stored_dtype"] = "float16"
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    digest = sha256_file(path)
    if card is not None:
        full = {"name": name, "arch": meta["arch"], "config": model.config, **card, "sha256": digest}
        tmpc = path.with_suffix(".json.tmp")
        tmpc.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        os.replace(tmpc, path.with_suffix(".json"))
    return digest


def load(name: str | os.PathLike, pretrained: bool = True, device: str | torch.device = "cpu") -> Rescaler:
    """A model by catalogue name, weights name or ``.safetensors`` path, in eval mode.

    ``load("refscale-x2")`` gives the default shipped weights; ``pretrained=False`` gives the
    same architecture randomly initialised.
    """
    text = os.fspath(name)
    if text.endswith(".safetensors"):
        return load_weights_file(text).to(device)
    cards = weights_cards()
    archs = architectures()
    if text in cards:
        card = cards[text]
        if not pretrained:
            model = build(card["arch"], **card.get("config", {}))
        else:
            model = load_weights_file(WEIGHTS_DIR / f"{text}.safetensors", card.get("sha256"))
        model.name = text
        return model.to(device).eval()
    if text in archs:
        if pretrained and text in DEFAULT_WEIGHTS and DEFAULT_WEIGHTS[text] in cards:
            return load(DEFAULT_WEIGHTS[text], pretrained=True, device=device)
        model = build(text)
        if pretrained and model.num_parameters() > 0:
            raise ModelError(
                f"no shipped weights for {text} yet; use pretrained=False for a random model "
                "or give a .safetensors path"
            )
        return model.to(device).eval()
    raise ModelError(f"unknown model {text!r}; known: {', '.join(sorted(set(archs) | set(cards)))}")


def catalogue() -> list[dict[str, Any]]:
    """One row per architecture and per shipped weights: name, scale, reference, params, weights."""
    cards = weights_cards()
    rows = []
    for name, spec in architectures().items():
        try:
            model = build(name)
            params = model.num_parameters()
            needs_ref = model.needs_reference
            scale = model.scale
            note = ""
        except ModelError as e:  # e.g. an optional dependency missing
            params, needs_ref, scale, note = None, getattr(spec.cls, "needs_reference", False), spec.defaults.get("scale"), str(e)
        default = DEFAULT_WEIGHTS.get(name)
        rows.append({
            "name": name, "scale": scale, "needs_reference": needs_ref, "params": params,
            "weights": default if default in cards else ("none needed" if params == 0 else None),
            "note": note,
        })
    for wname, card in cards.items():
        rows.append({
            "name": wname, "scale": card.get("config", {}).get("scale"), "needs_reference": card.get("needs_reference"),
            "params": card.get("params"), "weights": "shipped", "note": card.get("data", ""),
        })
    return rows
