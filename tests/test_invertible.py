"""Invertible blocks: exact inverses (float64) and log-determinants against brute-force Jacobians."""
import pytest
import torch

from conftest import perturb
from refscale.nn.invertible import (
    ActNorm,
    AffineCoupling,
    ConditionalAffineCoupling,
    FlowSequence,
    HaarSqueeze,
    InvConv1x1,
    dense_subnet,
)
from refscale.nn.layers import RRDB, DenseBlock, ResidualBlock

SHAPE = (1, 4, 4, 4)
COND_SHAPE = (1, 2, 4, 4)


def _blocks():
    sub = dense_subnet(gc=4)
    return {
        "haar": (HaarSqueeze(), False),
        "conv1x1": (InvConv1x1(4), False),
        "conv1x1_identity": (InvConv1x1(4, init="identity"), False),
        "actnorm": (ActNorm(4), False),
        "coupling": (AffineCoupling(4, split_len1=3, subnet=sub), False),
        "coupling_split1": (AffineCoupling(4, split_len1=1, subnet=sub, clamp=2.0), False),
        "coupling_cond": (AffineCoupling(4, split_len1=1, subnet=sub, cond_channels=2), True),
        "cond_coupling": (ConditionalAffineCoupling(4, cond_channels=2, subnet=sub), True),
        "cond_coupling_nocond": (ConditionalAffineCoupling(4, cond_channels=0, split_len=3, subnet=sub), False),
        "sequence": (FlowSequence([ActNorm(4), InvConv1x1(4), ConditionalAffineCoupling(4, 2, subnet=sub), HaarSqueeze(),
                                   AffineCoupling(16, 3, subnet=sub)]), True),
    }


def _prepare(name):
    torch.manual_seed(0)
    block, conditional = _blocks()[name]
    block = block.double()
    x = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.7 + 0.2
    cond = torch.randn(COND_SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) if conditional else None
    block.train()
    block(x * 1.5 + 0.3, cond)  # ActNorm data-dependent init on another batch
    perturb(block, std=0.3)
    block.eval()
    return block, x, cond


@pytest.mark.parametrize("name", list(_blocks()))
def test_inverse_float64(name):
    block, x, cond = _prepare(name)
    y, logdet = block(x, cond)
    assert logdet.shape == (x.shape[0],)
    assert y.numel() == x.numel()
    if y.shape == x.shape:
        assert (y - x).abs().max() > 1e-3  # the block does something
    x_rec = block.inverse(y, cond)
    assert x_rec.shape == x.shape
    assert (x_rec - x).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name", list(_blocks()))
def test_logdet_matches_jacobian(name):
    block, x, cond = _prepare(name)
    _, logdet = block(x, cond)

    def flat(v):
        return block(v.view(SHAPE), cond)[0].reshape(-1)

    jac = torch.autograd.functional.jacobian(flat, x.reshape(-1))
    sign, brute = torch.linalg.slogdet(jac)
    assert sign != 0
    assert abs(logdet.item() - brute.item()) <= 1e-8 * max(1.0, abs(brute.item()))
    assert name.startswith(("conv1x1_identity",)) or abs(brute.item()) > 1e-3  # a real test, not 0 == 0


def test_batch_logdet_is_per_sample():
    torch.manual_seed(0)
    block = AffineCoupling(4, 3, subnet=dense_subnet(gc=4)).double()
    perturb(block, std=0.3)
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    _, ld = block(x)
    singles = torch.cat([block(x[i : i + 1])[1] for i in range(3)])
    assert torch.allclose(ld, singles)
    assert ld.std() > 0


def test_coupling_starts_as_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 8, 8)
    for block in (AffineCoupling(12, 3), ConditionalAffineCoupling(12, 5)):
        cond = torch.randn(2, 5, 8, 8) if isinstance(block, ConditionalAffineCoupling) else None
        y, ld = block(x, cond)
        assert torch.equal(y, x)
        assert torch.all(ld == 0)


def test_actnorm_init_is_state():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8) * 3 + 1
    a = ActNorm(3).train()
    y, _ = a(x)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (y.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    state = a.state_dict()
    assert "initialized" in state and int(state["initialized"]) == 1
    b = ActNorm(3).train()
    b.load_state_dict(state)
    y2, _ = b(x * 10 - 5)  # a loaded ActNorm must not re-initialise on new data
    assert torch.allclose(b.bias, a.bias) and torch.allclose(b.log_scale, a.log_scale)
    assert not torch.allclose(y2.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-2)
    # an uninitialised ActNorm in eval mode is the identity (decoding a random model stays deterministic)
    c = ActNorm(3).eval()
    assert torch.equal(c(x)[0], x) and int(c.initialized) == 0


def test_conv1x1_params_and_autocast_exactness():
    torch.manual_seed(0)
    conv = InvConv1x1(12)
    assert sum(p.numel() for p in conv.parameters()) == 12 * 11 + 12  # 66 + 66 + 12
    x = torch.randn(2, 12, 8, 8)
    y32, _ = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ybf, _ = conv(x)
        xr = conv.inverse(ybf)
    assert ybf.dtype == torch.float32
    assert torch.allclose(ybf, y32, atol=1e-6)
    assert (xr - x).abs().max() < 1e-5


def test_coupling_under_autocast_stays_float32_and_invertible():
    torch.manual_seed(0)
    block = ConditionalAffineCoupling(12, 4, subnet=dense_subnet(gc=8))
    perturb(block, std=0.05)
    x, cond = torch.randn(1, 12, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ld = block(x, cond)
        xr = block.inverse(y, cond)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    assert (xr - x).abs().max() < 1e-5


def test_layers_shapes_and_init():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 6)
    db = DenseBlock(8, 5, gc=4)
    assert db(x).shape == (1, 5, 6, 6) and torch.all(db(x) == 0)  # zero last conv
    db2 = DenseBlock(8, 5, gc=4, zero_last=False)
    assert db2(x).abs().sum() > 0
    assert RRDB(8, 4)(x).shape == x.shape
    assert ResidualBlock(8)(x).shape == x.shape
    # IRN subnet size: DenseBlock(9 -> 3) with gc 32
    n = sum(p.numel() for p in DenseBlock(9, 3).parameters())
    assert n == sum((9 + 32 * i) * 32 * 9 + 32 for i in range(4)) + (9 + 128) * 3 * 9 + 3
