"""Datasets: discovering the layouts of docs/design.md, training crops, full-image iteration.

* :func:`discover` — a path to a list of :class:`Sample` (name, HR path, reference path or None).
  Layouts, detected in this order:

  1. a CSV manifest file ``hr,ref[,name[,repeat[,coded]]]`` (paths relative to the manifest;
     optional header row starting with ``hr``; an empty ``ref`` means no reference; ``coded``:
     the LR after a codec, for ``PairCropDataset(coded=True)``; further columns are ignored);
  2. a single image file (one sample, no reference);
  3. OSCD: ``<city>/img1.png`` (older, the reference) and ``<city>/img2.png`` (newer, the HR);
  4. pair folders: ``<name>/hr.<ext>`` and ``<name>/ref.<ext>``;
  5. a folder of single images (no reference).

  A ``split.json`` (``{"train": [names], "test": [names]}``) in the folder selects a split by
  sample name, for any folder layout; ``split=None`` means all samples.
* :class:`PairCropDataset` — random co-located ``patch_size`` crops of HR and reference with the
  *same* flips and 90-degree rotation (RefScale Sec. 4.1); ``both_directions`` adds the swapped
  pairs (the older image as HR, the newer as reference); ``coded`` adds the sample's decoded LR
  (issue 27: a codec in the training loop, decoded once and cached), cropped at the same place. Samples without a reference give
  ``{"hr": ...}`` items, so the same class is the single-image training dataset.
* :func:`iter_full_images` — deterministic whole images for validation and evaluation.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from refscale.errors import InputError
from refscale.format.rounding import round_8bit, to_uint8
from refscale.io.image import IMAGE_SUFFIXES, read_image
from refscale.ops import mod_crop


@dataclass
class Sample:
    name: str
    hr: Path
    ref: Path | None = None
    repeat: int = 1  # how many times one epoch of PairCropDataset visits it (manifest column 4)
    coded: Path | None = None  # the LR as a codec decoded it (manifest column 5; see PairCropDataset)
    change_mask: Path | None = None  # OSCD: the city's change_mask.png where it has one (train cities)


def read_change_mask(path: str | os.PathLike) -> np.ndarray:
    """A change mask image (OSCD's ``change_mask.png``: white = changed) as a bool ``[H, W]`` array."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for cand in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None


def read_manifest(path: str | os.PathLike, first: str = "hr", with_repeat: bool = False) -> list[tuple]:
    """A CSV manifest ``<first>,ref[,name[,repeat[,coded]]]`` (``first`` = ``hr`` for images,
    ``rsc`` for containers) as ``(name, path, ref or None)`` rows (``(name, path, ref, repeat,
    coded or None)`` with ``with_repeat``): an optional header row starting with ``first``, ``#``
    comments and blank lines skipped, paths relative to the manifest, names unique (default: the
    first file's stem). Every listed file must exist. ``repeat`` (a positive integer, default 1)
    weights a row in training: one epoch visits it that many times; ``coded`` is the row's LR as a
    codec decoded it (``PairCropDataset(coded=True)``)."""
    path = Path(path)
    base = path.parent
    items: list[tuple[str, Path, Path | None]] = []
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read manifest {path}: {e}") from None
    for lineno, row in enumerate(rows, start=1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        if lineno == 1 and row[0].lower() == first:
            continue  # header
        main = base / row[0]
        ref = base / row[1] if len(row) > 1 and row[1] else None
        name = row[2] if len(row) > 2 and row[2] else Path(row[0]).stem
        repeat = row[3] if len(row) > 3 and row[3] else "1"
        coded = base / row[4] if len(row) > 4 and row[4] else None
        if not repeat.isdigit() or int(repeat) < 1:
            raise InputError(f"{path.name} line {lineno}: repeat must be a positive integer, got {repeat!r}")
        for p in (main, ref, coded if with_repeat else None):
            if p is not None and not p.is_file():
                raise InputError(f"{path.name} line {lineno}: file not found: {p}")
        items.append((name, main, ref, int(repeat), coded) if with_repeat else (name, main, ref))
    if not items:
        raise InputError(f"no {'containers' if first == 'rsc' else 'images'} listed in {path}")
    if len({item[0] for item in items}) != len(items):
        raise InputError(f"{path.name}: names are not unique; add a name column")
    return items


def _read_split(folder: Path, split: str | None) -> set[str] | None:
    split_file = folder / "split.json"
    if split is None:
        return None
    if not split_file.is_file():
        raise InputError(f"split {split!r} requested but {folder} has no split.json")
    try:
        splits = json.loads(split_file.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {split_file}: {e}") from None
    names = splits.get(split) if isinstance(splits, dict) else None
    if not isinstance(names, list):
        choices = [k for k, v in splits.items() if isinstance(v, list)] if isinstance(splits, dict) else []
        raise InputError(f"split {split!r} not in {split_file} (has: {', '.join(choices) or 'nothing'})")
    return set(names)


def discover(path: str | os.PathLike, split: str | None = None) -> list[Sample]:
    """Samples of a dataset path (see the module docstring for the layouts), sorted by name."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"dataset path not found: {p}")
    if p.is_file():
        if p.suffix.lower() == ".csv":
            samples = [Sample(*row) for row in read_manifest(p, with_repeat=True)]
            if split is not None:
                raise InputError("--split needs a folder with split.json, not a manifest")
        elif _is_image(p):
            samples = [Sample(p.stem, p, None)]
            if split is not None:
                raise InputError("--split needs a folder with split.json, not an image")
        else:
            raise InputError(f"{p} is neither a folder, an image nor a .csv manifest")
        if not samples:
            raise InputError(f"no images in {p}")
        return samples

    subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    oscd = [Sample(d.name, d / "img2.png", d / "img1.png",
                   change_mask=(d / "change_mask.png") if (d / "change_mask.png").is_file() else None)
            for d in subdirs if (d / "img1.png").is_file() and (d / "img2.png").is_file()]
    pairs = []
    for d in subdirs:
        hr, ref = _find_image(d, "hr"), _find_image(d, "ref")
        if hr is not None and ref is not None:
            pairs.append(Sample(d.name, hr, ref))
    if oscd:
        samples = oscd
    elif pairs:
        samples = pairs
    else:
        samples = [Sample(f.stem, f, None) for f in sorted(p.iterdir()) if _is_image(f)]
    wanted = _read_split(p, split)
    if wanted is not None:
        missing = sorted(wanted - {s.name for s in samples})
        if missing:
            raise InputError(f"split {split!r} names samples missing from {p}: {', '.join(missing[:5])}")
        samples = [s for s in samples if s.name in wanted]
    if not samples:
        raise InputError(f"no images found in {p} (expected pair folders, OSCD cities, images or a .csv manifest)")
    return sorted(samples, key=lambda s: s.name)


#: colour augmentation (``PairCropDataset(colour=p)``): each transform's own probability, applied
#: in this order once an item is chosen for colour augmentation (probability ``p``). Our choice
#: (issue 26): the shipped OSCD models had seen 12 cities' palette only and painted vegetation of
#: other photographs purple; the ranges are those of common photometric augmentation.
COLOUR_STEPS = {"permute": 0.5, "grey": 0.1, "saturation": 0.5, "gamma": 0.5, "gain": 0.5}


def colour_augment(images: list[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
    """One random photometric transform applied identically to every ``[3,H,W]`` float image of
    ``images`` (HR and its reference: the same place under the same palette change; the real
    differences between the two dates stay in the data): channel permutation, greyscale,
    saturation x U(0.4, 1.6), gamma U(0.6, 1.6), gain x U(0.7, 1.3) (clipped at 1: saturated
    areas, as over-exposed scenes have), each with its :data:`COLOUR_STEPS` probability; the
    result is rounded to 8 bits like the images the model meets."""
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    draws = {k: rng.random() < p for k, p in COLOUR_STEPS.items()}
    perm = rng.permutation(3)
    sat, gamma, gain = rng.uniform(0.4, 1.6), rng.uniform(0.6, 1.6), rng.uniform(0.7, 1.3)
    out = []
    for x in images:
        if draws["permute"]:
            x = x[torch.as_tensor(perm)]
        grey = (x * luma).sum(0, keepdim=True)
        if draws["grey"]:
            x = grey.expand_as(x)
        elif draws["saturation"]:
            x = grey + sat * (x - grey)
        x = x.clamp(0, 1)
        if draws["gamma"]:
            x = x ** gamma
        if draws["gain"]:
            x = x * gain
        out.append(round_8bit(x))
    return out


class PairCropDataset(Dataset):
    """Random co-located crops of (HR, reference) with identical augmentation.

    Items are ``{"hr": [3,P,P], "ref": [3,P,P]}`` float32 in [0,1] (``{"hr": ...}`` only when the
    samples have no reference — the single-image training set). All images are decoded once
    and kept as uint8. Augmentation: horizontal flip, vertical flip and transpose, each with
    probability 1/2 (the 8 dihedral transforms: flips and 90-degree rotations), applied
    identically to both images; ``colour`` (a probability, default 0) adds
    :func:`colour_augment`, also identical for both. ``both_directions`` doubles the set with the
    roles swapped. ``repeats`` makes one epoch visit every sample that many times (small datasets
    such as OSCD have 14 training scenes), on top of each sample's own ``repeat`` (a manifest's
    weight column).

    ``coded=True`` (issue 27: training with the codec in the loop): every sample must name its
    ``coded`` image (manifest column 5), the LR as the codec decoded it, of the HR's size divided
    by an integer factor ``k`` (the model's scale); items then carry ``"coded"`` ``[3,P/k,P/k]``,
    cropped at the same place (crop offsets are multiples of ``k``) with the same flips.
    Colour augmentation (the codec would have coded other colours) and ``both_directions`` (the
    swapped pair's decode is another image: list it as its own row) are refused then.
    Randomness is drawn from ``seed``, the item index, a
    per-copy draw counter and, in DataLoader workers, the worker's seed (which torch draws anew
    each epoch from the main process's seeded generator), so runs are reproducible and
    epochs differ.
    """

    def __init__(self, samples: list[Sample], patch_size: int, augment: bool = True, both_directions: bool = False,
                 scale_multiple: int = 1, seed: int = 0, repeats: int = 1, colour: float = 0.0, coded: bool = False):
        if not samples:
            raise InputError("PairCropDataset needs at least one sample")
        if patch_size % scale_multiple:
            raise InputError(f"patch size {patch_size} is not a multiple of {scale_multiple}")
        with_ref = {s.ref is not None for s in samples}
        if len(with_ref) > 1:
            raise InputError("dataset mixes samples with and without a reference")
        self.paired = with_ref == {True}
        self.patch_size = int(patch_size)
        self.augment = augment
        self.both_directions = both_directions and self.paired
        self.seed = int(seed)
        self.repeats = int(repeats)
        self.colour = float(colour)
        if not 0.0 <= self.colour <= 1.0:
            raise InputError(f"colour augmentation probability must be in [0, 1], got {colour}")
        self.coded = bool(coded)
        if self.coded and (self.colour or both_directions):
            raise InputError("training on coded images takes no colour augmentation and no both_directions "
                             "(list each direction's decode as its own manifest row)")
        self.names: list[str] = []
        self.images: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.coded_images: list[torch.Tensor] = []
        self.factor = 1  # HR size / coded size
        for s in samples:
            hr = to_uint8(read_image(s.hr)[0])
            ref = to_uint8(read_image(s.ref)[0]) if s.ref is not None else None
            if ref is not None and ref.shape != hr.shape:
                raise InputError(f"{s.name}: HR {tuple(hr.shape[1:])} and reference {tuple(ref.shape[1:])} differ in size")
            if min(hr.shape[1:]) < patch_size:
                raise InputError(f"{s.name}: image {tuple(hr.shape[1:])} is smaller than the patch size {patch_size}")
            if self.coded:
                if getattr(s, "coded", None) is None:
                    raise InputError(f"{s.name}: no coded image (manifest column 5) but the dataset trains on coded images")
                c = to_uint8(read_image(s.coded)[0])
                k = hr.shape[1] // c.shape[1]
                if k < 1 or tuple(c.shape[1:]) != (hr.shape[1] // k, hr.shape[2] // k) or hr.shape[1] % k or hr.shape[2] % k \
                        or (self.coded_images and k != self.factor):
                    raise InputError(f"{s.name}: coded image {tuple(c.shape[1:])} is not the HR {tuple(hr.shape[1:])} divided "
                                     "by one integer factor (the same for every sample)")
                if patch_size % k:
                    raise InputError(f"patch size {patch_size} is not a multiple of the coded images' factor {k}")
                self.factor = k
                self.coded_images.append(c)
            self.names.append(s.name)
            self.images.append((hr, ref))
        #: one entry per visit of an epoch (before directions and ``repeats``): image index, weighted
        self._visits = [i for i, s in enumerate(samples) for _ in range(max(1, int(s.repeat)))]
        self._draws = 0

    def __len__(self) -> int:
        return len(self._visits) * (2 if self.both_directions else 1) * self.repeats

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self._visits)
        k = index % (2 * n if self.both_directions else n)
        hr, ref = self.images[self._visits[k % n]]
        if k >= n:  # reverse temporal direction
            hr, ref = ref, hr
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, index, self._draws, info.seed if info else 0])
        self._draws += 1
        p, f = self.patch_size, self.factor
        if self.coded:  # offsets on the coded image's grid
            top = f * int(rng.integers(0, (hr.shape[1] - p) // f + 1))
            left = f * int(rng.integers(0, (hr.shape[2] - p) // f + 1))
        else:
            top = int(rng.integers(0, hr.shape[1] - p + 1))
            left = int(rng.integers(0, hr.shape[2] - p + 1))
        flips = rng.integers(0, 2, size=3) if self.augment else (0, 0, 0)
        out = {"hr": hr} if ref is None else {"hr": hr, "ref": ref}
        if self.coded:
            out["coded"] = self.coded_images[self._visits[k % n]]
        for key, img in out.items():
            d = f if key == "coded" else 1
            img = img[:, top // d : (top + p) // d, left // d : (left + p) // d]
            if flips[0]:
                img = img.flip(-1)
            if flips[1]:
                img = img.flip(-2)
            if flips[2]:
                img = img.transpose(-1, -2)
            out[key] = img.float().div(255.0).contiguous()
        if self.colour and rng.random() < self.colour:
            out = dict(zip(out, colour_augment(list(out.values()), rng)))
        return out


def iter_full_images(samples: list[Sample], multiple: int = 1) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(name, hr [1,3,H,W], ref [1,3,H,W] or None)`` in order, cropped bottom/right to
    multiples of ``multiple`` (the field's mod-crop), decoding one sample at a time."""
    for s in samples:
        hr = read_image(s.hr)
        ref = read_image(s.ref) if s.ref is not None else None
        if ref is not None and ref.shape != hr.shape:
            raise InputError(f"{s.name}: HR {tuple(hr.shape[-2:])} and reference {tuple(ref.shape[-2:])} differ in size")
        yield s.name, mod_crop(hr, multiple), (mod_crop(ref, multiple) if ref is not None else None)
