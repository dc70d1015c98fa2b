"""The on-board loop with an exported encoder (:func:`onboard_encode`: pad, tile, run the graph,
stitch the cores, with the :class:`refscale.tiling.Tiler` of :func:`refscale.pipeline.encode`) and its hand-over file to the ground
(:class:`OnboardOutput`), which :func:`refscale.onnx.wrap.wrap_files` reads."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refscale import pipeline, tiling
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
    padded = (-(-size[0] // align) * align, -(-size[1] // align) * align)
    read_hr = tiling.memory_reader(hr, None, align)
    read_ref = tiling.memory_reader(ref, None, align) if ref is not None else None
    tiler = pipeline.layout(padded, align, s, tile, overlap)
    wh, ww = tiler.window_size
    fixed = int(meta.get("tile") or 0)
    if fixed and (wh, ww) != (fixed, fixed):
        raise InputError(f"{g.path.name} takes {fixed}x{fixed} windows only; this image and layout give {wh}x{ww} "
                         "(export with a dynamic size, or choose tile/overlap)")
    if min(wh, ww) < int(meta.get("min_side", 1)):
        raise InputError(f"windows of {wh}x{ww} are smaller than the graph's minimum side {meta['min_side']}")
    lr = np.zeros((1, 3, *tiler.map_size(s)), np.float32)
    side: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for w in tiler.windows:  # one window per run: the graph's batch is what flight software feeds
        feed = {"hr": tiler.read(read_hr, [w])}
        if read_ref is not None:
            feed["ref"] = tiler.read(read_ref, [w])
        out = g.run(**feed)
        tiler.stitch(lr, out["lr"], [w], s)
        for name, t in out.items():
            if name == "lr":
                continue
            st = wh // t.shape[-2]  # the graph's metadata names no strides: read from the shape
            if name not in side:
                side[name] = np.zeros((1, t.shape[1], *tiler.map_size(st)), t.dtype)
            tiler.stitch(side[name], t, [w], st)
    seconds = time.perf_counter() - t0
    return OnboardOutput(lr, side, size, padded, tiler.record, seconds)
