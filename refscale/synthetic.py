"""A procedural revisit pair for demos, benchmarks and tests: no data files, made with numpy from
a seed (fields, roads, a river, buildings; the earlier image has other field colours, haze and
lacks about a fifth of the buildings)."""
from __future__ import annotations

import numpy as np


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0,1]: a coarse random grid, bilinearly interpolated."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw))
    y = np.arange(h) / cell
    x = np.arange(w) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def synthetic_revisit_pair(height: int = 512, width: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A procedural scene and its earlier revisit, both uint8 [H,W,3].

    Returns ``(new, reference)``. Fields, roads, a river and buildings; the reference has other
    field colours, haze and lacks about a fifth of the buildings (the "change").
    """
    rng = np.random.default_rng(seed)
    h, w = height, width
    # fields: rectangular parcels of crop colours (jittered grid) with fine texture
    ys = np.cumsum(rng.integers(24, 72, size=h // 24 + 2))
    xs = np.cumsum(rng.integers(24, 72, size=w // 24 + 2))
    cell = np.searchsorted(ys, np.arange(h))[:, None] * 7919 + np.searchsorted(xs, np.arange(w))[None, :]
    patch = (cell * 2654435761 % 2**32) % 6
    palette_new = rng.uniform(0.25, 0.6, size=(6, 3)) * np.array([0.9, 1.0, 0.7])
    palette_old = np.clip(palette_new[rng.permutation(6)] * rng.uniform(0.85, 1.15, size=(6, 3)), 0, 1)
    texture = (_smooth_noise(rng, h, w, 3) - 0.5) * 0.12 + (_smooth_noise(rng, h, w, 12) - 0.5) * 0.1
    new = palette_new[patch] + texture[..., None]
    old = palette_old[patch] + texture[..., None]
    # river
    yy, xx = np.mgrid[0:h, 0:w]
    river_y = h * 0.6 + h * 0.12 * np.sin(xx / w * 2 * np.pi * 1.3)
    river = np.abs(yy - river_y) < max(3, h // 60)
    for img in (new, old):
        img[river] = np.array([0.12, 0.22, 0.3])
    # roads: a few straight lines
    for _ in range(4):
        if rng.random() < 0.5:
            r = rng.integers(0, h)
            sl = np.s_[max(0, r - 2):r + 2, :]
        else:
            c = rng.integers(0, w)
            sl = np.s_[:, max(0, c - 2):c + 2]
        new[sl] = 0.55
        old[sl] = 0.52
    # buildings with shadows; some only in the new image
    n_build = max(8, h * w // 1500)
    town_y, town_x = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    for _ in range(n_build):
        bh, bw = rng.integers(4, 16, size=2)
        y0 = int(np.clip(rng.normal(town_y, h / 6), 0, h - bh - 2))
        x0 = int(np.clip(rng.normal(town_x, w / 6), 0, w - bw - 2))
        roof = rng.uniform(0.5, 0.9) * np.array([1.0, 0.95, 0.9])
        targets = (new,) if rng.random() < 0.2 else (new, old)
        for img in targets:
            img[y0 + 2:y0 + bh + 2, x0 + 2:x0 + bw + 2] *= 0.55  # shadow
            img[y0:y0 + bh, x0:x0 + bw] = roof
    # the reference is hazier; both get sensor noise
    old = old * 0.85 + 0.12
    new = new + rng.normal(0, 0.01, new.shape)
    old = old + rng.normal(0, 0.01, old.shape)
    to8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    return to8(new), to8(old)
