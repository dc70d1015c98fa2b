"""Model-agnostic training engine (``refscale train CONFIG.yaml``).

The engine knows nothing about a model except the :class:`~refscale.protocol.Rescaler`
protocol: it builds it with ``refscale.zoo.build(arch, **config)``, minimises
``model.training_losses(hr, ref)["total"]`` and logs every term of that dict. Validation uses
the public maps only: ``downscale`` -> LR rounded to 8 bits -> ``upscale`` (temperature 1, fixed
seed) and PSNR-Y (``refscale.metrics.psnr``, border = scale) on centre crops of held-out pairs.

One training step (the same on 1 or N processes):

1. the global batch ``data.batch_size`` is drawn from an epoch permutation that is a pure function
   of (seed, epoch) -- the sampler needs no state -- and process ``r`` takes every N-th item;
2. loss under optional bf16 autocast, backward (always, so that DDP's all-reduce stays in step);
3. gradient norm, clipped to ``optim.grad_clip`` if set;
4. NaN/inf guard: a non-finite loss or gradient norm on any process skips the optimizer update on
   all of them; ``guard.max_bad_steps`` such steps in a row abort with a :class:`TrainingError`.
   Spike guard (``guard.max_grad_ratio``, off by default): a gradient norm above that many times
   the median of the last 100 skips the update too (counted in ``spikes``): with norms clipped
   to ``grad_clip`` every step looks alike to Adam, and one outlier batch has thrown IRN-type
   flows back by hundreds of steps (docs/training.md, "The short-budget recipe");
5. learning rate of the step from :func:`lr_at` (warm-up, then step halving or a constant peak with
   a cosine/linear tail; see :mod:`refscale.train.config`).

Checkpoints (see :mod:`refscale.train.checkpoint`) hold the weights, the optimizer, the step and
every process's RNG states, so ``resume=True`` continues exactly where the run stopped. Ctrl-C
or SIGTERM writes a checkpoint at the end of the current step and stops.

The run folder::

    config.yaml                 the resolved config
    metrics.jsonl               one JSON object per log interval / validation (learning curves)
    tb/                         TensorBoard scalars (train/<loss term>, lr, val/psnr_y, ...)
    checkpoints/                see refscale.train.checkpoint
    <name>.safetensors + .json  final weights and model card (name: config ``name``, default
                                ``<arch>-<data folder>``, e.g. ``refscale-x2-oscd``)

Several processes: ``torchrun --nproc_per_node N -m refscale.cli train CONFIG.yaml`` (or
``python -m torch.distributed.run``); gloo on CPU, nccl on GPU; gradients are averaged by
``DistributedDataParallel``. Models with data-dependent initialisation (ActNorm) get one
forward pass before DDP is set up, so DDP's start-up broadcast gives every process rank 0's
initialised weights.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from refscale import zoo
from refscale.errors import ModelError, RefScaleError
from refscale.format.rounding import to_uint8, to_uint8_hwc
from refscale.nn.speed import resolve_bf16
from refscale.train import checkpoint as ckpt
from refscale.train.config import DEFAULTS, ConfigError, load_file, load_yaml, resolve


#: spike guard (``guard.max_grad_ratio``): the median of this many recent gradient norms is the
#: reference, and the guard waits until it has this many
SPIKE_WINDOW, SPIKE_MIN_HISTORY = 100, 20


class TrainingError(RefScaleError):
    """Training cannot go on (e.g. the loss stayed NaN/inf for too many steps)."""


class TrainingStopped(TrainingError):
    """Training was interrupted (Ctrl-C, SIGTERM) after a checkpoint was written."""


# ---------------------------------------------------------------------------- helpers
def lr_at(step: int, cfg: dict) -> float:
    """Learning rate of 0-based ``step``: linear warm-up over ``warmup_steps``, then ``decay``
    (``step``: MultiStepLR halving at ``milestones``; ``cosine``/``linear``: constant until
    ``decay_start * steps``, then falling towards ``min_lr``, which step ``steps`` would reach:
    the last step trained runs one step's worth above it)."""
    s, peak = cfg["schedule"], cfg["optim"]["lr"]
    if step < s["warmup_steps"]:
        return peak * (step + 1) / s["warmup_steps"]
    if s["decay"] == "step":
        return peak * s["gamma"] ** sum(step >= m for m in s["milestones"])
    start = max(s["warmup_steps"], int(s["decay_start"] * s["steps"]))
    if step < start:
        return peak
    frac = (step - start) / max(1, s["steps"] - start)  # 0 at the start of the tail, -> 1 at the end
    shape = 0.5 * (1.0 + math.cos(math.pi * frac)) if s["decay"] == "cosine" else 1.0 - frac
    return s["min_lr"] + (peak - s["min_lr"]) * shape


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Dist:
    """Process group facts (a single process is world 1, rank 0)."""

    def __init__(self, backend: str, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owned = False
        if self.world > 1 and not torch.distributed.is_initialized():
            if backend == "auto":
                backend = "nccl" if device_kind == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
            self.owned = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, *flags: bool):
        """For each flag: True if it is true on any process (one value for one flag)."""
        if self.world > 1:
            t = torch.tensor([1.0 if f else 0.0 for f in flags])
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flags = tuple(bool(x > 0) for x in t.tolist())
        return _any_local(*flags)

    def gather(self, obj: Any) -> list:
        """Every process's ``obj`` on rank 0 (other ranks get an empty list)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out or []

    def close(self) -> None:
        if self.owned:
            torch.distributed.destroy_process_group()


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop then saves a checkpoint at the next step boundary and
    stops. A second signal acts as usual (the default handler is restored)."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: keep the default behaviour
                pass

    def _handle(self, signum, frame):
        self.requested = True
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


class _LossForward(nn.Module):
    """``forward`` = ``model.training_losses``, so DDP can wrap it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, hr: torch.Tensor, ref: torch.Tensor | None, coded: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if coded is None:
            return self.model.training_losses(hr, ref)
        return self.model.training_losses(hr, ref, coded=coded)


class _Sampler:
    """Stateless sampler: the global batch of ``step`` follows from (seed, step) alone."""

    def __init__(self, length: int, batch: int, seed: int, rank: int, world: int):
        self.length, self.batch, self.seed, self.rank, self.world = length, batch, seed, rank, world
        self._cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._cache = {epoch: torch.randperm(self.length, generator=g).tolist()}
        return self._cache[epoch]

    def indices(self, step: int) -> list[int]:
        first = step * self.batch
        flat = [self._perm(i // self.length)[i % self.length] for i in range(first, first + self.batch)]
        return flat[self.rank :: self.world]


def split_samples(cfg: dict) -> tuple[list, list]:
    """``(train, val)``: the samples of a config's ``data`` section as the trainer splits them:
    ``val_names`` held out of ``split``, else all of ``split`` against ``val_split``, else no
    validation; :class:`~refscale.errors.ConfigError` for a ``val_names`` entry not in the split
    or no training sample left."""
    from refscale import data as rdata

    d = cfg["data"]
    samples = rdata.discover(d["path"], d["split"])
    if d["val_names"]:
        names = {s.name for s in samples}
        missing = [n for n in d["val_names"] if n not in names]
        if missing:
            raise ConfigError(f"data.val_names not in {d['path']} (split {d['split']}): {', '.join(missing)}; available: {', '.join(sorted(names))}")
        val = [s for s in samples if s.name in d["val_names"]]
        train = [s for s in samples if s.name not in d["val_names"]]
    elif d["val_split"]:
        train, val = samples, rdata.discover(d["path"], d["val_split"])
    else:
        train, val = samples, []
    if not train:
        raise ConfigError(f"no training samples left in {d['path']} after holding out the validation images")
    return train, val


def val_crops(samples: list, cfg: dict, multiple: int, needs_ref: bool) -> list[tuple]:
    """Centre crops (``val.crop``, a multiple of the model's alignment) of the first
    ``val.max_images`` held-out images, decoded once: ``(name, hr, ref)``, with ``data.coded``
    ``(name, hr, ref, coded)`` (the decoded LR cropped alike; the crop's offsets are then
    multiples of the alignment)."""
    from refscale import data as rdata
    from refscale.io.image import read_image

    v, coded = cfg["val"], cfg["data"]["coded"]
    out = []
    for s, (name, hr, ref) in zip(samples, rdata.iter_full_images(samples[: v["max_images"]], multiple=multiple)):
        h, w = hr.shape[-2:]
        ch = min(v["crop"], h) // multiple * multiple
        cw = min(v["crop"], w) // multiple * multiple
        if ch == 0 or cw == 0:
            continue
        top, left = (h - ch) // 2, (w - cw) // 2
        if coded:
            top, left = top // multiple * multiple, left // multiple * multiple
        crop = (slice(None), slice(None), slice(top, top + ch), slice(left, left + cw))
        if needs_ref and ref is None:
            raise ConfigError(f"validation image {name} has no reference but the model needs one")
        item = (name, hr[crop].contiguous(), ref[crop].contiguous() if ref is not None else None)
        if coded:
            if s.coded is None:
                raise ConfigError(f"validation image {name} has no coded image (manifest column 5) but data.coded is set")
            c = read_image(s.coded)
            k = max(1, round(h / c.shape[-2]))  # the model's scale (the HR was mod-cropped, the LR may be padded)
            if not (0 <= c.shape[-2] - h // k <= 1 and 0 <= c.shape[-1] - w // k <= 1) or multiple % k:
                raise ConfigError(f"validation image {name}: coded image {tuple(c.shape[-2:])} is not the HR {(h, w)} "
                                  f"divided by the model's scale")
            item += (c[..., top // k:(top + ch) // k, left // k:(left + cw) // k].contiguous(),)
        out.append(item)
    return out


@torch.no_grad()
def validate(model, crops, seed: int = 0, channels_last: bool = False, codec: str | None = None,
             quality: int | None = None) -> dict[str, float]:
    """Mean PSNR-Y / PSNR-RGB of ``upscale(round8(downscale(hr)))`` (temperature 1, seeded), the
    same at temperature 0 (``psnr_y_t0``, ``psnr_rgb_t0``), the PSNR-Y of the LR against the bicubic-downscaled HR and
    the bicubic baseline; fp32. With ``codec`` (a still codec, ``val.codec`` / ``val.quality``)
    also the model with its LR through the real codec at ``quality`` (``codec_psnr_y`` /
    ``codec_psnr_rgb``, decoded at the model's decoding temperature), the bicubic pipeline
    through it (``coded_psnr_y`` / ``coded_psnr_rgb``) and the two codes' sizes
    (``codec_lr_bytes`` / ``coded_bytes``, side information not counted). The global RNG states
    are left untouched."""
    if not crops:
        return {}
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        return _validate(model, crops, seed, channels_last, codec, quality)


def _through_codec(lr: torch.Tensor, codec: str, quality: int | None) -> tuple[torch.Tensor, int]:
    """``lr [1, 3, h, w]`` coded and decoded by a still codec (``refscale.format.codecs``), and
    the size of the code in bytes."""
    from refscale.format import codecs

    data = codecs.encode_image(to_uint8_hwc(lr.float().cpu()), codec, quality)
    dec = codecs.decode_image(data, codec)
    return torch.from_numpy(dec).permute(2, 0, 1)[None].float().div(255.0).to(lr.device), len(data)


def _validate(model, crops, seed, channels_last, codec=None, quality=None):
    from refscale import metrics, ops

    was_training = model.training
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    sums: dict[str, float] = {}
    for i, (_, hr, ref, *coded) in enumerate(crops):
        hr = hr.to(dev)
        ref = ref.to(dev) if (ref is not None and model.needs_reference) else None
        x_hr = hr.contiguous(memory_format=torch.channels_last) if channels_last else hr
        x_ref = ref.contiguous(memory_format=torch.channels_last) if (channels_last and ref is not None) else ref
        lr, side = model.downscale(x_hr, x_ref)
        lr_q = to_uint8(lr.float()).float() / 255.0
        if coded:  # data.coded: the LR as the codec decoded it
            lr_q = coded[0].to(dev)
        g = torch.Generator(device=dev).manual_seed(seed + i)
        hr_hat = model.upscale(lr_q, side, x_ref, temperature=1.0, generator=g).float()
        hr_t0 = model.upscale(lr_q, side, x_ref, temperature=0.0, generator=g).float()
        s = model.scale
        vals = {
            "psnr_y": metrics.psnr(hr_hat, hr, crop_border=s, y_channel=True).mean().item(),
            "psnr_rgb": metrics.psnr(hr_hat, hr, crop_border=s, y_channel=False).mean().item(),
            "psnr_y_t0": metrics.psnr(hr_t0, hr, crop_border=s).mean().item(),
            "psnr_rgb_t0": metrics.psnr(hr_t0, hr, crop_border=s, y_channel=False).mean().item(),
            "lr_psnr_y": metrics.psnr(lr_q, ops.bicubic_down(hr, s), crop_border=0, y_channel=True).mean().item(),
            "bicubic_psnr_y": metrics.psnr(ops.bicubic_up(ops.bicubic_down(hr, s), s), hr, crop_border=s).mean().item(),
        }
        if not coded and codec is not None:  # val.codec: the model and bicubic through a real codec too
            lr_c, vals["codec_lr_bytes"] = _through_codec(lr, codec, quality)
            plain, vals["coded_bytes"] = _through_codec(ops.bicubic_down(hr, s), codec, quality)
            coded = [plain]
            temperature = getattr(model, "decode_temperature", 1.0)
            g = torch.Generator(device=dev).manual_seed(seed + i)
            hat_c = model.upscale(lr_c, side, x_ref, temperature=temperature, generator=g).float()
            vals["codec_psnr_y"] = metrics.psnr(hat_c, hr, crop_border=s).mean().item()
            vals["codec_psnr_rgb"] = metrics.psnr(hat_c, hr, crop_border=s, y_channel=False).mean().item()
        if coded:  # the plain codec's decode (bicubic-upscaled): the baseline a learned decoder must beat
            plain = coded[0].to(dev)
            plain = plain if s == 1 else ops.bicubic_up(plain, s)
            vals["coded_psnr_y"] = metrics.psnr(plain.clamp(0, 1), hr, crop_border=s).mean().item()
            vals["coded_psnr_rgb"] = metrics.psnr(plain.clamp(0, 1), hr, crop_border=s, y_channel=False).mean().item()
        for k, v in vals.items():
            sums[k] = sums.get(k, 0.0) + v
    model.train(was_training)
    return {k: v / len(crops) for k, v in sums.items()}


def _collate(items: list[dict], device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(hr, ref or None, coded or None)`` batches of the dataset's items."""
    def stack(key):
        if key not in items[0]:
            return None
        t = torch.stack([it[key] for it in items]).to(device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    return stack("hr"), stack("ref"), stack("coded")


class _JsonLog:
    """``metrics.jsonl``: one JSON object per line (``step`` plus scalars)."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.is_file():  # drop lines written after the checkpoint
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except ValueError:  # a line cut short by the interruption
                    pass
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _load_init_weights(model: nn.Module, spec: str) -> dict:
    """Copy the weights ``spec`` (a weights name or ``.safetensors`` path) into ``model``.

    Returns what the final card records about them: the source, its weights hash, and the steps,
    wall time and validation history of its own card (zero / empty without a card), and that
    card's own ``init_from`` (so a card names every stage of a chain of warm starts).
    """
    src = zoo.load(spec)
    free = set(getattr(model, "config_without_weights", ()))  # keys that change no tensor (RefScale's smap_pool)

    def weighted(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in free}

    if (src.arch, src.scale) == (model.arch, model.scale) and weighted(src.config) == weighted(model.config):
        model.load_state_dict(src.state_dict(), strict=True)
    elif hasattr(model, "warm_start"):  # e.g. RefScale's INN from an IRN
        try:
            model.warm_start(src)
        except ModelError as e:
            raise ConfigError(f"model.init_weights {spec}: {e}") from None
    else:
        raise ConfigError(f"model.init_weights {spec} is {src.arch}-x{src.scale} with config {src.config}, "
                          f"not the {model.arch}-x{model.scale} being trained with config {model.config}")
    card = zoo.card_for(spec)
    return {"weights": str(spec), "weights_hash": src.weights_hash(), "iterations": int(card.get("iterations", 0)),
            "wall_time_s": float(card.get("wall_time_s", 0.0)), "val_history": zoo.val_history(card),
            **({"init_from": card["init_from"]} if card.get("init_from") else {})}


def _val_history(log: Path, offset: int) -> list[dict]:
    """Validation records of ``metrics.jsonl`` as ``{"step": offset + step, "psnr_y": ...}``."""
    rows = []
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            val = {k[4:]: round(v, 4) for k, v in rec.items() if k.startswith("val/")}
            if val:
                rows.append({"step": offset + rec["step"], **val})
    return rows


def _join_history(before: list[dict], run: list[dict]) -> list[dict]:
    """The source card's history, then this run's without its step-0 repeat of the last entry.
    Entries of the source validated on other images (a warm start from another dataset, e.g. a
    natural-image model from an OSCD one) are left out (:func:`refscale.zoo.same_validation`)."""
    if run:
        before = zoo.same_validation(before, run[0])
    if before and run and run[0]["step"] == before[-1]["step"]:
        run = run[1:]
    return before + run


def _describe_data(cfg: dict, train, val) -> str:
    d = cfg["data"]
    text = f"{Path(d['path']).name} split={d['split']} ({len(train)} images"
    text += ", both directions)" if d["both_directions"] else ")"
    if val:
        text += f"; validation: {', '.join(s.name for s in val)}"
    return text


def _any_local(*flags: bool):
    return flags[0] if len(flags) == 1 else flags


def training_step(loss_fn, optimizer, params, hr, ref, *, bf16=False, grad_clip=None, any_bad=_any_local,
                  skip_above: float | None = None, coded: torch.Tensor | None = None):
    """One optimisation step: loss (bf16 autocast if asked), backward, gradient norm (clipped to
    ``grad_clip``), NaN/inf guard, optimizer update. ``loss_fn(hr, ref)`` returns the loss dict
    (``model.training_losses`` or its DDP wrapper). ``any_bad(*flags)`` combines flags over
    processes (``_Dist.any``). ``skip_above``: a finite gradient norm above it also skips the
    update (a spike). Returns ``(losses, grad_norm, status)``, ``status`` one of ``"ok"``,
    ``"nonfinite"`` (on any process) and ``"spike"``; only ``"ok"`` updated the weights.
    ``coded`` (``data.coded``): the batch's decoded LR, passed on as ``loss_fn(hr, ref, coded)``.
    """
    with torch.autocast(hr.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
        losses = loss_fn(hr, ref) if coded is None else loss_fn(hr, ref, coded)
    total = losses["total"]
    optimizer.zero_grad(set_to_none=True)
    total.float().backward()  # always, even when non-finite: DDP's all-reduce must run on every process
    grads = [p.grad for p in params if p.grad is not None]
    gnorm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
    bad = not (math.isfinite(total.item()) and math.isfinite(gnorm.item()))
    spike = not bad and skip_above is not None and gnorm.item() > skip_above
    bad, spike = any_bad(bad, spike)
    if bad or spike:
        optimizer.zero_grad(set_to_none=True)
        return losses, gnorm, "nonfinite" if bad else "spike"
    if grad_clip:
        torch.nn.utils.clip_grads_with_norm_(grads, grad_clip, gnorm)
    optimizer.step()
    return losses, gnorm, "ok"


# ---------------------------------------------------------------------------- main entry points
def train(config: dict, out_dir, resume: bool = False) -> dict:
    """Train the model described by ``config`` (see :mod:`refscale.train.config`) into ``out_dir``.

    Returns ``{"steps", "weights", "out_dir", "val", "loss", "skipped_steps", "wall_time_s",
    "weights_hash", "rank", "world_size"}`` (``weights_hash``: this process's final weights).
    """
    cfg = resolve(config)
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    dev_kind = "cuda" if (cfg["device"] == "cuda" or (cfg["device"] == "auto" and torch.cuda.is_available())) else "cpu"
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA device is available")
    if not resume and ckpt.latest(ckpt_dir) is not None:
        raise ConfigError(f"{out} already holds a training run; use --resume to continue it or choose another --out")
    if resume and ckpt.latest(ckpt_dir) is None:
        raise ConfigError(f"nothing to resume: no checkpoint in {ckpt_dir}")
    if resume and (out / "config.yaml").is_file():
        old = load_yaml((out / "config.yaml").read_text())
        old_model = {**DEFAULTS["model"], **(old.get("model") or {})}  # runs written before a model key existed
        if old_model != cfg["model"]:
            raise ConfigError(f"the model section differs from the run in {out}; resume needs the same model")

    dist = _Dist(cfg["ddp"]["backend"], dev_kind)
    try:
        return Trainer(cfg, out, ckpt_dir, resume, dist, dev_kind).run()
    finally:
        dist.close()


class Trainer:
    """One training run, in the order the methods are called: :meth:`__init__` sets up the model
    (and its init weights), data, optimizer, the resumed state and the run folder's logs;
    :meth:`run` repeats :meth:`step`, :meth:`validate` and :meth:`checkpoint` as the config says
    and ends with :meth:`finish` (final validation, checkpoint, weights + model card)."""

    def __init__(self, cfg: dict, out: Path, ckpt_dir: Path, resume: bool, dist: _Dist, dev_kind: str):
        self.cfg, self.out, self.ckpt_dir, self.dist = cfg, out, ckpt_dir, dist
        prec = cfg["precision"]
        self.use_bf16 = resolve_bf16(prec["bf16"], dev_kind)
        if prec["threads"]:
            torch.set_num_threads(int(prec["threads"]))
        self.device = torch.device(dev_kind, dist.local_rank) if dev_kind == "cuda" else torch.device("cpu")
        if dev_kind == "cuda":
            torch.cuda.set_device(self.device)
        self.say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if dist.main else (lambda *a: None)
        self.step_no, self.wall_before, self.skipped, self.bad_streak, self.last_val = 0, 0.0, 0, 0, {}
        self.gnorm_history: list[float] = []  # recent gradient norms (spike guard)
        self.spikes = 0
        self._setup_model(resume)
        self._setup_data()
        self._setup_optimizer()
        if resume:
            self._resume()
        elif dist.world > 1:  # data-dependent init (ActNorm) on rank 0's batch wins via DDP's broadcast
            with torch.no_grad():
                hr, ref, coded = self._batch(0)
                self.model.training_losses(hr, ref, **({"coded": coded} if coded is not None else {}))
        self.loss_fn: nn.Module = _LossForward(self.model)
        if dist.world > 1:
            self.loss_fn = nn.parallel.DistributedDataParallel(
                self.loss_fn, device_ids=[self.device.index] if dev_kind == "cuda" else None,
                find_unused_parameters=cfg["ddp"]["find_unused_parameters"])
        self._setup_logging(resume)

    # ------------------------------------------------------------------ set-up
    def _setup_model(self, resume: bool) -> None:
        cfg = self.cfg
        if cfg["model"]["module"]:
            importlib.import_module(cfg["model"]["module"])
        _seed_everything(cfg["seed"])  # the same init on every process
        model = zoo.build(cfg["model"]["arch"], **cfg["model"]["config"]).to(self.device)
        # a resumed run takes what it started from out of its checkpoint (the source may have changed since)
        self.init = _load_init_weights(model, cfg["model"]["init_weights"]) if cfg["model"]["init_weights"] and not resume else None
        if cfg["precision"]["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        d = cfg["data"]
        if d["patch_size"] % model.alignment:
            raise ConfigError(f"data.patch_size {d['patch_size']} is not a multiple of the model's alignment {model.alignment}")
        if d["batch_size"] % self.dist.world:
            raise ConfigError(f"data.batch_size {d['batch_size']} is not divisible by the {self.dist.world} processes")
        self.model = model

    def _setup_data(self) -> None:
        from refscale import data as rdata

        cfg, d, dist, model = self.cfg, self.cfg["data"], self.dist, self.model
        self.train_samples, self.val_samples = split_samples(cfg)
        self.use_ref = model.needs_reference
        if self.use_ref and any(s.ref is None for s in self.train_samples):
            raise ConfigError(f"model {cfg['model']['arch']} needs reference images but {d['path']} has images without one")
        self.rank_seed = cfg["seed"] + 7919 * dist.rank  # per-process randomness from here on
        self.dataset = rdata.PairCropDataset(self.train_samples, d["patch_size"], augment=d["augment"],
                                             both_directions=d["both_directions"], scale_multiple=model.alignment,
                                             seed=self.rank_seed, colour=d["colour_augment"], coded=d["coded"])
        _seed_everything(self.rank_seed)
        self.sampler = _Sampler(len(self.dataset), d["batch_size"], cfg["seed"], dist.rank, dist.world)
        self.val_crops = val_crops(self.val_samples, cfg, model.alignment, self.use_ref) if dist.main else []

    def _setup_optimizer(self) -> None:
        cfg, o = self.cfg, self.cfg["optim"]
        groups = {k: [p for p in ps if p.requires_grad] for k, ps in self.model.parameter_groups().items()}
        unknown = sorted(set(o["lr_mult"]) - set(groups))
        if unknown:
            raise ConfigError(f"optim.lr_mult names unknown parameter groups {unknown}; {cfg['model']['arch']} has {sorted(groups)}")
        self.params = [p for ps in groups.values() for p in ps]
        ids, trainable = [id(p) for p in self.params], {id(p) for p in self.model.parameters() if p.requires_grad}
        if len(set(ids)) != len(ids) or set(ids) != trainable:
            raise ConfigError(f"{cfg['model']['arch']}.parameter_groups() must hold every trainable parameter exactly once")
        opt_cls = torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls([{"params": ps, "name": k, "lr_mult": float(o["lr_mult"].get(k, 1.0))}
                                  for k, ps in groups.items() if ps],
                                 lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
        try:
            self.model.configure_training(0, **cfg["model"]["train_options"])
        except (ModelError, TypeError, ValueError) as e:
            raise ConfigError(f"model.train_options: {e}") from None

    def _resume(self) -> None:
        weights, state = ckpt.load(self.ckpt_dir)
        self.model.load_state_dict(weights, strict=True)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # e.g. a run saved before the model had parameter groups
            raise ConfigError(f"cannot resume the optimizer of {self.out}: {e}") from None
        for group in self.optimizer.param_groups:  # the multipliers of this config, not the saved ones
            group["lr_mult"] = float(self.cfg["optim"]["lr_mult"].get(group.get("name", "main"), 1.0))
        self.step_no, self.wall_before = state["step"], state["wall_time_s"]
        self.skipped, self.bad_streak, self.last_val = state["skipped_steps"], state["bad_streak"], state.get("val", {})
        self.gnorm_history, self.spikes = list(state.get("gnorm_history", [])), int(state.get("spikes", 0))
        self.init = state.get("init")
        rngs = state["rng"]
        if len(rngs) == self.dist.world:
            ckpt.set_rng_state(rngs[self.dist.rank], self.dataset)
        else:  # another process count: exact continuation is impossible; stay deterministic
            self.say(f"note: checkpoint was written by {len(rngs)} processes, now {self.dist.world}; reseeding RNGs")
            _seed_everything(self.rank_seed + self.step_no)
        self.say(f"resuming {self.out} at step {self.step_no}")

    def _setup_logging(self, resume: bool) -> None:
        self.writer = self.jlog = None
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))
            self.jlog = _JsonLog(self.out / "metrics.jsonl", self.step_no if resume else None)
            if self.cfg["log"]["tensorboard"]:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step_no if resume else None)
        self.data_text = _describe_data(self.cfg, self.train_samples, self.val_samples)
        d, prec = self.cfg["data"], self.cfg["precision"]
        self.say(f"training {self.cfg['model']['arch']} ({self.model.num_parameters() / 1e6:.3f}M params) on {self.data_text}; "
                 f"{self.cfg['schedule']['steps']} steps, batch {d['batch_size']} x {d['patch_size']} px, "
                 f"{self.dist.world} process(es), bf16={self.use_bf16} ({prec['bf16']}) "
                 f"channels_last={prec['channels_last']} threads={torch.get_num_threads()} -> {self.out}")

    # ------------------------------------------------------------------ pieces of the loop
    def _batch(self, step: int):
        items = [self.dataset[i] for i in self.sampler.indices(step)]
        return _collate(items, self.device, self.cfg["precision"]["channels_last"])

    def log(self, record: dict) -> None:
        if self.jlog is not None:
            self.jlog.write(record)
        if self.writer is not None:
            for k, v in record.items():
                if k not in ("step", "time_s") and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    def wall_time(self) -> float:
        return self.wall_before + time.monotonic() - self.t_start

    def step(self) -> tuple[dict, torch.Tensor, bool, float]:
        """One optimisation step at the schedule's learning rate; returns ``(losses, grad_norm, ok, lr)``."""
        lr = lr_at(self.step_no, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        self.model.configure_training(self.step_no, **self.cfg["model"]["train_options"])
        hr, ref, coded = self._batch(self.step_no)
        ratio, history = self.cfg["guard"]["max_grad_ratio"], self.gnorm_history
        skip_above = ratio * float(np.median(history)) if ratio and len(history) >= SPIKE_MIN_HISTORY else None
        losses, gnorm, status = training_step(self.loss_fn, self.optimizer, self.params, hr, ref if self.use_ref else None,
                                              bf16=self.use_bf16, grad_clip=self.cfg["optim"]["grad_clip"],
                                              any_bad=self.dist.any, skip_above=skip_above, coded=coded)
        ok = status == "ok"
        if status != "nonfinite":  # skipped spikes count too, so a lasting change of scale is followed
            self.gnorm_history = (history + [float(gnorm)])[-SPIKE_WINDOW:]
        if status == "spike":
            self.spikes += 1
            self.skipped += 1
            self.say(f"step {self.step_no}: gradient norm {float(gnorm):.3g} > {ratio} x median {skip_above / ratio:.3g}; "
                     "update skipped")
        elif status == "nonfinite":
            self.skipped += 1
            self.bad_streak += 1
            if self.bad_streak >= self.cfg["guard"]["max_bad_steps"]:
                raise TrainingError(f"loss or gradient was NaN/inf for {self.bad_streak} steps in a row (step {self.step_no}); "
                                    "lower optim.lr, set optim.grad_clip or turn precision.bf16 off")
        else:
            self.bad_streak = 0
        self.step_no += 1
        return losses, gnorm, ok, lr

    def validate(self) -> None:
        if self.dist.main and self.val_crops:
            val_cfg = self.cfg["val"]
            self.last_val = validate(self.model, self.val_crops, val_cfg["seed"], self.cfg["precision"]["channels_last"],
                                     val_cfg["codec"], val_cfg["quality"])
            self.log({"step": self.step_no, **{f"val/{k}": v for k, v in self.last_val.items()}})

    def card(self) -> dict:
        """The model card of the weights as they are now (also written beside every checkpoint)."""
        before = self.init or {"iterations": 0, "wall_time_s": 0.0, "val_history": []}
        info = {
            "data": self.data_text,
            "needs_reference": self.model.needs_reference,
            "params": self.model.num_parameters(),
            "iterations": before["iterations"] + self.step_no,
            "wall_time_s": round(before["wall_time_s"] + self.wall_time(), 1),
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv else "",
            "metrics": {f"val_{k}": round(v, 4) for k, v in self.last_val.items()},
            "val_history": _join_history(before["val_history"], _val_history(self.out / "metrics.jsonl", before["iterations"])),
            "bf16": self.use_bf16,
            "training_config": self.cfg,
        }
        if self.init is not None:
            info["init_from"] = {k: v for k, v in self.init.items() if k != "val_history"}
        return info

    def checkpoint(self) -> None:
        rngs = self.dist.gather(ckpt.rng_state(self.dataset))
        if self.dist.main:
            state = {"optimizer": self.optimizer.state_dict(), "rng": rngs, "wall_time_s": self.wall_time(),
                     "skipped_steps": self.skipped, "bad_streak": self.bad_streak, "world_size": self.dist.world,
                     "val": self.last_val, "init": self.init, "gnorm_history": self.gnorm_history,
                     "spikes": self.spikes}
            ckpt.save(self.ckpt_dir, self.step_no, self.model, self.card(), state, keep=self.cfg["checkpoint"]["keep"])

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg, dist = self.cfg, self.dist
        c, v, lg = cfg["checkpoint"], cfg["val"], cfg["log"]
        total = cfg["schedule"]["steps"]
        self.t_start = last_ckpt = time.monotonic()
        sums: dict[str, float] = {}
        n_sum = 0
        self.last_loss: dict[str, float] = {}
        bar = tqdm(total=total, initial=self.step_no, desc=cfg["model"]["arch"], dynamic_ncols=True,
                   disable=not (dist.main and lg["progress"]), file=sys.stderr)
        if self.step_no == 0:
            self.validate()
        stop = _StopRequest()
        try:
            while self.step_no < total:
                losses, gnorm, ok, lr = self.step()
                if ok:
                    for k, t in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(t.detach().float())
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(gnorm)
                    n_sum += 1
                step = self.step_no
                bar.update(1)
                if n_sum:
                    bar.set_postfix(loss=f"{sums['total'] / n_sum:.4g}", lr=f"{lr:.2g}", refresh=False)
                if step % lg["every_steps"] == 0 or step == total:
                    record = {"step": step, "time_s": round(self.wall_time(), 2), "lr": lr, "skipped_steps": self.skipped,
                              "spikes": self.spikes,
                              **{f"train/{k}": x / n_sum for k, x in sums.items() if n_sum}}
                    self.log(record)
                    self.last_loss = {k[6:]: x for k, x in record.items() if k.startswith("train/")} or self.last_loss
                    sums, n_sum = {}, 0
                if v["every_steps"] and step % v["every_steps"] == 0 and step < total:
                    self.validate()
                due = (c["every_steps"] and step % c["every_steps"] == 0) or (
                    c["every_minutes"] and time.monotonic() - last_ckpt >= 60 * c["every_minutes"])
                due, stop_now = dist.any(bool(due), stop.requested)
                if step < total and (due or stop_now):
                    self.checkpoint()
                    last_ckpt = time.monotonic()
                if stop_now and step < total:
                    raise TrainingStopped(f"stopped at step {step} on request; checkpoint saved, continue with --resume")
        finally:
            stop.restore()
            bar.close()
            if self.writer is not None:
                self.writer.flush()
        return self.finish()

    def finish(self) -> dict:
        """Final validation and checkpoint, the weights with their model card; the run's summary."""
        self.validate()
        self.checkpoint()
        cfg = self.cfg
        name = cfg["name"] or f"{cfg['model']['arch']}-{Path(cfg['data']['path']).stem}"
        weights = self.out / f"{name}.safetensors"
        if self.dist.main:
            zoo.save_weights(self.model, weights, card=self.card())
            if self.writer is not None:
                self.writer.close()
            self.say(f"done: {self.step_no} steps, weights {weights}"
                     + (f", val PSNR-Y {self.last_val['psnr_y']:.2f} dB" if self.last_val else ""))
        return {"steps": self.step_no, "weights": str(weights), "out_dir": str(self.out), "val": self.last_val,
                "weights_hash": self.model.weights_hash(), "rank": self.dist.rank, "world_size": self.dist.world,
                "loss": self.last_loss, "skipped_steps": self.skipped, "wall_time_s": self.wall_time()}


def train_from_file(path, out_dir=None, resume: bool = False, overrides: list[str] | None = None) -> dict:
    """``refscale train CONFIG.yaml [--resume] [--out RUN_DIR] [--set key=value ...]``.

    ``out_dir`` defaults to ``runs/<config name>``; ``overrides`` are ``section.key=value``
    strings (values parsed as YAML), e.g. ``["schedule.steps=100", "data.path=../shared/data/oscd"]``.
    """
    path = Path(path)
    cfg = load_file(path, overrides)
    return train(cfg, Path(out_dir) if out_dir is not None else Path("runs") / path.stem, resume=resume)
