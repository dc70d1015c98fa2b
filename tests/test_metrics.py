import math

import numpy as np
import pytest
import torch

from refscale import metrics
from refscale.ops import rgb_to_ycbcr
from tests.conftest import synthetic_image


def noisy_pair(h=48, w=40, seed=0, sigma=0.05):
    a = synthetic_image(h, w, seed)
    g = torch.Generator().manual_seed(seed + 100)
    b = (a + sigma * torch.randn(a.shape, generator=g)).clamp(0, 1)
    return a, b


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.4 / 255, 0.5, 1.0, 3.0])
    assert metrics.to_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255]
    assert metrics.to_uint8(x).dtype == torch.uint8


def test_psnr_known_values():
    a = torch.full((1, 3, 16, 16), 100 / 255)
    b = torch.full((1, 3, 16, 16), 101 / 255)
    assert float(metrics.psnr(a, b, y_channel=False)) == pytest.approx(10 * math.log10(255**2), abs=1e-9)
    # Y of a grey step of 1 is 219/255 (MATLAB rgb2ycbcr coefficients sum to 219)
    assert float(metrics.psnr(a, b, y_channel=True)) == pytest.approx(10 * math.log10(255**2 / (219 / 255) ** 2), abs=1e-9)
    assert math.isinf(float(metrics.psnr(a, a)))


def test_psnr_matches_skimage_rgb_and_y_and_crops_border():
    from skimage.metrics import peak_signal_noise_ratio

    a, b = noisy_pair()
    ua, ub = (metrics.to_uint8(t)[0].permute(1, 2, 0).numpy() for t in (a, b))
    ref = peak_signal_noise_ratio(ua[4:-4, 4:-4], ub[4:-4, 4:-4], data_range=255)
    assert float(metrics.psnr(a, b, crop_border=4, y_channel=False)) == pytest.approx(ref, abs=1e-9)
    ya, yb = (rgb_to_ycbcr(torch.from_numpy(u).double().permute(2, 0, 1)[None] / 255, y_only=True)[0, 0].numpy() * 255 for u in (ua, ub))
    ref_y = peak_signal_noise_ratio(ya[2:-2, 2:-2], yb[2:-2, 2:-2], data_range=255)
    assert float(metrics.psnr(a, b, crop_border=2)) == pytest.approx(ref_y, abs=1e-9)


def test_psnr_batched():
    a1, b1 = noisy_pair(seed=1)
    a2, b2 = noisy_pair(seed=2, sigma=0.1)
    p = metrics.psnr(torch.cat([a1, a2]), torch.cat([b1, b2]))
    assert p.shape == (2,) and p.dtype == torch.float64
    assert float(p[0]) == pytest.approx(float(metrics.psnr(a1, b1)))
    assert p[0] > p[1]


@pytest.mark.parametrize("crop", [0, 3])
def test_ssim_matches_skimage(crop):
    from skimage.metrics import structural_similarity

    a, b = noisy_pair(seed=3)
    ua, ub = (metrics.to_uint8(t)[0].permute(1, 2, 0).numpy().astype(np.float64) for t in (a, b))
    if crop:
        ua, ub = ua[crop:-crop, crop:-crop], ub[crop:-crop, crop:-crop]
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    ref_rgb = np.mean([structural_similarity(ua[..., c], ub[..., c], **kw) for c in range(3)])
    assert abs(float(metrics.ssim(a, b, crop_border=crop, y_channel=False)) - ref_rgb) < 1e-4
    ya, yb = (rgb_to_ycbcr(torch.from_numpy(u).permute(2, 0, 1)[None] / 255, y_only=True)[0, 0].numpy() * 255 for u in (ua, ub))
    ref_y = structural_similarity(ya, yb, **kw)
    ours_y = float(metrics.ssim(a, b, crop_border=crop))
    assert abs(ours_y - ref_y) < 1e-4
    assert 0.3 < ours_y < 0.999  # a non-trivial comparison


def test_ssim_identity_and_order():
    a, b = noisy_pair(seed=4, sigma=0.02)
    _, c = noisy_pair(seed=4, sigma=0.2)
    assert float(metrics.ssim(a, a)) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(a, b) > metrics.ssim(a, c)


def ramp(h, w, sx, sy):
    """Grey image whose value grows by sx per column and sy per row."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    v = 0.1 + sx * xx + sy * yy
    return v.expand(1, 3, h, w).clone()


@pytest.mark.parametrize("sx,sy", [(0.01, 0.0), (0.0, 0.02), (0.006, 0.008)])
def test_spatial_information_of_linear_ramps(sx, sy):
    x = ramp(20, 24, sx, sy)
    # unnormalised Sobel of a ramp with slope s is 8 s; Y of grey v is 16/255 + 219/255 v
    expected = 8 * (219 / 255) * math.hypot(sx, sy)
    si = metrics.spatial_information(x)
    assert si.shape == (1,)
    assert float(si) == pytest.approx(expected, rel=1e-9)
    assert float(metrics.spatial_information(x, variant="std")) == pytest.approx(0.0, abs=1e-9)


def test_spatial_information_step_edge_and_border_excluded():
    x = torch.zeros(1, 3, 10, 10, dtype=torch.float64)
    x[..., 5:] = 1.0  # vertical edge between columns 4 and 5
    si = float(metrics.spatial_information(x))
    # valid region is 8x8; columns 4 and 5 (valid columns 3 and 4) see 4 * 219/255 each
    expected = 2 * 8 * 4 * (219 / 255) / 64
    assert si == pytest.approx(expected, rel=1e-9)
    const = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(metrics.spatial_information(const), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError):
        metrics.spatial_information(x, variant="max")


def test_bits_per_pixel():
    assert metrics.bits_per_pixel(1000, 100, 80) == pytest.approx(1.0)
    assert metrics.bits_per_pixel(3, 2, 3) == pytest.approx(4.0)


def test_grey_luma():
    g = torch.rand(1, 1, 12, 12)
    grey = g.expand(1, 3, 12, 12)
    assert torch.allclose(metrics.grey_luma(grey), torch.round(g.double() * 255) / 255, atol=1e-12)
    # luma is full range: white -> 1, black -> 0 (MATLAB Y would be 235/255 and 16/255)
    assert torch.allclose(metrics.grey_luma(torch.ones(1, 3, 2, 2)), torch.ones(1, 1, 2, 2, dtype=torch.float64))
    # 1-channel inputs are used as Y as they are: PSNR on the grey values
    b = (grey + 2 / 255).clamp(0, 1)
    direct = metrics.psnr(grey[:, :1], b[:, :1], y_channel=False)
    assert torch.allclose(metrics.psnr(metrics.grey_luma(grey), metrics.grey_luma(b)), direct)


def test_reference_agreement_tells_the_same_place_from_another():
    from refscale.metrics import reference_agreement
    from refscale.ops import bicubic_down

    hr = synthetic_image(64, 64, seed=1)
    later = (hr * 0.8 + 0.1).clamp(0, 1)  # the same place, other light
    other = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # unrelated texture
    lr = bicubic_down(hr, 2)
    same = reference_agreement(lr, later, 2)
    assert same > 0.9
    assert abs(reference_agreement(lr, other, 2)) < 0.3
    assert math.isnan(reference_agreement(lr, torch.full_like(hr, 0.5), 2))


def test_psnr_y_masked_scores_only_the_masked_pixels():
    hr = synthetic_image(32, 40, seed=2)
    rec = hr.clone()
    rec[..., :, :20] = (rec[..., :, :20] + 8 / 255).clamp(0, 1)  # an error in the left half only
    left = np.zeros((32, 40), bool)
    left[:, :20] = True
    assert metrics.psnr_y_masked(rec, hr, left) == pytest.approx(float(metrics.psnr(rec[..., :20], hr[..., :20])))
    assert metrics.psnr_y_masked(rec, hr, ~left) == math.inf  # the right half is untouched
    whole = np.ones((32, 40), bool)  # the whole image with a border left out: as psnr
    assert metrics.psnr_y_masked(rec, hr, whole, 4) == pytest.approx(float(metrics.psnr(rec, hr, 4)))
    assert math.isnan(metrics.psnr_y_masked(rec, hr, np.zeros((32, 40), bool)))


def test_fraction_off_counts_pixels_with_any_channel_off_by_more_than_40_levels():
    a = torch.full((1, 3, 10, 10), 100 / 255)
    b = a.clone()
    b[0, 2, 5, 5] = 141 / 255  # blue off by 41 levels: counts
    b[0, 0, 6, 6] = 140 / 255  # red off by exactly 40: does not
    b[0, :, 7, 7] = 130 / 255  # every channel off by 30: does not
    b[0, 1, 0, 0] = 0.0  # off by 100 but in the cropped border
    assert float(metrics.fraction_off(a, b)[0]) == pytest.approx(2 / 100)
    assert float(metrics.fraction_off(a, b, crop_border=1)[0]) == pytest.approx(1 / 64)
    assert float(metrics.fraction_off(a, b, crop_border=1, levels=20)[0]) == pytest.approx(3 / 64)
    pair = metrics.fraction_off(torch.cat([a, a]), torch.cat([a, b]))
    assert pair.shape == (2,) and pair.dtype == torch.float64 and float(pair[0]) == 0.0
