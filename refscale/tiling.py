"""Overlapping tiles for large images: the grid, and batching of equal-sized windows.

Along an axis of ``P`` pixels (a multiple of the alignment ``a``) with a requested core size
``tile`` and context margin ``overlap`` (both multiples of ``a``):

* ``n = ceil(P / tile)`` cores of balanced size ``c = a * ceil(P / (n * a))`` (<= ``tile``):
  core ``k`` is ``[k*c, min((k+1)*c, P))``; balancing avoids a last sliver of a core whose
  window would be mostly redundant work;
* every window has length ``L = min(c + 2*overlap, P)``; window ``k`` starts at
  ``clamp(k*c - overlap, 0, P - L)``: shifted inward at the image border, so all windows have
  one size and can be stacked into batches.

Only the core of each window is kept (*crop of tile borders*, no blending): every output pixel
comes from exactly one window, in which it has at least ``overlap`` pixels of context on each
side except at the image border, where the window edge *is* the image edge exactly as in an
untiled pass. For a network whose receptive field fits in the overlap, tiled and untiled
results are therefore identical; for larger receptive fields the difference decays with the
overlap (measured in ``benchmarks/large_scene.py``). Cropping is chosen over blending because
it is exact in that sense, needs no weights, and keeps stochastic models' samples from being
averaged (averaging two draws of z blurs).

Since ``c``, ``overlap`` and ``P`` are multiples of ``a``, so is every window origin; the model's
alignment is a multiple of every side-map stride, so side maps are cut and stitched the same
way. The same grid serves encoding (HR windows -> LR and side-map cores) and decoding (LR/side
windows -> HR cores); docs/format.md records the rule because a container stores ``tile`` and
``overlap``, not the windows.

:class:`Tiler` is the one tile loop's machinery, used by the encoder and decoder
(:mod:`refscale.pipeline`) and the on-board ONNX loop (:mod:`refscale.onnx.onboard`): the
windows of one padded image, reading HR-resolution windows (:func:`memory_reader`,
:func:`scene_reader`, :meth:`Tiler.read`), cutting windows out of a map of any stride
(:meth:`Tiler.cut`: LR, side maps) and stitching the windows' cores back (:meth:`Tiler.stitch`).
Which layout an image gets (defaults, automatic tiling, the recorded one) is the pipeline's
policy (:func:`refscale.pipeline.layout`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from refscale import ops, raster


@dataclass(frozen=True)
class Window:
    """One window (origin ``y, x``) and the core it is responsible for, in HR pixels."""

    y: int
    x: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 (absolute)


def axis(length: int, tile: int, overlap: int, align: int = 1) -> tuple[int, list[tuple[int, int, int]]]:
    """``(window length, [(window origin, core start, core end), ...])`` along one axis."""
    if tile <= 0 or overlap < 0 or overlap > tile or align <= 0:
        raise ValueError(f"bad tile layout {tile}/{overlap}/{align}")
    n = -(-length // tile)
    core = align * -(-length // (n * align))
    win = min(core + 2 * overlap, length)
    out = []
    for start in range(0, length, core):
        end = min(start + core, length)
        origin = min(max(start - overlap, 0), length - win)
        out.append((origin, start, end))
    return win, out


def grid(size: tuple[int, int], tile: int, overlap: int, align: int = 1) -> tuple[tuple[int, int], list[Window]]:
    """Window size ``(h, w)`` and the windows (row-major) covering an image of ``size``."""
    wh, ys = axis(size[0], tile, overlap, align)
    ww, xs = axis(size[1], tile, overlap, align)
    wins = [Window(oy, ox, (y0, y1, x0, x1)) for (oy, y0, y1) in ys for (ox, x0, x1) in xs]
    return (wh, ww), wins


def batches(windows: list[Window], window_size: tuple[int, int], max_pixels: int) -> list[list[Window]]:
    """Consecutive groups of windows with at most ``max_pixels`` HR pixels per group (at least one window)."""
    per = max(1, max_pixels // (window_size[0] * window_size[1]))
    return [windows[i:i + per] for i in range(0, len(windows), per)]


# ----------------------------------------------------------------------------- the tile loop
@dataclass(frozen=True)
class Tiler:
    """The windows of one padded image (``padded``, multiples of ``align``) for a layout
    ``tile`` / ``overlap`` (HR pixels, multiples of ``align``; ``(max side, 0)``: one window), and
    the cutting and stitching of maps on them. A map of *stride* ``st`` has ``padded / st``
    pixels (HR: 1; LR: the scale; a side map: its declared stride); ``st`` divides ``align``."""

    padded: tuple[int, int]
    tile: int
    overlap: int
    align: int = 1
    window_size: tuple[int, int] = field(init=False)
    windows: list[Window] = field(init=False)

    def __post_init__(self) -> None:
        size, wins = grid(self.padded, self.tile, self.overlap, self.align)
        object.__setattr__(self, "window_size", size)
        object.__setattr__(self, "windows", wins)

    @property
    def tiled(self) -> bool:
        """More than one window."""
        return len(self.windows) > 1

    @property
    def record(self) -> dict | None:
        """What a container records of the layout: ``{"tile", "overlap"}``, or None for one window."""
        return {"tile": self.tile, "overlap": self.overlap} if self.tiled else None

    def batches(self, max_pixels: int) -> list[list[Window]]:
        """The windows in consecutive groups of at most ``max_pixels`` HR pixels (:func:`batches`)."""
        return batches(self.windows, self.window_size, max_pixels)

    def map_size(self, stride: int = 1) -> tuple[int, int]:
        """``(h, w)`` of the whole map of ``stride``."""
        return self.padded[0] // stride, self.padded[1] // stride

    def window(self, w: Window, stride: int = 1) -> tuple[slice, slice]:
        """Rows and columns of window ``w`` in a map of ``stride``."""
        (wh, ww), st = self.window_size, stride
        return slice(w.y // st, (w.y + wh) // st), slice(w.x // st, (w.x + ww) // st)

    def core(self, w: Window, stride: int = 1) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """Rows and columns of ``w``'s core in the whole map of ``stride``, and in the window."""
        y0, y1, x0, x1 = w.core
        st = stride
        return ((slice(y0 // st, y1 // st), slice(x0 // st, x1 // st)),
                (slice((y0 - w.y) // st, (y1 - w.y) // st), slice((x0 - w.x) // st, (x1 - w.x) // st)))

    def read(self, read: Callable, batch: list[Window]) -> torch.Tensor:
        """The HR windows of ``batch`` from a reader (:func:`memory_reader`, :func:`scene_reader`),
        stacked ``[len(batch), C, wh, ww]``, their pixels without data filled."""
        return read_windows(read, batch, self.window_size)

    def cut(self, get: Callable[[slice, slice], torch.Tensor], batch: list[Window], stride: int = 1) -> torch.Tensor:
        """The windows of ``batch`` in a map of ``stride``, concatenated along the batch dimension;
        ``get(rows, cols)`` gives one window ``[1, C, h, w]`` of the map."""
        return torch.cat([get(*self.window(w, stride)) for w in batch])

    def cores(self, out, batch: list[Window], stride: int = 1) -> Iterator[tuple[Window, tuple[slice, slice], object]]:
        """``(window, its core's rows/columns in the whole map, the core [1, C, h, w] of out[i])``
        for the windows' outputs ``out`` ``[len(batch), C, wh/stride, ww/stride]``."""
        for i, w in enumerate(batch):
            dst, src = self.core(w, stride)
            yield w, dst, out[i:i + 1][..., src[0], src[1]]

    def stitch(self, dst, out, batch: list[Window], stride: int = 1, convert: Callable | None = None) -> None:
        """Write the cores of the windows' outputs ``out`` into the whole map ``dst`` ``[1, C, h, w]``
        (a tensor or an array) of ``stride``; ``convert`` maps each core first (e.g. to 8 bits)."""
        for _, (rows, cols), core in self.cores(out, batch, stride):
            dst[..., rows, cols] = core if convert is None else convert(core)


def memory_reader(t: torch.Tensor, mask: torch.Tensor | None, align: int):
    """Windows of an image held in memory, padded to the alignment as a whole (and of its mask of
    pixels without data ``[1,C,H,W]`` bool, padded alike): ``read(y, x, h, w) -> (window, mask)``."""
    t_p = ops.pad_to_multiple(t, align)[0]
    m_p = None if mask is None else ops.pad_to_multiple(mask.to(torch.uint8), align)[0].bool()

    def read(y: int, x: int, h: int, w: int):
        m = None if m_p is None else m_p[..., y:y + h, x:x + w].numpy()
        return t_p[..., y:y + h, x:x + w], m

    return read


def scene_reader(scene: raster.RasterScene, padded: tuple[int, int]):
    """Windows of a scene read from its file (:class:`refscale.raster.RasterScene`), padded past the
    image's bottom/right edge exactly as :func:`refscale.ops.pad_to_multiple` pads the whole image."""
    h, w = scene.size
    mode = ops.padding_mode((h, w), padded)

    def read(y: int, x: int, wh: int, ww: int):
        y1, x1 = min(y + wh, h), min(x + ww, w)
        t, m = scene.window(y, y1, x, x1)
        pad = (0, x + ww - x1, 0, y + wh - y1)
        if any(pad):
            t = torch.nn.functional.pad(t, pad, mode=mode)
            if m is not None:
                m = torch.nn.functional.pad(torch.from_numpy(m).to(torch.uint8)[None], pad, mode=mode)[0].bool().numpy()
        return t, (None if m is None else m[None])

    return read


def read_windows(read: Callable, batch: list[Window], size: tuple[int, int]) -> torch.Tensor:
    """The windows of ``batch`` (each ``size``) from ``read``, stacked, their pixels without data
    filled (:func:`refscale.raster.fill`)."""
    wh, ww = size
    parts = [read(w.y, w.x, wh, ww) for w in batch]
    x = torch.cat([t for t, _ in parts])
    if any(m is not None for _, m in parts):
        c = max(m.shape[1] for _, m in parts if m is not None)
        masks = np.stack([np.broadcast_to(m[0], (c, wh, ww)) if m is not None else np.zeros((c, wh, ww), bool)
                          for _, m in parts])
        x = raster.fill(x.contiguous(), masks)
    return x
