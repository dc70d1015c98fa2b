"""The catalogue: weights files round-trip for every trainable architecture; shipped weights are checked."""
import json
import shutil

import pytest
import torch

from conftest import perturb, synthetic_image
from refscale import zoo
from refscale.errors import ModelError

#: tiny configs (the per-model test files use the same ones) and the noise that makes every block non-trivial
TINY = {
    "irn-x2": (dict(blocks=[2], gc=8), 0.02),
    "fgrn-x2": (dict(nf=8, down_blocks=1, up_blocks=1, flow_cells=2, gc=4), 0.05),
}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_weights_round_trip(arch, tmp_path):
    config, std = TINY[arch]
    torch.manual_seed(0)
    model = zoo.build(arch, **config)
    perturb(model, std=std)
    path = tmp_path / f"{arch}-test.safetensors"
    zoo.save_weights(model, path)
    loaded = zoo.load_weights_file(path)
    assert loaded.config == model.config and loaded.weights_hash() == model.weights_hash()
    hr = synthetic_image(8, 8)
    assert torch.equal(loaded.downscale(hr)[0], model.eval().downscale(hr)[0])


@pytest.mark.skipif(not zoo.weights_cards(), reason="no shipped weights")
def test_shipped_weights_refuse_a_changed_file(tmp_path, monkeypatch):
    name, card = next(iter(zoo.weights_cards().items()))
    assert zoo.load(name).name == name  # the card's sha256 matches the shipped file
    copy = tmp_path / "weights"
    copy.mkdir()
    shutil.copy(zoo.WEIGHTS_DIR / f"{name}.json", copy)
    data = bytearray((zoo.WEIGHTS_DIR / f"{name}.safetensors").read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor
    (copy / f"{name}.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", copy)
    with pytest.raises(ModelError, match="do not match"):
        zoo.load(name)
    assert json.loads((copy / f"{name}.json").read_text())["sha256"] == card["sha256"]


def test_half_storage_loads_into_float32(tmp_path):
    """half=True stores float tensors as float16 (half the bytes); they load into the float32 model,
    integer buffers (ActNorm's flag) unchanged, and the model's outputs move only by fp16 rounding."""
    from refscale.models.refscale_net import RefScaleNet

    torch.manual_seed(0)
    model = RefScaleNet(2, blocks=[2], nf=8, n_rrdb=1, ref_gc=4, gc=8)
    perturb(model, std=0.02)
    hr, ref = synthetic_image(16, 16, seed=1), synthetic_image(16, 16, seed=2)
    model.train().training_losses(hr, ref)  # ActNorm's data init
    model.eval()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    zoo.save_weights(model, full)
    zoo.save_weights(model, half, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = zoo.load_weights_file(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(loaded.buffers(), model.buffers()) if not a.is_floating_point())
    assert any(not torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters()))  # really rounded
    with torch.no_grad():
        lr_full, side = model.downscale(hr, ref)
        lr_half, side_half = loaded.downscale(hr, ref)
    assert (lr_full - lr_half).abs().max() < 1 / 255  # below one 8-bit level
    too_big = zoo.build("irn-x2", blocks=[1], gc=4)
    with torch.no_grad():
        next(too_big.parameters()).fill_(1e5)
    with pytest.raises(ModelError, match="float16"):
        zoo.save_weights(too_big, tmp_path / "big.safetensors", half=True)


def test_catalogue_shows_what_load_gives():
    """Issue 26, item 5.5: the alias rows (refscale-x2 / -x4) showed the architecture defaults'
    parameter counts (2,780,704 / 3,538,384), not those of the shipped weights they load
    (3,630,000 / 6,759,552). Every row with weights now shows what load(name) gives."""
    rows = {r["name"]: r for r in zoo.catalogue()}
    checked = 0
    for name, r in rows.items():
        if r["weights"] in (None, "none needed", "-"):
            continue
        model = zoo.load(name)
        assert (r["params"], r["scale"], bool(r["needs_reference"])) == \
            (model.num_parameters(), model.scale, model.needs_reference), name
        checked += 1
    cards = zoo.weights_cards()
    assert checked >= len(cards)
    for alias in ("refscale-x2", "refscale-x4"):
        if zoo.default_weights(alias) in cards:
            assert rows[alias]["params"] == rows[zoo.default_weights(alias)]["params"]
