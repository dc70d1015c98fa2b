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
"""
from __future__ import annotations

from dataclasses import dataclass


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
