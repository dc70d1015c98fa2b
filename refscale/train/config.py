"""Training configuration: YAML files as data, defaults, validation and ``--set`` overrides.

A config has these sections (every key optional except ``model.arch``, ``data.path`` and
``schedule.steps``); :data:`DEFAULTS` gives the values used when a key is missing::

    name: null                                      # final weights <run>/<name>.safetensors; default <arch>-<data folder>
    seed: 0
    model:     {arch: refscale-x2, config: {...constructor overrides...}, module: null, init_weights: null,
                train_options: {...}}
    optim:     {name: adam, lr, betas, eps, weight_decay, grad_clip, lr_mult: {group: factor}}
    data:      {path, split, val_names, val_split, patch_size, both_directions, augment, colour_augment, batch_size,
                coded}                              # coded: items carry the codec's decode (see below)
    schedule:  {steps, warmup_steps, decay, decay_start, min_lr, milestones, gamma}   # see below
    precision: {bf16, channels_last, threads}       # bf16: true | false | auto (bf16 autocast only where native)
    checkpoint:{every_minutes, every_steps, keep}
    val:       {every_steps, max_images, crop, seed}
    log:       {every_steps, tensorboard, progress}
    guard:     {max_bad_steps, max_grad_ratio}      # abort after N non-finite steps in a row; skip spikes
    ddp:       {backend, find_unused_parameters}
    device: auto                                    # auto | cpu | cuda

Learning-rate schedule (``schedule``), one function of the step (``engine.lr_at``):

* ``warmup_steps`` (default 0): linear ramp from ``lr / warmup_steps`` to ``optim.lr``;
* ``decay: step`` (default; IRN's MultiStepLR): ``lr * gamma ** (#milestones <= step)``;
* ``decay: cosine | linear``: ``optim.lr`` held until ``decay_start * steps`` (a fraction, default
  0.75), then a cosine or linear fall to ``min_lr`` (default 0) at ``steps``; ``milestones`` must
  then be empty. The short-budget recipe (docs/training.md, "The short-budget recipe") is warm-up,
  constant peak, cosine over the last quarter.

``data.batch_size`` is the *total* batch over all processes (``torchrun``), so one config means
the same training at any process count. ``model.module`` names a Python module imported before
the model is built (to register architectures that are not built in). ``model.init_weights``
(a shipped weights name such as ``irn-x2-oscd`` or a ``.safetensors`` path) starts the run from
those weights instead of a random init (fine-tuning, or continuing a finished run with a new
schedule); the architecture and its config must match, or the model must know how to
``warm_start`` from them (RefScale with ``inn_block: irn`` from an IRN of the same scale). The
final model card then counts the earlier steps and wall time too and keeps the earlier
validation history. ``model.train_options`` go to ``model.configure_training(step, **options)``
before every step (e.g. RefScale's ``guide_ramp_steps``). ``optim.lr_mult`` maps the names of
``model.parameter_groups()`` to learning-rate multipliers (e.g. ``{refnet: 2.0, cond: 2.0}``).

``data.coded: true`` (issue 27, a codec in the training loop): ``data.path`` is a manifest whose
5th column names each row's LR as the codec decoded it (``scripts/build_codec_cache.py``); the
crops then carry it (:class:`refscale.data.PairCropDataset` ``coded``), the engine calls
``model.training_losses(hr, ref, coded=...)``, and validation rebuilds the held-out rows from
their decoded LR instead of the model's own 8-bit LR.

A config file may start from another: ``base: irn-x2-oscd-cpu.yaml`` (see :func:`read_yaml`).

Relative ``data.path`` values are looked up in the current directory, then beside the config
file, then in the config file's parent directory (the repository root for ``configs/*.yaml``).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from refscale.errors import RefScaleError


class ConfigError(RefScaleError):
    """A training config is missing, malformed or inconsistent."""


DEFAULTS: dict[str, Any] = {
    "name": None,
    "seed": 0,
    "device": "auto",
    "model": {"arch": None, "config": {}, "module": None, "init_weights": None, "train_options": {}},
    "data": {
        "path": None,
        "split": "train",
        "val_names": [],
        "val_split": None,
        "patch_size": 128,
        "both_directions": False,
        "augment": True,
        "colour_augment": 0.0,
        "batch_size": 8,
        "coded": False,
    },
    "optim": {"name": "adam", "lr": 2e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "grad_clip": None,
              "lr_mult": {}},
    "schedule": {"steps": None, "warmup_steps": 0, "decay": "step", "decay_start": 0.75, "min_lr": 0.0,
                 "milestones": [], "gamma": 0.5},
    "precision": {"bf16": False, "channels_last": False, "threads": None},
    "checkpoint": {"every_minutes": 10.0, "every_steps": None, "keep": 2},
    "val": {"every_steps": 1000, "max_images": 2, "crop": 256, "seed": 0, "codec": None, "quality": None},
    "log": {"every_steps": 20, "tensorboard": True, "progress": True},
    "guard": {"max_bad_steps": 20, "max_grad_ratio": None},
    "ddp": {"backend": "auto", "find_unused_parameters": False},
}

_OPEN_SECTIONS = {("model", "config"), ("model", "train_options"), ("optim", "lr_mult")}  # free-form dictionaries (constructor arguments)


def _merge(base: dict, override: dict, where: str = "") -> dict:
    """``base`` updated by ``override``; unknown keys are errors (typos must not pass silently)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {path!r}; known here: {', '.join(base)}")
        if isinstance(base[key], dict) and tuple(path.split(".")) not in _OPEN_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} must be a mapping, got {type(value).__name__}")
            out[key] = _merge(base[key], value, path + ".")
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} must be a mapping, got {type(value).__name__}")
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


def _check(cfg: dict) -> dict:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(isinstance(cfg["model"]["arch"], str) and cfg["model"]["arch"], "config needs model.arch (e.g. refscale-x2)")
    need(cfg["data"]["path"] is not None, "config needs data.path (a dataset folder or manifest)")
    steps = cfg["schedule"]["steps"]
    need(isinstance(steps, int) and not isinstance(steps, bool) and steps > 0, f"schedule.steps must be a positive integer, got {steps!r}")
    for key in ("patch_size", "batch_size"):
        v = cfg["data"][key]
        need(isinstance(v, int) and v > 0, f"data.{key} must be a positive integer, got {v!r}")
    need(isinstance(cfg["data"]["val_names"], list), "data.val_names must be a list of sample names")
    lr = cfg["optim"]["lr"]
    need(isinstance(lr, (int, float)) and lr > 0, f"optim.lr must be a positive number, got {lr!r}")
    need(cfg["optim"]["name"] in ("adam", "adamw"), f"optim.name must be adam or adamw, got {cfg['optim']['name']!r}")
    betas = cfg["optim"]["betas"]
    need(isinstance(betas, (list, tuple)) and len(betas) == 2, f"optim.betas must be two numbers, got {betas!r}")
    ms = cfg["schedule"]["milestones"]
    need(isinstance(ms, list) and all(isinstance(m, int) and m > 0 for m in ms), f"schedule.milestones must be a list of positive integers, got {ms!r}")
    sch = cfg["schedule"]
    need(sch["decay"] in ("step", "cosine", "linear"), f"schedule.decay must be step, cosine or linear, got {sch['decay']!r}")
    need(sch["decay"] == "step" or not ms, "schedule.milestones only apply to decay: step; remove them for cosine/linear")
    wu = sch["warmup_steps"]
    need(isinstance(wu, int) and not isinstance(wu, bool) and wu >= 0, f"schedule.warmup_steps must be a non-negative integer, got {wu!r}")
    ds = sch["decay_start"]
    need(isinstance(ds, (int, float)) and 0.0 <= ds <= 1.0, f"schedule.decay_start must be a fraction in [0, 1], got {ds!r}")
    ml = sch["min_lr"]
    need(isinstance(ml, (int, float)) and 0.0 <= ml <= lr, f"schedule.min_lr must be in [0, optim.lr], got {ml!r}")
    need(cfg["device"] in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    need(isinstance(cfg["guard"]["max_bad_steps"], int) and cfg["guard"]["max_bad_steps"] > 0, "guard.max_bad_steps must be a positive integer")
    ratio = cfg["guard"]["max_grad_ratio"]
    need(ratio is None or (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 1),
         f"guard.max_grad_ratio must be a number > 1 (or null: off), got {ratio!r}")
    need(isinstance(cfg["seed"], int), f"seed must be an integer, got {cfg['seed']!r}")
    bf16 = cfg["precision"]["bf16"]
    need(isinstance(bf16, bool) or bf16 == "auto", f"precision.bf16 must be true, false or auto, got {bf16!r}")
    mult = cfg["optim"]["lr_mult"]
    need(all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in mult.values()),
         f"optim.lr_mult must map parameter-group names to non-negative numbers, got {mult!r}")
    init = cfg["model"]["init_weights"]
    need(init is None or (isinstance(init, str) and init.strip()), f"model.init_weights must be a weights name or path, got {init!r}")
    val_codec = cfg["val"]["codec"]
    if val_codec is not None:
        from refscale.format import codecs

        try:
            canonical = codecs.canonical(val_codec)
            codecs.check_quality(canonical, cfg["val"]["quality"])
        except RefScaleError as e:
            raise ConfigError(f"val.codec / val.quality: {e}") from None
        need(not codecs.needs_reference(canonical), f"val.codec must be a still codec (jpeg, webp, avif, jxl, j2k), got {val_codec!r}")
        need(not cfg["data"]["coded"], "val.codec does not apply with data.coded (the cache's codec decodes are validated)")
    need(val_codec is not None or cfg["val"]["quality"] is None, "val.quality needs val.codec")
    name = cfg["name"]
    need(name is None or (isinstance(name, str) and name.strip() and "/" not in name and "\\" not in name),
         f"name must be a file name without a folder (e.g. refscale-x2-oscd), got {name!r}")
    return cfg


def resolve(config: dict | None) -> dict:
    """Defaults filled in, unknown keys rejected, values checked. Returns a new dict."""
    if config is None or not isinstance(config, dict):
        raise ConfigError("a training config must be a mapping (YAML dictionary)")
    return _check(_merge(DEFAULTS, config))


class _Loader(yaml.SafeLoader):
    """YAML as :func:`yaml.safe_load` reads it, except that ``1e-4`` and ``3E+2`` are numbers (YAML 1.1,
    PyYAML's dialect, reads a float without a dot as a string; YAML 1.2 and Python read it as a
    number, and so does every learning rate written that way)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str):
    """YAML text as a config reads it (:class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def parse_overrides(items: list[str] | None) -> dict:
    """``["optim.lr=1e-4", "data.path=/x"]`` -> nested dict; values are parsed as YAML."""
    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=1e-4)")
        try:
            value = load_yaml(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def deep_update(base: dict, override: dict) -> dict:
    """Nested update without validation (validation happens in :func:`resolve`)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a dict, with its ``base:`` chain merged in: ``base: other.yaml`` (relative
    to this file) is read first and this file's keys update it (nested mappings key by key), so a
    variant states only what differs. Cycles and missing bases are clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the file name of another config, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: base configs form a cycle through {base_path.name}")
    return deep_update(read_yaml(base_path, _seen + (path.resolve(),)), raw)


def load_file(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML config (with its ``base:`` chain), apply ``key=value`` overrides, resolve
    relative data paths."""
    path = Path(path)
    raw = read_yaml(path)
    cfg = resolve(deep_update(raw, parse_overrides(overrides)))
    cfg["data"]["path"] = str(find_path(cfg["data"]["path"], path))
    init = cfg["model"]["init_weights"]
    if init is not None and init.endswith(".safetensors"):
        cfg["model"]["init_weights"] = str(find_path(init, path))
    return cfg


def find_path(value: str, config_file: Path) -> Path:
    """A relative path: the current directory, then beside the config, then its parent."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), config_file.parent, config_file.parent.parent):
        if (base / p).exists():
            return (base / p).resolve()
    return p  # leave it; the data reader reports the missing path
