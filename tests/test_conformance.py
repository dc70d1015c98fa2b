"""One contract for every architecture in the catalogue, at tiny size (issue 18, item 5).

For each registered architecture (and RefScale's IRN-block INN, which the shipped OSCD weights
use): encode/decode shapes on odd sizes, the .rsc container round trip, determinism for a seed,
weights save/load, tiled = untiled at t = 0, and the precision recorded in the container. A new
architecture must add its tiny config to ``TINY`` (a test fails until it does).
"""
import numpy as np
import pytest
import torch

from conftest import perturb, synthetic_image
from refscale import pipeline, zoo
from refscale.format import codecs
from refscale.format.container import Packet

#: catalogue name -> (tiny constructor config, parameter noise so that no block is the identity)
TINY = {
    "bicubic-x2": ({}, 0.0),
    "bicubic-x4": ({}, 0.0),
    "bicubic-x16": ({}, 0.0),
    "bicubic-x32": ({}, 0.0),
    "irn-x2": ({"blocks": [2], "gc": 8}, 0.02),
    "irn-x4": ({"blocks": [1, 1], "gc": 8}, 0.02),
    "refscale-x2": ({"blocks": [2], "nf": 8, "n_rrdb": 1, "ref_gc": 4, "gc": 8}, 0.02),
    "refscale-x4": ({"blocks": [1, 1], "nf": 8, "n_rrdb": 1, "ref_gc": 4, "gc": 8}, 0.02),
    "fgrn-x2": ({"nf": 8, "down_blocks": 1, "up_blocks": 1, "flow_cells": 2, "gc": 4}, 0.05),
    "fgrn-x4": ({"nf": 8, "down_blocks": 1, "up_blocks": 1, "flow_cells": 2, "gc": 4}, 0.05),
    # scale-1 identities whose default LR codec is a lossy P-frame from the reference (PyAV)
    "inter-h264": ({}, 0.0),
    "inter-hevc": ({}, 0.0),
    "inter-av1": ({}, 0.0),
    # learned decoders on top of the HEVC inter codec (issue 27)
    "enhance-x1": ({"nf": 8, "blocks": 1}, 0.02),
    "enhance-x2": ({"nf": 8, "blocks": 1}, 0.02),
    # the same after a still codec (AVIF)
    "enhance-x1-avif": ({"nf": 8, "blocks": 1}, 0.02),
    "enhance-x2-avif": ({"nf": 8, "blocks": 1}, 0.02),
}
VARIANTS = {  # more configs of a catalogue architecture that ship or are documented
    "refscale-x2/irn-blocks": ("refscale-x2", {**TINY["refscale-x2"][0], "inn_block": "irn"}, 0.02),
    "refscale-x4/irn-blocks": ("refscale-x4", {**TINY["refscale-x4"][0], "inn_block": "irn"}, 0.02),
}
try:  # TADM needs the diffusion extra; its tiny base comes from its own test module
    from test_tadm import SMALL as TADM_SMALL, TINY as TADM_BASE

    TINY["tadm-x16"] = ({"base": TADM_BASE, "base_seed": 3, **TADM_SMALL}, 0.0)
    TINY["tadm-x32"] = ({"base": TADM_BASE, "base_seed": 3, **TADM_SMALL}, 0.0)
except ImportError:  # pragma: no cover - the test extra installs diffusers
    pass

CASES = {name: (name, cfg, std) for name, (cfg, std) in TINY.items()} | VARIANTS


def build(case: str):
    arch, config, std = CASES[case]
    torch.manual_seed(0)
    model = zoo.build(arch, **config)
    if std:
        perturb(model, std=std)
    if any(type(m).__name__ == "ActNorm" for m in model.modules()):  # data-dependent init, as training does
        hr = synthetic_image(4 * model.alignment, 4 * model.alignment, seed=9)
        model.train().training_losses(hr, hr.flip(-1) if model.needs_reference else None)
    return model.eval()


def inputs(model, h: int, w: int):
    hr = synthetic_image(h, w, seed=1)
    ref = (synthetic_image(h, w, seed=2) * 0.5 + hr * 0.5) if model.needs_reference else None
    return hr, ref


def odd_size(model) -> tuple[int, int]:
    """Sides that are not multiples of the alignment (padding must be undone)."""
    a = max(model.alignment, model.scale)
    if a == 1:  # scale-1 models (inter-*): any size
        return 13, 17
    return 2 * a + a // 2 + 1, 3 * a - 3


def test_every_catalogue_architecture_has_a_tiny_config():
    archs = {name for name, spec in zoo.architectures().items()
             if spec.cls.__module__.startswith("refscale.models")}  # not the toy models of other tests
    tadm_missing = {a for a in archs if a.startswith("tadm")} - set(TINY)
    assert archs - tadm_missing <= set(TINY), sorted(archs - set(TINY))


@pytest.mark.parametrize("case", sorted(CASES))
def test_protocol_container_and_determinism(case):
    model = build(case)
    h, w = odd_size(model)
    hr, ref = inputs(model, h, w)
    packet = pipeline.encode(model, hr, ref, precision="fp32", verify=False)
    s = model.scale
    assert tuple(packet.size) == (h, w)
    assert packet.lr.shape == (packet.padded_size[0] // s, packet.padded_size[1] // s, 3) and packet.lr.dtype == np.uint8
    assert packet.precision == "fp32" and packet.model == model.name
    data = packet.to_bytes()
    again = pipeline.encode(model, hr, ref, precision="fp32", verify=False).to_bytes()
    assert again == data  # encoding is deterministic
    back = Packet.from_bytes(data, lr_ref=packet.lr_ref)  # lr_ref: an inter-frame LR codec's reference
    assert back.precision == "fp32"
    if codecs.is_lossless(packet.codec, packet.quality):
        assert np.array_equal(back.lr, packet.lr)
    else:  # inter-* models and the AVIF decoders: the default codec is lossy
        bound = 40 if packet.codec == "avif" else 20  # AVIF q 25 / AV1 4:2:0 on a noisy 13x17 image
        assert np.abs(back.lr.astype(int) - packet.lr.astype(int)).mean() < bound
    assert back.side.keys() == packet.side.keys() and all(np.array_equal(back.side[k], packet.side[k]) for k in back.side)
    out = pipeline.decode(model, back, ref, seed=3)
    assert out.shape == (1, 3, h, w) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    same = packet if codecs.is_lossless(packet.codec, packet.quality) else Packet.from_bytes(data)
    assert torch.equal(out, pipeline.decode(model, same, ref, seed=3))  # same seed, same pixels
    if model.stochastic:
        assert not torch.equal(out, pipeline.decode(model, packet, ref, seed=4))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][2] or not c.startswith("bicubic")))
def test_weights_save_and_load(case, tmp_path):
    model = build(case)
    if model.num_parameters() == 0:
        pytest.skip("nothing to save")
    path = tmp_path / "w.safetensors"
    zoo.save_weights(model, path)
    loaded = zoo.load_weights_file(path)
    assert loaded.config == model.config and loaded.weights_hash() == model.weights_hash()
    hr, ref = inputs(model, *(2 * max(model.alignment, model.scale),) * 2)
    with torch.no_grad():
        assert torch.equal(loaded.downscale(hr, ref)[0], model.downscale(hr, ref)[0])


@pytest.mark.parametrize("case", sorted(c for c in CASES if not CASES[c][0].startswith("tadm")))
def test_tiled_equals_untiled_at_t0(case):
    """Tiles with a context margin wider than the tiny models' receptive field give the untiled
    result (the same 8-bit LR and side maps; the reconstruction to float rounding). TADM is left out: its latent tiling
    runs per-patch time steps by design (tests/test_tadm.py checks tiled = untiled where the
    latent fits one patch)."""
    model = build(case)
    a = max(model.alignment, model.scale)
    h, w = 202 + a // 2, 187  # more than one window (48 + 2 x 48 px) per side, not a multiple of a
    hr, ref = inputs(model, h, w)
    whole = pipeline.encode(model, hr, ref, tile=0, precision="fp32")
    tiled = pipeline.encode(model, hr, ref, tile=48, overlap=48, precision="fp32")
    assert whole.tiles is None and tiled.tiles is not None
    assert np.array_equal(whole.lr, tiled.lr)
    for k in whole.side:
        assert np.array_equal(whole.side[k], tiled.side[k])
    out_whole = pipeline.decode(model, whole, ref, temperature=0.0)
    out_tiled = pipeline.decode(model, whole, ref, temperature=0.0, tile=48, overlap=48)
    assert (out_whole - out_tiled).abs().max() < 1e-5


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][2]))
def test_precision_is_recorded_and_repeated(case):
    """bf16 asked for at encode time is written into the container, and decode 'auto' repeats it."""
    model = build(case)
    hr, ref = inputs(model, *odd_size(model))
    packet = Packet.from_bytes(pipeline.encode(model, hr, ref, precision="bf16").to_bytes())
    assert packet.precision == "bf16"
    assert pipeline.resolve_precision(model, packet.precision) == "bf16"
    out = pipeline.decode(model, packet, ref, seed=0)
    assert out.shape == hr.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("case", sorted(CASES))
def test_declared_side_tensors_match_downscale(case):
    """``side_spec`` (what the decoder reads instead of running the model) is what ``downscale``
    produces: names, channels, stride and dtype, at two aligned sizes; ``supports_bf16`` is
    declared exactly by the models that have ``set_speed``."""
    model = build(case)
    spec = pipeline.side_spec(model)
    a = max(model.alignment, model.scale, 16)
    for h, w in ((2 * a, 3 * a), (3 * a, 2 * a)):
        hr, ref = inputs(model, h, w)
        with torch.no_grad():
            _, side = model.downscale(hr, ref)
        assert set(side) == set(spec)
        for name, t in side.items():
            sp = spec[name]
            assert tuple(t.shape) == (1, sp.channels, h // sp.stride, w // sp.stride), name
            assert str(t.dtype) == f"torch.{sp.dtype}" and model.alignment % sp.stride == 0, name
    assert model.supports_bf16 == hasattr(model, "set_speed")
    assert case.split("-")[0] != "refscale" or set(spec) == {"smap"}


@pytest.mark.parametrize("case", sorted(c for c in CASES if c.startswith("inter")))  # an inter-frame LR codec by default
def test_decode_leaves_the_callers_packet_unchanged(case):
    """An inter-frame LR is decoded into a copy: the caller's packet read from bytes keeps ``lr`` None."""
    model = build(case)
    hr, _ = inputs(model, *odd_size(model))
    ref = synthetic_image(*hr.shape[-2:], seed=2) * 0.5 + hr * 0.5  # for the LR codec
    data = pipeline.encode(model, hr, ref, verify=False).to_bytes()
    back = Packet.from_bytes(data)
    assert back.lr is None
    out = pipeline.decode(model, back, ref, seed=3)
    assert back.lr is None and back.lr_ref is None
    assert torch.equal(out, pipeline.decode(model, Packet.from_bytes(data, lr_ref=pipeline.lr_reference(ref, model.alignment, model.scale)), ref, seed=3))
