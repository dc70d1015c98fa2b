import pytest
import torch

from refscale import zoo
from refscale.models.bicubic import Bicubic
from refscale.ops import bicubic_down, bicubic_up
from tests.conftest import synthetic_image


@pytest.mark.parametrize("scale", [2, 4, 16, 32])
def test_registered_and_loadable(scale):
    name = f"bicubic-x{scale}"
    assert name in zoo.architectures()
    m = zoo.load(name)  # no weights needed
    assert isinstance(m, Bicubic) and m.scale == scale and m.name == name
    assert not m.needs_reference and not m.stochastic and m.num_parameters() == 0
    assert m.alignment == scale


@pytest.mark.parametrize("scale", [2, 4])
def test_downscale_upscale_are_matlab_bicubic(scale):
    m = zoo.load(f"bicubic-x{scale}")
    hr = synthetic_image(32, 48, 1)
    lr, side = m.downscale(hr)
    assert side == {} and lr.shape == (1, 3, 32 // scale, 48 // scale)
    assert torch.equal(lr, bicubic_down(hr, scale))
    up = m.upscale(lr)
    assert up.shape == hr.shape and torch.equal(up, bicubic_up(lr, scale))
    # a reasonable reconstruction of a smooth image
    assert (up - hr).abs().mean() < 0.1


def test_catalogue_lists_bicubic():
    rows = {r["name"]: r for r in zoo.catalogue()}
    assert rows["bicubic-x4"]["scale"] == 4 and rows["bicubic-x4"]["params"] == 0
