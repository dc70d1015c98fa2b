"""The differentiable JPEG (``refscale.nn.jpeg``) against Pillow's real JPEG, and the training
option that puts it in the loop (``jpeg_quality``, issue 27 item 4)."""
from __future__ import annotations


import pytest
import torch

from benchmarks.jpeg_sim import pillow_jpeg
from refscale import metrics, ops
from refscale.models.irn import IRN
from refscale.nn.jpeg import quant_tables, simulate_jpeg
from conftest import synthetic_image

torch.set_num_threads(1)
TINY = {"blocks": [1], "gc": 4}


def _psnr(a, b):
    return metrics.psnr(a, b, crop_border=0, y_channel=False).item()


@pytest.mark.parametrize("quality", [10, 30, 50, 90])
def test_simulated_jpeg_decodes_as_pillow_does(quality):
    """Within a few levels of Pillow's decode and with the same distortion (the PSNR against the
    original within 0.1 dB), on a smooth image of a size that is not a multiple of 16 and on a
    saturated one (random black and white: every plane's range limit at work)."""
    smooth = ops.quantize_8bit(synthetic_image(72, 90, seed=3))
    saturated = (torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    for x, agree in ((smooth, 35), (saturated, 30)):
        real = pillow_jpeg(x, quality)
        sim = simulate_jpeg(x, quality)
        assert sim.shape == x.shape
        assert torch.equal(sim, torch.round(sim * 255) / 255)  # on the 8-bit grid
        assert _psnr(sim, real) > agree
        assert abs(_psnr(sim, x) - _psnr(real, x)) < 0.1
        assert _psnr(sim, x) < 60  # it did code something


def test_quant_tables_follow_libjpeg_scaling():
    """libjpeg's ``jpeg_quality_scaling`` (integer division below 50) at every quality."""
    from refscale.nn.jpeg import _CHROMA, _LUMA

    qs = list(range(1, 101))
    luma, chroma = quant_tables(torch.tensor(qs, dtype=torch.float32))
    for i, q in enumerate(qs):
        scale = 5000 // q if q < 50 else 200 - 2 * q
        for base, table in ((_LUMA, luma[i]), (_CHROMA, chroma[i])):
            want = [min(255, max(1, (b * scale + 50) // 100)) for b in base]
            assert table.flatten().tolist() == want, q
    luma, chroma = quant_tables(torch.tensor([50.0, 100.0, 1.0, 75.0]))
    assert luma[0, 0, 0] == 16 and luma[0, 7, 7] == 99 and chroma[0, 0, 0] == 17
    assert torch.all(luma[1] == 1) and torch.all(chroma[1] == 1)  # q 100: scale 0 -> 1
    assert luma[2].max() == 255  # q 1 clamps to baseline's 255
    assert luma[3, 0, 0] == 8  # q 75: scale 50, floor((16 * 50 + 50) / 100)


def test_per_sample_qualities_and_gradient():
    """One quality per sample codes each sample as alone; lower quality, more distortion; the
    gradient reaches the input (straight-through roundings)."""
    x = torch.stack([synthetic_image(32, 32, seed=1)[0], synthetic_image(32, 32, seed=2)[0]])
    both = simulate_jpeg(x, torch.tensor([10.0, 90.0]))
    assert torch.equal(both[0:1], simulate_jpeg(x[0:1], 10)) and torch.equal(both[1:2], simulate_jpeg(x[1:2], 90))
    assert _psnr(simulate_jpeg(x[1:2], 10), x[1:2]) < _psnr(both[1:2], x[1:2])
    xg = x.clone().requires_grad_(True)
    simulate_jpeg(xg, 30).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 inside, whatever the autocast
        under_autocast = simulate_jpeg(x, 90)
    assert torch.equal(under_autocast, simulate_jpeg(x, 90))
    with pytest.raises(ValueError, match="one quality or one per sample"):
        simulate_jpeg(x, torch.tensor([10.0, 20.0, 30.0]))


def test_jpeg_quality_training_option():
    """``jpeg_quality``: the training backward pass decodes the JPEG-coded LR (not the 8-bit LR),
    the losses reach every parameter; bad ranges are refused; the default is no codec."""
    torch.manual_seed(0)
    model = IRN(2, **TINY)
    lr, bic = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert model.jpeg_quality is None and torch.equal(model.training_lr(lr, bic)[0], ops.quantize_8bit(lr))
    model.configure_training(0, jpeg_quality=[20, 20])
    coded, foreign = model.training_lr(lr, bic)
    assert foreign is None and torch.equal(coded, simulate_jpeg(lr, 20))
    for bad in ([0, 50], [60, 50], [50, 101]):
        with pytest.raises(ValueError, match="jpeg_quality"):
            model.configure_training(0, jpeg_quality=bad)
    with pytest.raises(ValueError, match="jpeg_prob"):
        model.configure_training(0, jpeg_quality=[20, 20], jpeg_prob=1.5)
    lr8 = torch.rand(64, 3, 8, 8)  # jpeg_prob: each sample either JPEG-coded or 8-bit, about half each
    model.configure_training(0, jpeg_quality=[20, 20], jpeg_prob=0.5)
    mixed = model.training_lr(lr8, lr8)[0]
    is_jpeg = [torch.equal(mixed[i], simulate_jpeg(lr8[i:i + 1], 20)[0]) for i in range(64)]
    is_8bit = [torch.equal(mixed[i], ops.quantize_8bit(lr8[i])) for i in range(64)]
    assert all(a != b for a, b in zip(is_jpeg, is_8bit)) and 16 <= sum(is_jpeg) <= 48
    model.configure_training(0, jpeg_quality=[5, 95], foreign_lr=0.5)
    losses = model.training_losses(synthetic_image(32, 32, seed=4).expand(2, -1, -1, -1).contiguous())
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
