"""The on-board loop with an exported encoder (:func:`onboard_encode`: pad, tile, run the graph,
stitch the cores, as :func:`refscale.pipeline.encode` does) and its hand-over file to the ground
(:class:`OnboardOutput`), which :func:`refscale.onnx.wrap.wrap_files` reads."""
from __future__ import annotations

import os
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refscale import ops, pipeline, tiling
from refscale.errors import InputError, ModelError
from refscale.onnx.runtime import Graph


@dataclass
class OnboardOutput:
    """What the on-board loop hands to the downlink: the padded LR before rounding ``[1,3,h,w]``
    (float32), the side tensors ``[1,C,h',w']`` as the graph gave them, the original and padded
    sizes and the tile layout (``None``: one window)."""

    lr: np.ndarray
    side: dict[str, np.ndarray]
    size: tuple[int, int]
    padded_size: tuple[int, int]
    tiles: dict | None
    seconds: float = 0.0

    def save(self, path: str | os.PathLike) -> Path:
        """The hand-over file of the downlink (``.npz``: ``lr``, ``side_<name>``, ``size``,
        ``padded_size``, ``tiles`` = [tile, overlap] or [0, 0]) that ``refscale wrap`` reads."""
        path = Path(path)
        tiles = [self.tiles["tile"], self.tiles["overlap"]] if self.tiles else [0, 0]
        np.savez(path, lr=self.lr, size=np.array(self.size), padded_size=np.array(self.padded_size),
                 tiles=np.array(tiles), **{f"side_{k}": v for k, v in self.side.items()})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> OnboardOutput:
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file (zip, npy, pickle) is the user's input
            raise InputError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if "lr" not in data:
            raise InputError(f"{path} has no 'lr' array")
        try:
            lr = data["lr"]
            size = tuple(int(v) for v in data["size"]) if "size" in data else None
            padded = tuple(int(v) for v in data["padded_size"]) if "padded_size" in data else None
            t = [int(v) for v in data.get("tiles", [0, 0])]
            tiles = {"tile": t[0], "overlap": t[1]} if t[0] else None
        except (TypeError, ValueError, IndexError):
            raise InputError(f"{path}: 'size', 'padded_size' and 'tiles' must be pairs of integers") from None
        if size is not None and len(size) != 2 or padded is not None and len(padded) != 2:
            raise InputError(f"{path}: 'size' and 'padded_size' must be pairs of integers")
        side = {k[5:]: v for k, v in data.items() if k.startswith("side_")}
        return cls(lr, side, size, padded, tiles)


def onboard_encode(graph: Graph | str | os.PathLike, hr, ref=None, *, tile: int | None = None,
                   overlap: int | None = None, threads: int | None = None) -> OnboardOutput:
    """What flight software does with an exported encoder, written with ONNX Runtime: pad the image
    (and reference) like :func:`refscale.pipeline.encode`, cut it into the pipeline's windows
    (same ``tile`` / ``overlap`` rules and defaults), run the graph per window and keep each
    window's core. No registration (the reference is used as uploaded: ``ref_shift = (0, 0)``)."""
    g = graph if isinstance(graph, Graph) else Graph(graph, threads=threads)
    meta = g.meta
    if meta["part"] != "encoder":
        raise InputError(f"{g.path.name} is the {meta['part']} graph; on board runs the encoder")
    align, s = int(meta["alignment"]), int(meta["scale"])
    hr = pipeline._image(hr, "image")
    size = tuple(hr.shape[-2:])
    if meta["needs_reference"]:
        if ref is None:
            raise ModelError(f"model {meta['model']} needs a reference image (--ref)")
        ref = pipeline._image(ref, "reference")
        if tuple(ref.shape[-2:]) != size:
            raise InputError(f"reference is {ref.shape[-2]}x{ref.shape[-1]} but the image is {size[0]}x{size[1]}")
    else:
        ref = None
    hr_p = ops.pad_to_multiple(hr, align)[0]
    ref_p = ops.pad_to_multiple(ref, align)[0] if ref is not None else None
    padded = tuple(hr_p.shape[-2:])
    layout = pipeline._layout(types.SimpleNamespace(alignment=align, scale=s, name=meta["model"]), padded, tile, overlap)
    (wh, ww), windows = tiling.grid(padded, *layout, align)
    fixed = int(meta.get("tile") or 0)
    if fixed and (wh, ww) != (fixed, fixed):
        raise InputError(f"{g.path.name} takes {fixed}x{fixed} windows only; this image and layout give {wh}x{ww} "
                         "(export with a dynamic size, or choose tile/overlap)")
    if min(wh, ww) < int(meta.get("min_side", 1)):
        raise InputError(f"windows of {wh}x{ww} are smaller than the graph's minimum side {meta['min_side']}")
    lr = np.zeros((1, 3, padded[0] // s, padded[1] // s), np.float32)
    side: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for w in windows:
        feed = {"hr": hr_p[..., w.y:w.y + wh, w.x:w.x + ww]}
        if ref_p is not None:
            feed["ref"] = ref_p[..., w.y:w.y + wh, w.x:w.x + ww]
        out = g.run(**feed)
        y0, y1, x0, x1 = w.core
        lr[..., y0 // s:y1 // s, x0 // s:x1 // s] = out["lr"][..., (y0 - w.y) // s:(y1 - w.y) // s, (x0 - w.x) // s:(x1 - w.x) // s]
        for name, t in out.items():
            if name == "lr":
                continue
            st = wh // t.shape[-2]
            if name not in side:
                side[name] = np.zeros((1, t.shape[1], padded[0] // st, padded[1] // st), t.dtype)
            side[name][..., y0 // st:y1 // st, x0 // st:x1 // st] = \
                t[..., (y0 - w.y) // st:(y1 - w.y) // st, (x0 - w.x) // st:(x1 - w.x) // st]
    seconds = time.perf_counter() - t0
    tiles = {"tile": layout[0], "overlap": layout[1]} if len(windows) > 1 else None
    return OnboardOutput(lr, side, size, padded, tiles, seconds)
