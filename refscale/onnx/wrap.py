"""The ground side of on-board encoding: :func:`wrap` builds the ``.rsc``
:class:`~refscale.container.Packet` from what the exported encoder produced (``refscale wrap``),
which ``refscale decode`` decodes like any other."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refscale import pipeline
from refscale.container import Packet
from refscale.errors import InputError
from refscale.metrics import to_uint8
from refscale.onnx.graphs import read_metadata
from refscale.onnx.onboard import OnboardOutput


def wrap(lr, side: dict[str, Any] | None, meta: dict[str, Any] | str | os.PathLike, *, size: tuple[int, int] | None = None,
         ref=None, ref_hash: str | None = None, tiles: dict | None = None, codec: str | None = None,
         quality: int | None = None) -> Packet:
    """Build the :class:`Packet` of an image encoded on board, for ``refscale decode``.

    ``lr``: the padded LR as the encoder graph produced it (float in [0,1], ``[1,3,h,w]``,
    ``[3,h,w]`` or ``[h,w,3]``; rounded to 8 bits here exactly as the pipeline does), or already
    8-bit (uint8). ``side``: the graph's side outputs by name. ``meta``: the graph's metadata or
    its ONNX file. ``size``: the image size before padding (default: the padded size).
    ``ref`` (the reference image as uploaded) or ``ref_hash`` (its fingerprint) for reference
    models. ``tiles``: the layout used on board (``OnboardOutput.tiles``), recorded so that the
    ground decodes window by window the same way.
    """
    if not isinstance(meta, dict):
        meta = read_metadata(meta)
    c = meta.get("container") or {}
    s, align = int(c.get("scale", meta.get("scale"))), int(c.get("alignment", meta.get("alignment")))
    lr_u8 = _lr_uint8(lr)
    padded = (lr_u8.shape[0] * s, lr_u8.shape[1] * s)
    sized = size is not None
    size = padded if size is None else (int(size[0]), int(size[1]))
    if padded[0] % align or padded[1] % align or not (0 <= padded[0] - size[0] < align and 0 <= padded[1] - size[1] < align):
        raise InputError(f"an LR of {lr_u8.shape[0]}x{lr_u8.shape[1]} (padded {padded[0]}x{padded[1]}) does not fit an image of "
                         f"{size[0]}x{size[1]} with alignment {align}")
    side = {k: np.asarray(v) for k, v in (side or {}).items()}
    want = c.get("side", {})
    if set(side) != set(want):
        raise InputError(f"side tensors {sorted(side)} given; model {meta['model']} produces {sorted(want)}")
    for k, v in side.items():
        st, ch = int(want[k]["stride"]), int(want[k]["channels"])
        if v.ndim == 3:
            v = side[k] = v[None]
        if v.shape != (1, ch, padded[0] // st, padded[1] // st):
            raise InputError(f"side tensor {k!r} has shape {list(v.shape)}, expected {[1, ch, padded[0] // st, padded[1] // st]}")
        if np.issubdtype(v.dtype, np.floating) and not np.array_equal(v, np.round(v)):
            raise InputError(f"side tensor {k!r} is not integer-valued")
        side[k] = v.astype(np.int64)
    needs_ref = bool(c.get("needs_reference", meta.get("needs_reference")))
    if needs_ref:
        if ref_hash is None and ref is None:
            raise InputError(f"model {meta['model']} uses a reference: give it (--ref) or its fingerprint")
        if ref is not None:  # the reference the board used has the image's size (no resampling on board)
            ref = pipeline._image(ref, "reference")
            (rh, rw), (h, w) = ref.shape[-2:], size
            if (rh, rw) != (h, w):
                raise InputError(f"reference is {rw}x{rh} but the image is {w}x{h} (width x height); give the reference "
                                 "used on board" + ("" if sized else " (and the image size before padding: --size / size=)"))
            ref_hash = ref_hash or pipeline.fingerprint(ref)
        if len(ref_hash) != 64:
            raise InputError("reference fingerprint must be 64 hex digits")
    else:
        ref_hash = None
    from refscale import codecs

    codec, quality = codecs.resolve(codec, quality, c.get("codec", "png"))
    if codecs.needs_reference(codec):
        raise InputError(f"wrap writes intra LR codecs only, not {codec}")
    return Packet(model=str(meta["model"]), weights_hash=str(meta["weights_hash"]), scale=s, size=size,
                  padded_size=padded, tiles=tiles, lr=lr_u8, side={k: _smallest(k, v) for k, v in side.items()},
                  side_dtypes=dict(c.get("side_dtypes", {})), precision=str(c.get("precision", "fp32")),
                  ref_hash=ref_hash, ref_shift=(0, 0), codec=codec, quality=quality)


def wrap_files(lr: str | os.PathLike, graph: str | os.PathLike, *, side: dict[str, str | os.PathLike] | None = None,
               ref=None, ref_hash: str | None = None, size: tuple[int, int] | None = None, tiles: dict | None = None,
               codec: str | None = None, quality: int | None = None) -> Packet:
    """:func:`wrap` from files (what ``refscale wrap`` calls): ``lr`` is the ``.npz`` of
    :meth:`OnboardOutput.save` (LR, side tensors, sizes and tiles in one file), a ``.npy`` array
    (float before rounding, or uint8) or an 8-bit image file; ``side`` maps names to ``.npy``
    files (for a ``.npz`` they override its arrays); ``graph`` is the exported encoder (its metadata
    names the model); arguments given here override what the ``.npz`` holds."""
    from refscale.imageio import read_image

    meta = read_metadata(graph)
    p = Path(lr)
    if not p.is_file():
        raise InputError(f"LR file not found: {p}")
    sides: dict[str, np.ndarray] = {}
    if p.suffix.lower() == ".npz":
        out = OnboardOutput.load(p)
        lr_arr, sides = out.lr, dict(out.side)
        size = size or out.size
        tiles = tiles if tiles is not None else out.tiles
    elif p.suffix.lower() == ".npy":
        lr_arr = _load_npy(p)
    else:
        lr_arr = read_image(p)
    for name, q in (side or {}).items():
        sides[name] = _load_npy(Path(q))
    return wrap(lr_arr, sides, meta, size=size, ref=ref, ref_hash=ref_hash, tiles=tiles, codec=codec, quality=quality)


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {p}: {e}") from None


def _smallest(name: str, a: np.ndarray) -> np.ndarray:
    from refscale.container import smallest_integer_array

    return smallest_integer_array(name, a)


def _lr_uint8(lr) -> np.ndarray:
    """``[h,w,3]`` uint8 from the on-board LR (float before rounding, or uint8)."""
    a = lr.detach().cpu().numpy() if isinstance(lr, torch.Tensor) else np.asarray(lr)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(f"one image at a time, got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim != 3:
        raise InputError(f"LR must be [1,3,h,w], [3,h,w] or [h,w,3], got shape {list(a.shape)}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] != 3:
        raise InputError(f"LR must have 3 channels, got shape {list(a.shape)}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"LR must be float in [0,1] (before rounding) or uint8, got {a.dtype}")
    if not np.isfinite(a).all():
        raise InputError("LR contains NaN or infinite values")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return to_uint8(t).numpy()  # the pipeline's rounding: round(clamp(x, 0, 1) * 255), half to even
