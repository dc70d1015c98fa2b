"""Overlapping tiles for large images: the grid, and batching of equal-sized windows.

A padded image of ``P`` pixels along an axis is split into *cores* of ``tile`` pixels
(``[k*tile, min((k+1)*tile, P))``; the last one may be shorter). Each core is computed inside a
*window* of length ``L = min(tile + 2*overlap, P)`` that adds ``overlap`` pixels of context on
each side; windows are shifted inward at the image border (origin
``clamp(k*tile - overlap, 0, P - L)``), so every window has the same size and windows can be
stacked into batches. Only the core of each window is kept (*crop of tile borders*, no
blending): every output pixel comes from exactly one window, in which it has at least
``overlap`` pixels of context on each side except at the image border, where the window edge
*is* the image edge exactly as in an untiled pass. For a network whose receptive field fits in
the overlap, tiled and untiled results are therefore identical; for larger receptive fields
the difference decays with the overlap (measured in ``benchmarks/large_scene.py``). Cropping
is chosen over blending because it is exact in that sense, needs no weights, and keeps
stochastic models' samples from being averaged (averaging two draws of z blurs).

``tile`` and ``overlap`` are multiples of the model's alignment (and of the side-map stride),
so every window origin is too. The same grid serves encoding (HR windows -> LR and side-map
cores) and decoding (LR/side windows -> HR cores); docs/format.md records the rule because a
container stores ``tile`` and ``overlap``, not the windows.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One window (origin ``y, x``) and the core it is responsible for, in HR pixels."""

    y: int
    x: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 (absolute)


def axis(length: int, tile: int, overlap: int) -> tuple[int, list[tuple[int, int, int]]]:
    """``(window length, [(window origin, core start, core end), ...])`` along one axis."""
    if tile <= 0 or overlap < 0 or overlap > tile:
        raise ValueError(f"bad tile layout {tile}/{overlap}")
    win = min(tile + 2 * overlap, length)
    out = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        origin = min(max(start - overlap, 0), length - win)
        out.append((origin, start, end))
    return win, out


def grid(size: tuple[int, int], tile: int, overlap: int) -> tuple[tuple[int, int], list[Window]]:
    """Window size ``(h, w)`` and the windows (row-major) covering an image of ``size``."""
    wh, ys = axis(size[0], tile, overlap)
    ww, xs = axis(size[1], tile, overlap)
    wins = [Window(oy, ox, (y0, y1, x0, x1)) for (oy, y0, y1) in ys for (ox, x0, x1) in xs]
    return (wh, ww), wins


def batches(windows: list[Window], window_size: tuple[int, int], max_pixels: int) -> list[list[Window]]:
    """Consecutive groups of windows with at most ``max_pixels`` HR pixels per group (at least one window)."""
    per = max(1, max_pixels // (window_size[0] * window_size[1]))
    return [windows[i:i + per] for i in range(0, len(windows), per)]
