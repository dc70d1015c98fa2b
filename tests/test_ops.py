import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refscale import ops
from tests.conftest import synthetic_image


def pillow_resize(a: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Pillow's float-mode bicubic (a = -0.5, antialiased when reducing; truncated border)."""
    return np.array(Image.fromarray(a.astype(np.float32), mode="F").resize(size_wh, Image.BICUBIC), dtype=np.float64)


# --------------------------------------------------------------------------- imresize


@pytest.mark.parametrize("scale,shape", [(0.5, (16, 24)), (0.25, (8, 12)), (2, (64, 96)), (4, (128, 192)), (1 / 32, (1, 2))])
def test_imresize_output_size(scale, shape):
    x = torch.rand(2, 3, 32, 48)
    assert ops.imresize(x, scale).shape == (2, 3, *shape)


def test_imresize_size_argument_and_odd_sizes():
    x = torch.rand(1, 3, 33, 47)
    assert ops.imresize(x, size=(10, 7)).shape == (1, 3, 10, 7)
    assert ops.imresize(x, 0.5).shape == (1, 3, 17, 24)  # MATLAB: ceil(in * scale)
    with pytest.raises(ValueError):
        ops.imresize(x)
    with pytest.raises(ValueError):
        ops.imresize(x, 0.5, size=(10, 10))


@pytest.mark.parametrize("scale", [0.5, 0.25, 2, 4])
def test_imresize_preserves_constants(scale):
    x = torch.full((1, 3, 24, 20), 0.37, dtype=torch.float64)
    y = ops.imresize(x, scale)
    assert torch.allclose(y, torch.full_like(y, 0.37), atol=1e-12)


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_down_matches_pillow_away_from_border(factor):
    a = synthetic_image(64, 80, seed=1)[0, 0].double()
    ours = ops.bicubic_down(a[None, None], factor)[0, 0].numpy()
    ref = pillow_resize(a.numpy(), (80 // factor, 64 // factor))
    m = 3  # Pillow truncates the kernel at the border, MATLAB mirrors: compare the interior
    assert np.abs(ours - ref)[m:-m, m:-m].max() < 1e-5
    assert np.abs(ours - ref).max() > 1e-4  # ... and the borders really differ (symmetric padding)


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_up_matches_pillow_away_from_border(factor):
    a = torch.rand(20, 24, dtype=torch.float64)
    ours = ops.bicubic_up(a[None, None], factor)[0, 0].numpy()
    ref = pillow_resize(a.numpy(), (24 * factor, 20 * factor))
    m = 3 * factor
    assert np.abs(ours - ref)[m:-m, m:-m].max() < 1e-5


@pytest.mark.parametrize("factor,mode", [(2, "down"), (4, "down"), (2, "up"), (4, "up")])
def test_imresize_border_is_symmetric_padding(factor, mode):
    """Everywhere (border included) MATLAB's result equals Pillow's interior result on a
    symmetrically padded image."""
    a = torch.rand(24, 32, dtype=torch.float64)
    p = 8  # input pixels of symmetric padding per side (a multiple of the factor)
    padded = np.pad(a.numpy(), p, mode="symmetric")
    if mode == "down":
        ours = ops.bicubic_down(a[None, None], factor)[0, 0].numpy()
        ref = pillow_resize(padded, (padded.shape[1] // factor, padded.shape[0] // factor))
        c = p // factor
    else:
        ours = ops.bicubic_up(a[None, None], factor)[0, 0].numpy()
        ref = pillow_resize(padded, (padded.shape[1] * factor, padded.shape[0] * factor))
        c = p * factor
    assert np.abs(ours - ref[c:-c, c:-c]).max() < 1e-5


def test_imresize_batched_equals_single_and_is_differentiable():
    x = torch.rand(3, 2, 12, 10, dtype=torch.float64)
    y = ops.imresize(x, 0.5)
    for i in range(3):
        assert torch.allclose(y[i : i + 1], ops.imresize(x[i : i + 1], 0.5))
    small = torch.rand(1, 1, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.imresize(t, 0.5), (small,))
    assert torch.autograd.gradcheck(lambda t: ops.imresize(t, 2), (small,))


def test_imresize_non_antialiased_down_is_sharper():
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    aa = ops.imresize(x, 0.25)
    no = ops.imresize(x, 0.25, antialias=False)
    assert aa.std() < no.std()


# --------------------------------------------------------------------------- colour


def test_ycbcr_matches_matlab_rgb2ycbcr():
    # MATLAB: rgb2ycbcr(double(cat(3, ...))) for white, black, red, green, blue
    rgb = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    expected = torch.tensor([
        [0.9216, 0.5020, 0.5020],
        [0.0627, 0.5020, 0.5020],
        [0.3195, 0.3537, 0.9412],
        [0.5669, 0.2110, 0.1342],
        [0.1607, 0.9412, 0.4305],
    ], dtype=torch.float64)
    x = rgb.T.reshape(1, 3, 5, 1)
    ycc = ops.rgb_to_ycbcr(x).reshape(3, 5).T
    assert torch.allclose(ycc, expected, atol=6e-5)
    assert torch.allclose(ops.rgb_to_ycbcr(x, y_only=True).reshape(5), expected[:, 0], atol=6e-5)
    assert ops.rgb_to_ycbcr(x, y_only=True).shape == (1, 1, 5, 1)


def test_ycbcr_round_trip():
    x = synthetic_image(16, 16)
    assert torch.allclose(ops.ycbcr_to_rgb(ops.rgb_to_ycbcr(x)), x, atol=1e-5)


# --------------------------------------------------------------------------- blur


def test_gaussian_kernel_and_blur_match_scipy():
    from scipy.ndimage import gaussian_filter

    k = ops.gaussian_kernel1d(1.5)
    assert k.numel() == 11 and abs(float(k.sum()) - 1) < 1e-6 and torch.allclose(k, k.flip(0))
    x = torch.rand(1, 2, 20, 17, dtype=torch.float64)
    y = ops.gaussian_blur(x, 1.5)
    for c in range(2):
        # torch "reflect" (d c b | a b c d) is scipy's "mirror"; same 11 taps
        ref = gaussian_filter(x[0, c].numpy(), 1.5, mode="mirror", truncate=5 / 1.5)
        assert np.abs(y[0, c].numpy() - ref).max() < 1e-12
    tiny = torch.rand(1, 3, 3, 3)
    assert ops.gaussian_blur(tiny, 2.0).shape == tiny.shape  # replicate fallback


# --------------------------------------------------------------------------- Haar


def irn_haar_reference(x):
    """IRN's HaarDownsampling.forward written with its grouped convolution."""
    c = x.shape[1]
    w = torch.ones(4, 1, 2, 2, dtype=x.dtype)
    w[1, 0, 0, 1] = w[1, 0, 1, 1] = -1
    w[2, 0, 1, 0] = w[2, 0, 1, 1] = -1
    w[3, 0, 1, 0] = w[3, 0, 0, 1] = -1
    w = torch.cat([w] * c, 0)
    out = F.conv2d(x, w, stride=2, groups=c) / 4.0
    out = out.reshape(x.shape[0], c, 4, x.shape[2] // 2, x.shape[3] // 2).transpose(1, 2)
    return out.reshape(x.shape[0], 4 * c, x.shape[2] // 2, x.shape[3] // 2)


def test_haar_matches_irn_and_ll_is_block_mean():
    x = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    y = ops.haar_forward(x)
    assert y.shape == (2, 12, 4, 6)
    assert torch.allclose(y, irn_haar_reference(x), atol=1e-12)
    assert torch.allclose(y[:, :3], F.avg_pool2d(x, 2), atol=1e-12)


def test_haar_round_trip_exact():
    # dyadic values: every operation is exact in float64
    x = torch.randint(0, 256, (2, 3, 8, 10)).double() / 256
    assert torch.equal(ops.haar_inverse(ops.haar_forward(x)), x)
    xf = torch.rand(1, 3, 16, 16)
    assert torch.allclose(ops.haar_inverse(ops.haar_forward(xf)), xf, atol=1e-6)
    y = torch.randn(1, 12, 4, 4, dtype=torch.float64)
    assert torch.allclose(ops.haar_forward(ops.haar_inverse(y)), y, atol=1e-12)


def test_haar_logdet_per_block():
    jac = torch.autograd.functional.jacobian(lambda t: ops.haar_forward(t).reshape(-1), torch.rand(1, 1, 2, 2, dtype=torch.float64))
    sign, logabs = torch.linalg.slogdet(jac.reshape(4, 4))
    assert abs(float(logabs) - ops.HAAR_LOGDET_PER_BLOCK) < 1e-12
    assert ops.HAAR_LOGDET_PER_BLOCK == pytest.approx(math.log(1 / 16))


# --------------------------------------------------------------------------- quantization


def test_quantize_8bit_values_and_straight_through_gradient():
    x = torch.tensor([-0.3, 0.0, 0.1, 0.5, 0.99, 1.7], requires_grad=True)
    q = ops.quantize_8bit(x)
    assert torch.allclose(q * 255, torch.round(q * 255), atol=1e-4)
    assert q.min() >= 0 and q.max() <= 1
    assert torch.allclose(q, torch.tensor([0.0, 0.0, 26 / 255, 128 / 255, 252 / 255, 1.0]))
    (q * torch.arange(6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0))


def test_round_ste():
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    y = ops.round_ste(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_pad_crop_round_trip(mode):
    x = torch.rand(1, 3, 13, 18)
    p, size = ops.pad_to_multiple(x, 8, mode=mode)
    assert p.shape[-2:] == (16, 24) and size == (13, 18)
    assert torch.equal(p[..., :13, :18], x)  # pads bottom/right only
    assert torch.equal(ops.crop_to(p, size), x)


def test_pad_falls_back_to_replicate_and_noop():
    x = torch.rand(1, 3, 3, 5)
    p, size = ops.pad_to_multiple(x, 8)
    assert p.shape[-2:] == (8, 8) and torch.equal(p[..., 7, 4], x[..., 2, 4])
    y = torch.rand(1, 3, 16, 8)
    assert ops.pad_to_multiple(y, 4)[0] is y


def test_centre_crop():
    x = torch.arange(6 * 9).reshape(1, 1, 6, 9)
    assert torch.equal(ops.centre_crop(x, 4), x[..., 1:5, 2:6])
    assert torch.equal(ops.centre_crop(x, 8), x[..., :, 0:8])  # the short side kept whole
    assert ops.centre_crop(x, 100).shape == x.shape


def test_mod_crop():
    x = torch.rand(1, 3, 13, 18)
    assert ops.mod_crop(x, 4).shape[-2:] == (12, 16)
    assert torch.equal(ops.mod_crop(x, 4), x[..., :12, :16])


def test_gaussian_blur_array_is_gaussian_blur():
    """The NumPy blur (reference_agreement's) equals the torch one, reflect and replicate edges."""
    torch.manual_seed(0)
    for h, w, sigma in ((40, 56, 1.0), (40, 56, 4.0), (9, 30, 4.0)):  # 9 px: too small to reflect 25 taps
        x = torch.rand(1, 1, h, w)
        got = ops.gaussian_blur_array(x[0, 0].numpy(), sigma)
        np.testing.assert_allclose(got, ops.gaussian_blur(x, sigma)[0, 0].numpy(), atol=1e-6)
