"""The model catalogue: architectures by name, shipped weights, loading and saving.

* An *architecture* is registered under its catalogue name (``irn-x2``) with a class, default
  constructor arguments and its default shipped weights, by the
  :func:`refscale.protocol.register` decorator next to the class; importing
  ``refscale.models`` registers the built-in ones.
* *Weights* live in ``refscale/weights/<name>.safetensors`` with a JSON model card
  ``<name>.json`` (config, training data, command, steps, metrics, sha256). The
  safetensors metadata also carries ``arch`` and ``config``, so a path alone rebuilds
  the model. Loading checks the card's sha256 and refuses a file that does not match.
* A short name (``refscale-x2``) means the architecture's default weights (``weights=`` of its
  registration).
* A *scale picker* (:data:`PICKERS`, ``enhance-hevc``, ``enhance-avif``) stands for every registered
  architecture of one family after one codec, one per scale (``enhance-x1``, ``enhance-x2``); ``load`` gives a :class:`ScalePicker`
  of those with shipped weights, and encoding with a size budget keeps, per image, the member whose
  decoded image is best (:func:`refscale.pipeline.encode_best`). The container names that member.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

import refscale.models  # noqa: F401  (importing it registers the built-in architectures)
from refscale.errors import InputError, ModelError
from refscale.protocol import REGISTRY, ArchSpec, Rescaler
from refscale.weights_io import load_into, read_safetensors

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def architectures() -> dict[str, ArchSpec]:
    """Every registered architecture, by catalogue name."""
    return dict(sorted(REGISTRY.items()))


def default_weights(name: str) -> str | None:
    """The shipped weights a short name (``irn-x2``) stands for, or ``None``."""
    spec = architectures().get(name)
    return spec.weights if spec is not None else None


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
    return weights_cards().get(default_weights(text) or text, {})


#: validation entries whose bicubic baselines differ by more than this were measured on other
#: images (OSCD and natural crops differ by 7-9 dB; a model's alignment moves the same crops by ~0.01)
SAME_VALIDATION_DB = 0.5


def same_validation(entries: list[dict[str, Any]], like: dict[str, Any]) -> list[dict[str, Any]]:
    """The validation ``entries`` measured on the same crops as ``like``: told apart by the bicubic
    baseline of the crops, ``bicubic_psnr_y`` (within :data:`SAME_VALIDATION_DB`); entries without
    it are kept."""
    if "bicubic_psnr_y" not in like:
        return list(entries)
    b = like["bicubic_psnr_y"]
    return [h for h in entries if abs(h.get("bicubic_psnr_y", b) - b) <= SAME_VALIDATION_DB]


def val_history(card: dict[str, Any]) -> list[dict[str, Any]]:
    """A card's validation history ``[{"step", "psnr_y", ...}]`` on its own validation crops (a
    warm start's entries from another dataset, :func:`same_validation`, are left out); for cards
    written before the engine recorded it, the one final validation (``metrics``) at ``iterations``."""
    if card.get("val_history"):
        hist = list(card["val_history"])
        return same_validation(hist, hist[-1])
    if card.get("val_history") is not None:
        return []
    metrics = {k[4:]: v for k, v in card.get("metrics", {}).items() if k.startswith("val_")}
    return [{"step": card.get("iterations", 0), **metrics}] if metrics else []


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights_file(path: str | os.PathLike, expected_sha256: str | None = None) -> Rescaler:
    """Build a model from a ``.safetensors`` file written by :func:`save_weights`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ModelError(f"weights {path.name} do not match their model card (sha256 {actual[:12]}, card says {expected_sha256[:12]})")
    tensors, meta = read_safetensors(path)
    if "arch" not in meta or "config" not in meta:
        raise ModelError(f"{path} has no refscale metadata (arch, config); save it with refscale.zoo.save_weights")
    try:
        config = json.loads(meta["config"])
    except ValueError:
        raise ModelError(f"{path}: the config in its metadata is not valid JSON") from None
    model = build(meta["arch"], **config)
    load_into(model, tensors, path, f"architecture {meta['arch']}")
    model.name = meta.get("name", path.stem)
    if "decode_temperature" in meta:
        try:
            t = float(meta["decode_temperature"])
        except ValueError:
            t = -1.0
        if not (math.isfinite(t) and t >= 0):
            raise ModelError(f"{path}: decode_temperature in its metadata must be a number >= 0, got {meta['decode_temperature']!r}")
        model.decode_temperature = t
    return model.eval()


def card_text(card: dict[str, Any]) -> str:
    """A model card as JSON text: indented, except that each ``val_history`` entry (one per
    validation of the run, dozens in a long one) is kept on one line."""
    history = card.get("val_history")
    if not isinstance(history, list) or not history:
        return json.dumps(card, indent=2) + "\n"
    marker = "\u0000val_history\u0000"
    text = json.dumps({**card, "val_history": marker}, indent=2)
    rows = ",\n".join("    " + json.dumps(row) for row in history)
    return text.replace(json.dumps(marker), "[\n" + rows + "\n  ]") + "\n"


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
    if model.decode_temperature != Rescaler.decode_temperature:
        meta["decode_temperature"] = repr(float(model.decode_temperature))
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
        tmpc.write_text(card_text(full))
        os.replace(tmpc, path.with_suffix(".json"))
    return digest


#: scale pickers: catalogue name -> ``(family, codec)``: the registered names of that architecture
#: family (``Rescaler.arch``) whose default codec is that codec are its members, one per scale; a new
#: scale of the family is a member by its registration alone
PICKERS: dict[str, tuple[str, str]] = {"enhance-hevc": ("enhance", "hevc-inter"), "enhance-avif": ("enhance", "avif")}


def picker_members(name: str) -> list[str]:
    """The catalogue names a scale picker stands for (its family, after its codec), by scale
    (``["enhance-x1", "enhance-x2"]``)."""
    arch, codec = PICKERS[name]
    specs = [spec for spec in architectures().values() if spec.cls.arch == arch and spec.defaults.get("codec") == codec]
    return [spec.name for spec in sorted(specs, key=lambda spec: spec.defaults.get("scale", 0))]


def check_picker_budget(name: str, quality: int | None, bpp: float | None, max_bytes: int | None) -> None:
    """The scale picker ``name`` takes a size budget and no quality: else a one-line :class:`InputError`
    (before anything loads)."""
    if quality is not None or (bpp is None and max_bytes is None):
        given = f"a quality (-q {quality})" if quality is not None else "no size budget"
        raise InputError(f"{name} picks the scale and quality within a size budget and was given {given}: "
                         f"give --bpp X or --bytes N, or use a single-scale model "
                         f"({', '.join(picker_members(name))}) with -q")


class ScalePicker:
    """A catalogue name standing for several models, one per scale (:data:`PICKERS`): encoding with
    a size budget (``refscale encode NEW --ref REF -m enhance-hevc --bpp X``,
    :func:`refscale.files.encode_file`) codes the image with each member, fits each to the budget and
    writes the one whose decoded image is best (:func:`refscale.pipeline.encode_best`); the container
    names that member, so decoding needs nothing else. ``members``: the loaded models, by scale;
    ``left_out``: member names without shipped weights. Not a model itself: anything else asked of
    it is a one-line :class:`ModelError`."""

    export_refusal = "it stands for several models, one per scale: export one of them"

    def __init__(self, name: str, members: list[Rescaler], left_out: list[str] | tuple = ()):
        codecs_ = {m.default_codec for m in members}
        if not members or len(codecs_) != 1:
            raise ModelError(f"scale picker {name}: needs members with one default codec, got {sorted(codecs_)}")
        self.name, self.members, self.left_out = name, list(members), list(left_out)
        self.needs_reference = any(m.needs_reference for m in members)
        self.default_codec = codecs_.pop()
        self.default_quality = None  # a picker takes a budget, never a quality

    def check_budget(self, quality: int | None, bpp: float | None, max_bytes: int | None) -> None:
        """Refuse a fixed quality, or no budget: the picker chooses the scale and quality within a budget."""
        check_picker_budget(self.name, quality, bpp, max_bytes)

    def member(self, name: str) -> Rescaler:
        """The member named ``name`` (as a container records it)."""
        for m in self.members:
            if m.name == name:
                return m
        raise ModelError(f"{self.name} has no member {name!r} (members: {', '.join(m.name for m in self.members)})")

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        members = ", ".join(m.name for m in self.__dict__.get("members", []))
        raise ModelError(f"{self.__dict__.get('name')} stands for {members} and picks one per image only when "
                         f"encoding with a size budget (refscale encode --bpp/--bytes); here give one of them "
                         f"(a picker has no {attr!r})")

    def __repr__(self) -> str:
        return f"ScalePicker({self.name!r}, members={[m.name for m in self.members]})"


def load_picker(name: str, pretrained: bool = True, device: str | torch.device = "cpu") -> ScalePicker:
    """The :class:`ScalePicker` ``name``: its members with shipped weights (``pretrained=False``:
    every member, randomly initialised); a :class:`ModelError` when none has them."""
    names = picker_members(name)
    cards = weights_cards()
    usable = [n for n in names if not pretrained or default_weights(n) in cards]
    if not usable:
        raise ModelError(f"{name} picks among {', '.join(names)}, none of which has shipped weights here; "
                         "use one of them with a .safetensors path")
    return ScalePicker(name, [load(n, pretrained, device) for n in usable], [n for n in names if n not in usable])


def load(name: str | os.PathLike, pretrained: bool = True, device: str | torch.device = "cpu") -> Rescaler | ScalePicker:
    """A model by catalogue name, weights name or ``.safetensors`` path, in eval mode.

    ``load("refscale-x2")`` gives the default shipped weights; ``pretrained=False`` gives the
    same architecture randomly initialised. A scale picker's name (:data:`PICKERS`) gives a
    :class:`ScalePicker`.
    """
    text = os.fspath(name)
    if text.endswith(".safetensors"):
        return load_weights_file(text).to(device)
    if text in PICKERS:
        return load_picker(text, pretrained, device)
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
        default = archs[text].weights
        if pretrained and default in cards:
            return load(default, pretrained=True, device=device)
        model = build(text)
        if pretrained and model.num_parameters() > 0:
            raise ModelError(
                f"no shipped weights for {text} yet; use pretrained=False for a random model "
                "or give a .safetensors path"
            )
        return model.to(device).eval()
    raise ModelError(f"unknown model {text!r}; known: {', '.join(sorted(set(archs) | set(cards) | set(PICKERS)))}")


def catalogue() -> list[dict[str, Any]]:
    """One row per architecture, per scale picker and per shipped weights: name, scale, reference, params, weights.
    A name's row describes what ``load(name)`` gives: its default shipped weights' configuration
    where there are such weights (their parameter count), else the architecture's defaults."""
    cards = weights_cards()
    rows = []
    for name, spec in architectures().items():
        card = cards.get(spec.weights) if spec.weights else None
        try:
            model = build(card["arch"], **card.get("config", {})) if card else build(name)
            params = model.num_parameters()
            needs_ref = model.needs_reference
            scale = model.scale
            note = ""
        except ModelError as e:  # e.g. an optional dependency missing
            params, needs_ref, scale, note = None, getattr(spec.cls, "needs_reference", False), spec.defaults.get("scale"), str(e)
        default = spec.weights
        rows.append({
            "name": name, "scale": scale, "needs_reference": needs_ref, "params": params,
            "weights": default if default in cards else ("none needed" if params == 0 else None),
            "note": note,
        })
    for name in PICKERS:
        members = picker_members(name)
        missing = [n for n in members if default_weights(n) not in cards]
        rows.append({
            "name": name, "scale": None, "needs_reference": any(architectures()[n].cls.needs_reference for n in members),
            "params": None, "weights": None,
            "note": f"picks {' / '.join(members)} per image within --bpp / --bytes"
                    + (f" ({', '.join(missing)}: no shipped weights, left out)" if missing else ""),
        })
    for wname, card in cards.items():
        rows.append({
            "name": wname, "scale": card.get("config", {}).get("scale"), "needs_reference": card.get("needs_reference"),
            "params": card.get("params"), "weights": "shipped", "note": card.get("data", ""),
        })
    return rows
