"""refscale.tiling.Tiler: the one tile loop's layout, cutting and stitching (issue 28, item 4).

Integer properties only (no float results that could differ between CPUs): the windows of a
layout are pinned, every pixel of a map of any stride lies in exactly one core, cutting a map
into windows and stitching their cores back gives the map (tensors and arrays alike), and the
encoder, decoder and on-board loop get their layout from the one policy
(:func:`refscale.pipeline.layout`).
"""
import numpy as np
import pytest
import torch

from refscale import pipeline, tiling
from refscale.tiling import Tiler, Window


def test_layout_of_a_small_image_is_pinned():
    """Worked by hand from the rule in refscale.tiling's docstring (and docs/format.md)."""
    t = pipeline.layout((88, 72), 4, 2, 48, 16)  # cores 44 and 36, windows 76x68, shifted inward
    assert (t.tile, t.overlap, t.window_size) == (48, 16, (76, 68))
    assert t.windows == [Window(0, 0, (0, 44, 0, 36)), Window(0, 4, (0, 44, 36, 72)),
                         Window(12, 0, (44, 88, 0, 36)), Window(12, 4, (44, 88, 36, 72))]
    assert t.record == {"tile": 48, "overlap": 16} and t.tiled
    whole = pipeline.layout((88, 72), 4, 2, 0, None)
    assert whole.windows == [Window(0, 0, (0, 88, 0, 72))] and whole.record is None and not whole.tiled
    odd = pipeline.layout((132, 104), 4, 2, 47, 13)  # tile and overlap rounded up to the alignment
    assert (odd.tile, odd.overlap, odd.window_size) == (48, 16, (76, 68))
    assert [w.core for w in odd.windows] == [(y0, y1, x0, x1) for y0, y1 in ((0, 44), (44, 88), (88, 132))
                                             for x0, x1 in ((0, 36), (36, 72), (72, 104))]
    assert [(w.y, w.x) for w in odd.windows] == [(y, x) for y in (0, 28, 56) for x in (0, 20, 36)]


def test_layout_policy_defaults(monkeypatch):
    assert pipeline.layout((64, 64), 2, 2, None, None).record is None  # small: one window
    assert pipeline.layout((64, 64), 2, 2, 64, None).record is None  # a tile as large as the image
    monkeypatch.setattr(pipeline, "AUTO_TILE_PIXELS", 32 * 32)
    monkeypatch.setattr(pipeline, "DEFAULT_TILE", 16)
    # tiled automatically; the default overlap (16 LR pixels = 32 HR) is capped at the tile
    assert pipeline.layout((64, 64), 2, 2, None, None).record == {"tile": 16, "overlap": 16}
    assert pipeline.layout((64, 64), 4, 4, 16, 8, recorded=True).record == {"tile": 16, "overlap": 8}


@pytest.mark.parametrize("padded,tile,overlap,align", [((88, 72), 48, 16, 4), ((132, 104), 48, 16, 4),
                                                       ((64, 96), 16, 8, 8), ((40, 40), 40, 0, 4)])
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_cores_partition_every_map_and_stitching_restores_it(padded, tile, overlap, align, stride):
    t = Tiler(padded, tile, overlap, align)
    h, w = t.map_size(stride)
    hits = np.zeros((h, w), int)
    for win in t.windows:
        (rows, cols), _ = t.core(win, stride)
        hits[rows, cols] += 1
    assert (hits == 1).all()
    full = torch.arange(2 * h * w, dtype=torch.int64).reshape(1, 2, h, w)
    for batch in t.batches(2 * t.window_size[0] * t.window_size[1]):
        cut = t.cut(lambda r, c: full[..., r, c], batch, stride)
        wh, ww = t.window_size
        assert cut.shape == (len(batch), 2, wh // stride, ww // stride)
        back = torch.full_like(full, -1)
        back_np = np.full(full.shape, -1, np.int64)
        for b2 in t.batches(1 << 30):  # every window, cut again, so that every core is written
            x = t.cut(lambda r, c: full[..., r, c], b2, stride)
            t.stitch(back, x, b2, stride)
            t.stitch(back_np, x.numpy(), b2, stride)
        assert torch.equal(back, full) and np.array_equal(back_np, full.numpy())


def test_read_windows_pads_like_the_whole_image():
    img = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(0))
    t = pipeline.layout((40, 32), 4, 2, 16, 4)
    read = tiling.memory_reader(img, None, 4)
    from refscale import ops

    padded = ops.pad_to_multiple(img, 4)[0]
    x = t.read(read, t.windows)
    for i, w in enumerate(t.windows):
        rows, cols = t.window(w)
        assert torch.equal(x[i:i + 1], padded[..., rows, cols])
