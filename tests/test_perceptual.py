"""LPIPS and DISTS (refscale.perceptual) with random weights written in the upstream file formats.

The real ImageNet backbones and learned heads are not available here, so these tests check the
loading paths (torchvision / lpips / DISTS key layouts, .pth and .safetensors, the folder lookup),
the errors, and the properties that hold for any weights: zero distance to itself, symmetry,
per-image values, gradients to the images, frozen weights, L2 pooling.
"""
import pytest
import torch
from safetensors.torch import save_file

from refscale import perceptual
from refscale.errors import ModelError
from conftest import synthetic_image


def _torchvision_state(features: torch.nn.Sequential) -> dict[str, torch.Tensor]:
    state = {f"features.{k}": v.clone() for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry a classifier: ignored
    return state


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A folder with random VGG16/AlexNet (torchvision layout) and LPIPS/DISTS heads (upstream layouts)."""
    d = tmp_path_factory.mktemp("perceptual")
    torch.manual_seed(0)
    save_file(_torchvision_state(perceptual.vgg16_features()), str(d / "vgg16.safetensors"))
    torch.save(_torchvision_state(perceptual.alexnet_features()), d / "alexnet-owt-7be5be79.pth")
    for net, chans in (("vgg", (64, 128, 256, 512, 512)), ("alex", (64, 192, 384, 256, 256))):
        heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(chans)}
        torch.save(heads, d / f"lpips_{net}.pth")
    torch.save({"alpha": torch.rand(1, 1475, 1, 1) + 0.05, "beta": torch.rand(1, 1475, 1, 1) + 0.05}, d / "dists.pt")
    return d


def _images():
    a = torch.cat([synthetic_image(48, 40, seed=s) for s in range(3)])
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(5))
    return a, (a + 0.05 * noise).clamp(0, 1), (a + 0.4 * noise).clamp(0, 1)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_properties(weights_dir, net):
    metric = perceptual.LPIPS(net, weights_dir=weights_dir)
    a, mild, strong = _images()
    d_self = metric(a, a)
    assert d_self.shape == (3,) and d_self.abs().max() < 1e-6
    d_mild, d_strong = metric(a, mild), metric(a, strong)
    assert (d_mild > 0).all() and (d_strong > d_mild).all()
    assert torch.allclose(metric(mild, a), d_mild, atol=1e-6)
    assert torch.allclose(metric(a[1:2], mild[1:2]), d_mild[1:2], atol=1e-6)  # per image, batch-independent
    x = mild.clone().requires_grad_(True)
    metric(x, a).sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in metric.parameters())
    metric.train()
    assert not metric.training


def test_lpips_matches_the_formula_on_one_layer(weights_dir):
    """LPIPS = sum over layers of the spatial mean of w . (unit-normalised feature difference)^2."""
    metric = perceptual.LPIPS("alex", weights_dir=weights_dir)
    a, mild, _ = _images()
    x = lambda im: (im * 2 - 1 - metric.shift) / metric.scale  # noqa: E731
    total = 0
    fa, fb = x(a[:1]), x(mild[:1])
    for i, layer in enumerate(metric.features):
        fa, fb = layer(fa), layer(fb)
        if i in perceptual._ALEX_TAPS:
            k = perceptual._ALEX_TAPS.index(i)
            na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
            nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
            w = metric.lins[k].weight.view(1, -1, 1, 1)
            total = total + ((na - nb) ** 2 * w).sum(1).mean()
    assert torch.allclose(metric(a[:1], mild[:1]), total.view(1), rtol=1e-5)


def test_dists_properties(weights_dir):
    metric = perceptual.DISTS(weights_dir=weights_dir)
    a, mild, strong = _images()
    d_self = metric(a, a)
    assert d_self.shape == (3,) and d_self.abs().max() < 1e-5
    d_mild, d_strong = metric(a, mild), metric(a, strong)
    assert (d_mild > 0).all() and (d_strong > d_mild).all()
    assert torch.allclose(metric(mild, a), d_mild, atol=1e-6)
    x = strong.clone().requires_grad_(True)
    metric(x, a).mean().backward()
    assert x.grad.abs().sum() > 0


def test_l2pool_is_the_normalised_hann_window():
    pool = perceptual.L2Pool(2)
    expected = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    assert torch.allclose(pool.filter[0, 0], expected)
    x = torch.full((1, 2, 8, 8), 3.0)
    y = pool(x)
    assert y.shape == (1, 2, 4, 4)
    assert torch.allclose(y[..., 1:, 1:], torch.full_like(y[..., 1:, 1:], 3.0), atol=1e-5)  # interior of a constant


def test_weights_found_by_environment_and_explicit_paths(weights_dir, monkeypatch):
    monkeypatch.setenv(perceptual.PERCEPTUAL_DIR_ENV, str(weights_dir))
    a, mild, _ = _images()
    by_env = perceptual.LPIPS("vgg")(a, mild)
    explicit = perceptual.LPIPS("vgg", backbone=weights_dir / "vgg16.safetensors", heads=weights_dir / "lpips_vgg.pth")
    assert torch.equal(by_env, explicit(a, mild))


def test_missing_and_wrong_weights_are_clear_errors(weights_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(perceptual.PERCEPTUAL_DIR_ENV, raising=False)
    with pytest.raises(ModelError, match="REFSCALE_PERCEPTUAL_DIR"):
        perceptual.LPIPS("vgg")
    with pytest.raises(ModelError, match="vgg16-397923af.pth"):
        perceptual.DISTS(weights_dir=tmp_path)
    with pytest.raises(ModelError, match="not found"):
        perceptual.DISTS(backbone=tmp_path / "nope.pth", weights_dir=weights_dir)
    bad = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, bad)
    with pytest.raises(ModelError, match="lacks|shape"):
        perceptual.LPIPS("vgg", backbone=bad, weights_dir=weights_dir)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        perceptual.DISTS(backbone=junk, weights_dir=weights_dir)
    with pytest.raises(ModelError, match="vgg' or 'alex"):
        perceptual.LPIPS("squeeze", weights_dir=weights_dir)
