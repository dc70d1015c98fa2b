"""RefScale: sizes, exact conditional round trip, encode/decode conditions, side info, ablation
switches, losses and gradients (tiny widths; the full sizes only for the parameter count)."""
import numpy as np
import pytest
import torch

from conftest import perturb, synthetic_image
from refscale import metrics, ops, zoo
from refscale.errors import InputError, ModelError
from refscale.models.refscale_net import RefScaleNet

TINY = dict(nf=8, n_rrdb=1, ref_gc=4, gc=8)


def tiny(scale=2, **kw):
    torch.manual_seed(0)
    blocks = [2] * (1 if scale == 2 else 2)
    return RefScaleNet(scale, **{"blocks": blocks, **TINY, **kw})


def pair(h=16, w=16, seed=0):
    """An HR image and a reference that matches it on the left and differs on the right."""
    hr = synthetic_image(h, w, seed=seed)
    ref = hr.clone()
    ref[..., w // 2 :] = synthetic_image(h, w, seed=seed + 7).flip(-1)[..., w // 2 :]
    return hr, ref


@pytest.mark.parametrize("name,paper", [("refscale-x2", 2.8e6), ("refscale-x4", 3.5e6)])
def test_parameter_count_near_paper(name, paper):
    model = zoo.build(name)
    n = model.num_parameters()
    print(f"{name}: {n:,} parameters (paper {paper / 1e6:.1f}M)")
    assert abs(n - paper) / paper < 0.02
    assert model.needs_reference and model.stochastic and model.name == name


@pytest.mark.parametrize("scale", [2, 4])
def test_conditional_round_trip_float64(scale):
    model = tiny(scale).double()
    hr, ref = pair(16, 24)
    hr, ref = hr.double(), ref.double()
    model.train()
    model.training_losses(hr, ref)  # ActNorm data-dependent init
    perturb(model, std=0.05)
    model.eval()
    fc, q = model.encoder_side(hr, ref, training=False)
    y = model.flow_forward(hr, fc)
    assert y.shape == (1, 3 * scale**2, 16 // scale, 24 // scale)
    assert (model.flow_inverse(y, fc) - hr).abs().max().item() < 1e-10
    # the condition matters: another condition gives another LR
    y2 = model.flow_forward(hr, fc * 0.5)
    assert (y2 - y).abs().max() > 1e-4


def test_condition_identical_at_encoder_and_decoder():
    model = tiny(2)
    model.train()
    hr, ref = pair(16, 16)
    model.training_losses(hr, ref)
    perturb(model, std=0.05)
    model.eval()
    lr, side = model.downscale(hr, ref)
    fc_enc, q = model.encoder_side(hr, ref, training=False)
    # the receiver gets the map through the container: integer array round trip
    smap = torch.from_numpy(np.ascontiguousarray(side["smap"].numpy()))
    fc_dec = model._decoder_condition(ref, {"smap": smap}, tuple(hr.shape[-2:]), 1)
    assert torch.equal(fc_enc, fc_dec)
    assert torch.equal(q, side["smap"])
    f_ref = model.refnet.encode(ref)
    assert not torch.equal(fc_dec, f_ref)  # S really scales the reference features
    # a different map gives a different condition (the map carries information)
    other = (smap.int() + 1).clamp(max=model.levels_q - 1).to(smap.dtype)
    if torch.equal(other, smap):
        other = (smap.int() - 1).clamp(min=0).to(smap.dtype)
    assert not torch.equal(model._decoder_condition(ref, {"smap": other}, (16, 16), 1), fc_dec)


def test_side_information_shape_dtype_and_alignment():
    hr, ref = pair(16, 32)
    cases = [  # (scale, smap_res, quantize, alignment, side stride, dtype)
        (2, 0.5, True, 4, 4, torch.uint8),
        (2, 1.0, True, 2, 2, torch.uint8),
        (2, 0.25, True, 8, 8, torch.uint8),
        (4, 0.5, True, 4, 4, torch.uint8),
        (4, 0.25, False, 8, 8, torch.int16),
    ]
    for scale, res, quantize, align, stride, dtype in cases:
        model = tiny(scale, smap_res=res, quantize=quantize).eval()
        assert model.alignment == align
        lr, side = model.downscale(hr, ref)
        s = side["smap"]
        assert lr.shape == (1, 3, 16 // scale, 32 // scale)
        assert s.dtype == dtype and s.shape == (1, 1, 16 // stride, 32 // stride)
        assert 16 % s.shape[-2] == 0 and 32 % s.shape[-1] == 0
        assert int(s.min()) >= 0 and int(s.max()) < model.levels_q
        out = model.upscale(lr, side, ref, temperature=0.0)
        assert out.shape == hr.shape


def test_similarity_in_unit_interval_and_quantizer():
    model = tiny(2).train()
    s = torch.rand(2, 1, 4, 4)
    noisy = model.quantize_smap(s, training=True)
    assert noisy.is_floating_point() and (noisy - s * 15).abs().max() <= 0.5
    assert not torch.equal(noisy, torch.round(noisy))
    hard = model.quantize_smap(s, training=False)
    assert hard.dtype == torch.uint8 and torch.equal(hard.float(), torch.round(s * 15))
    assert (model.dequantize_smap(hard) - s).abs().max() <= 0.5 / 15 + 1e-6
    sim = model.refnet.similarity(torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8))
    assert sim.min() >= 0 and sim.max() <= 1 and sim.shape == (1, 1, 4, 4)
    same = torch.randn(1, 8, 8, 8)
    assert torch.allclose(model.refnet.similarity(same, same), torch.ones(1, 1, 4, 4), atol=1e-5)
    off = tiny(2, quantize=False).train()
    assert torch.equal(off.quantize_smap(s, training=True), s * (off.levels_q - 1))


def test_ablation_conditions():
    hr, ref = pair(16, 16)
    none = tiny(2, condition="none").eval()
    assert not none.needs_reference and none.refnet is None and none.alignment == 2
    lr, side = none.downscale(hr)
    assert side == {} and none.upscale(lr, side, temperature=0.0).shape == hr.shape
    assert torch.isfinite(none.train().training_losses(hr)["total"])
    refc = tiny(2, condition="reference").eval()
    lr, side = refc.downscale(hr, ref)
    assert side == {} and refc.upscale(lr, side, ref, temperature=0.0).shape == hr.shape
    assert torch.isfinite(refc.train().training_losses(hr, ref)["total"])
    assert none.num_parameters() < refc.num_parameters() < tiny(2).num_parameters()
    with pytest.raises(ModelError):
        RefScaleNet(2, condition="bogus")
    with pytest.raises(ModelError):
        RefScaleNet(2, smap_res=0.3)


def test_clear_errors():
    model = tiny(2).eval()
    hr, ref = pair(16, 16)
    with pytest.raises(ModelError):
        model.downscale(hr)
    with pytest.raises(InputError):
        model.downscale(hr, ref[..., :8])
    lr, side = model.downscale(hr, ref)
    with pytest.raises(ModelError):
        model.upscale(lr, {}, ref)
    with pytest.raises(ModelError):
        model.upscale(lr, {"smap": side["smap"][..., :2]}, ref)
    with pytest.raises(ModelError):
        model.upscale(lr, side)


def test_seeded_decoding_and_temperature():
    model = tiny(2).train()
    hr, ref = pair(16, 16)
    model.training_losses(hr, ref)
    perturb(model, std=0.02)
    model.eval()
    lr, side = model.downscale(hr, ref)
    up = lambda seed, t=1.0: model.upscale(lr, side, ref, temperature=t, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(up(3), up(3)) and not torch.equal(up(3), up(4))
    assert torch.equal(up(3, 0.0), up(4, 0.0))


def test_losses_finite_and_gradients_reach_all_parameters():
    model = tiny(4).train()
    hr, ref = pair(16, 16)
    hr2, ref2 = pair(16, 16, seed=1)
    hr, ref = torch.cat([hr, hr2]), torch.cat([ref, ref2])
    model.training_losses(hr, ref)  # ActNorm init
    perturb(model, std=0.02)  # zero-initialised last convs otherwise block the gradient of earlier layers at step 0
    losses = model.training_losses(hr, ref)
    assert set(losses) == {"total", "hr_rec", "lr_guide", "z_l2"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert torch.allclose(losses["total"], losses["hr_rec"] + losses["lr_guide"] + losses["z_l2"])
    losses["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert (model.lambda_hr, model.lambda_lr, model.lambda_distr) == (1.0, 16.0, 1.0)
    assert tiny(2).lambda_lr == 4.0


def test_lr_guidance_uses_blur_where_similar():
    """eq. 5: with S = 1 everywhere the target is the blurred bicubic image, with S = 0 the bicubic one."""
    model = tiny(2).train()
    hr, _ = pair(16, 16)
    bic = ops.bicubic_down(hr, 2)
    blur = ops.gaussian_blur(bic, model.blur_sigma)
    assert (bic - blur).abs().max() > 0.01
    ones = torch.ones(1, 1, 4, 4) * (model.levels_q - 1)
    zeros = torch.zeros(1, 1, 4, 4)

    def guide_loss(q):
        model.encoder_side = lambda h, r, training: (model.condition(model.refnet.encode(r), q), q)
        torch.manual_seed(0)
        return model.training_losses(hr, hr)["lr_guide"]

    lr = model.flow_forward(hr, model.condition(model.refnet.encode(hr), ones))[:, :3]
    expected_blur = 4.0 * ((blur - lr) ** 2).sum()
    assert torch.allclose(guide_loss(ones), expected_blur, rtol=1e-4)
    lr0 = model.flow_forward(hr, model.condition(model.refnet.encode(hr), zeros))[:, :3]
    assert torch.allclose(guide_loss(zeros), 4.0 * ((bic - lr0) ** 2).sum(), rtol=1e-4)


def test_weights_round_trip_keeps_actnorm(tmp_path):
    model = zoo.build("refscale-x2", **{"blocks": [2], **TINY}).train()
    hr, ref = pair(16, 16)
    model.training_losses(hr, ref)  # data-dependent init
    path = tmp_path / "refscale-x2-test.safetensors"
    zoo.save_weights(model, path)
    loaded = zoo.load_weights_file(path).train()
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    loaded.training_losses(hr * 0.5, ref * 0.5)  # must not re-initialise ActNorm on new data
    after = loaded.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.weights_hash() == model.weights_hash()


def test_public_api_odd_size():
    pipeline = pytest.importorskip("refscale.pipeline")
    model = tiny(2).eval()
    hr, ref = pair(13, 19)
    packet = pipeline.encode(model, hr, ref)
    out = pipeline.decode(model, packet, ref, seed=0)
    assert out.shape == hr.shape


def test_short_overfit_beats_bicubic_of_own_lr():
    """100 Adam steps on one 16 px pair (reference half equal, half different): decoding
    (z ~ N(0,1)) clearly beats bicubic up-sampling of the model's own 8-bit LR."""
    model = tiny(2, blocks=[8], nf=16, ref_gc=8).train()
    hr, ref = pair(16, 16, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        opt.zero_grad()
        model.training_losses(hr, ref)["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10)
        opt.step()
    model.eval()
    with torch.no_grad():
        lr, side = model.downscale(hr, ref)
        lr = ops.quantize_8bit(lr)
        rebuilt = model.upscale(lr, side, ref, temperature=1.0, generator=torch.Generator().manual_seed(0))
    p_model = metrics.psnr(rebuilt, hr).item()
    p_bicubic = metrics.psnr(ops.bicubic_up(lr, 2).clamp(0, 1), hr).item()
    print(f"RefScale overfit: {p_model:.2f} dB vs bicubic up of its LR {p_bicubic:.2f} dB")
    assert p_model > p_bicubic + 2.0


@pytest.mark.parametrize("inn_block", ["glow", "irn"])
def test_same_condition_at_both_ends_in_fp32_and_bf16(inn_block):
    """The encoder and the decoder build the identical F_c from the reference and the transmitted
    map, in fp32 and under bf16 autocast + channels_last, and the protocol holds in both."""
    model = tiny(2, inn_block=inn_block).eval()
    hr, ref = pair(16, 16)
    for bf16 in (False, True):
        model.set_speed(bf16=bf16, channels_last=bf16)
        with torch.no_grad(), model.speed_context(hr):  # as downscale/upscale run them
            fc, q = model.encoder_side(model.speed_input(hr), model.speed_input(ref), training=False)
            fc_dec = model._decoder_condition(model.speed_input(ref), {"smap": q}, (16, 16), 1)
        assert fc.dtype == (torch.bfloat16 if bf16 else torch.float32)
        assert torch.equal(fc, fc_dec)
        with torch.no_grad():
            lr, side = model.downscale(hr, ref)
            out = model.upscale(lr, side, ref, temperature=0)
        assert torch.equal(side["smap"], q) and out.shape == hr.shape


@pytest.mark.parametrize("scale", [2, 4])
def test_irn_blocks_start_from_the_haar_low_band(scale):
    """inn_block='irn': before training, the LR is the block mean (the Haar low band), as IRN's
    is; the paper's 'glow' blocks (data-dependent ActNorm + random rotation) start far from it."""
    hr, ref = pair(16, 16)
    block_mean = torch.nn.functional.avg_pool2d(hr, scale)
    for kw, close in (({"inn_block": "irn"}, True), ({}, False)):
        model = tiny(scale, **kw).train()
        with torch.no_grad():
            fc, _ = model.encoder_side(hr, ref, training=True)
            y = model.flow_forward(hr, fc)
        assert torch.allclose(y[:, :3], block_mean, atol=1e-6) == close, kw
        assert (model.flow_inverse(y, fc) - hr).abs().max() < 1e-5
    with pytest.raises(ModelError, match="inn_block"):
        tiny(2, inn_block="realnvp")


def test_old_configs_still_load():
    """Weights saved before inn_block existed (no key) or with the removed switches at their old
    defaults (ref_highpass 0, flow_init glow) load strictly into the paper's model; the removed
    switches at any other value are refused with a clear error."""
    model = tiny(2)
    old_config = {k: v for k, v in model.config.items() if k != "inn_block"}
    for extra in ({}, {"ref_highpass": 0.0, "flow_init": "glow"}):
        rebuilt = RefScaleNet(**old_config, **extra)
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        assert rebuilt.config == model.config
    with pytest.raises(ModelError, match="ref_highpass=4.0 was removed"):
        RefScaleNet(**old_config, ref_highpass=4.0)
    with pytest.raises(ModelError, match="flow_init='identity' was removed"):
        RefScaleNet(**old_config, flow_init="identity")
    with pytest.raises(TypeError, match="no_such_key"):
        RefScaleNet(**old_config, no_such_key=1)


def test_irn_block_variant_inverts_and_uses_the_condition():
    model = tiny(4, inn_block="irn").double()
    hr, ref = pair(16, 16)
    hr, ref = hr.double(), ref.double()
    perturb(model, std=0.05)
    model.eval()
    fc, _ = model.encoder_side(hr, ref, training=False)
    y = model.flow_forward(hr, fc)
    assert (model.flow_inverse(y, fc) - hr).abs().max() < 1e-10
    assert (model.flow_forward(hr, fc * 0.5) - y).abs().max() > 1e-4


@pytest.mark.parametrize("scale,blocks", [(2, [2]), (4, [2, 1])])
def test_warm_start_from_irn_reproduces_it_exactly(scale, blocks):
    """inn_block='irn' with IRN's blocks, started from a (perturbed, i.e. 'trained') IRN: until the
    zero-initialised condition weights learn, LR and reconstruction equal the IRN's bit for bit."""
    from refscale.models.irn import IRN

    torch.manual_seed(1)
    irn = IRN(scale, blocks=blocks, gc=8)
    perturb(irn, std=0.05)
    model = tiny(scale, inn_block="irn", blocks=blocks)
    model.warm_start(irn)
    irn.eval(), model.eval()
    hr, ref = pair(16, 16, seed=4)
    with torch.no_grad():
        lr_irn, _ = irn.downscale(hr)
        lr, side = model.downscale(hr, ref)
        assert torch.equal(lr, lr_irn) and "smap" in side
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert torch.equal(model.upscale(lr, side, ref, generator=g1), irn.upscale(lr_irn, generator=g2))
    groups = model.parameter_groups()
    assert set(groups) == {"refnet", "cond", "flow"}
    assert all((p == 0).all() for p in groups["cond"]) and len(groups["cond"]) == 3 * sum(blocks)
    # once the condition weights move, the reference matters
    with torch.no_grad():
        for p in groups["cond"]:
            p.normal_(0, 0.05)
        assert not torch.equal(model.downscale(hr, ref)[0], lr_irn)


def test_warm_start_refuses_what_it_cannot_copy():
    from refscale.models.irn import IRN

    irn = IRN(2, blocks=[2], gc=8)
    with pytest.raises(ModelError, match="inn_block='irn'"):
        tiny(2, blocks=[2]).warm_start(irn)  # the paper's Glow blocks
    with pytest.raises(ModelError, match="must match"):
        tiny(2, inn_block="irn", blocks=[3]).warm_start(irn)
    with pytest.raises(ModelError, match="must match"):
        tiny(2, inn_block="irn", blocks=[2], gc=16).warm_start(irn)


def test_guide_ramp_scales_only_the_eq5_blur_term():
    """configure_training(step, guide_ramp_steps=R): at step 0 eq. 5 is the plain bicubic fit
    (S counts 0), from step R on it is eq. 5 as written; F_c is unchanged throughout."""
    model = tiny(2).train()
    hr, ref = pair(16, 16, seed=2)

    def guide(step):
        model.configure_training(step, guide_ramp_steps=10)
        torch.manual_seed(0)
        return model.training_losses(hr, ref)["lr_guide"].item()

    assert model.guide_strength == 1.0  # default: no ramp
    g0, g5, g10, g20 = guide(0), guide(5), guide(10), guide(20)
    assert model.guide_strength == 1.0 and g10 == g20
    model.guide_strength = 1.0
    with torch.no_grad():
        fc, q = model.encoder_side(hr, ref, training=False)
        lr = model.flow_forward(hr, fc)[:, :3]
        bicubic_fit = model.lambda_lr * ((ops.bicubic_down(hr, 2) - lr) ** 2).sum().item() / hr.shape[0]
    assert g0 == pytest.approx(bicubic_fit, rel=1e-3)
    assert len({round(g, 6) for g in (g0, g5, g10)}) == 3
    with pytest.raises(TypeError):
        model.configure_training(0, no_such_option=1)


def test_foreign_lr_changes_only_the_reconstruction_term():
    """``foreign_lr`` (IRN's, issue 26) in RefScale's training: boxes of bicubic LR in the decoded
    LR change ``hr_rec`` only (the forward pass and its guide terms are the same)."""
    model = tiny(2).train()
    hr, ref = pair(16, 16, seed=2)

    def losses(p):
        model.configure_training(0, foreign_lr=p)
        torch.manual_seed(0)
        return {k: v.item() for k, v in model.training_losses(hr, ref).items()}

    plain, foreign = losses(0.0), losses(1.0)
    assert plain["lr_guide"] == foreign["lr_guide"] and plain["z_l2"] == foreign["z_l2"]
    assert plain["hr_rec"] != foreign["hr_rec"]


def test_pooled_similarity_map(tmp_path):
    """``smap_pool``: the transmitted map is the full map averaged over ``k x k`` cells (then
    quantized), its stride and the alignment grow by ``k``, decoding follows it, and weights of the
    unpooled model load into the pooled one (the same tensors) through ``model.init_weights``."""
    from refscale.train.config import ConfigError
    from refscale.train.engine import _load_init_weights

    hr, ref = pair(32, 32)
    torch.manual_seed(0)
    full = zoo.build("refscale-x2", **{"blocks": [2], **TINY})
    pooled = zoo.build("refscale-x2", **{"blocks": [2], **TINY, "smap_pool": 2, "smap_levels": 8})
    assert pooled.alignment == 8 and pooled.smap_size((32, 32)) == (4, 4)
    with torch.no_grad():
        s = full.refnet.similarity(full.refnet.encode(hr), full.refnet.encode(ref))
    pooled.load_state_dict(full.state_dict())
    lr, side = pooled.eval().downscale(hr, ref)
    expected = torch.round(torch.nn.functional.avg_pool2d(s, 2) * 7).to(torch.uint8)
    assert torch.equal(side["smap"], expected) and int(side["smap"].max()) <= 7
    assert pooled.upscale(lr, side, ref, temperature=0.0).shape == hr.shape
    with pytest.raises(ModelError, match="smap_pool"):
        tiny(2, smap_pool=3)
    path = tmp_path / "full.safetensors"
    zoo.save_weights(full, path)
    fresh = zoo.build("refscale-x2", **{"blocks": [2], **TINY, "smap_pool": 2, "smap_levels": 8})
    torch.nn.init.zeros_(next(fresh.parameters()))
    _load_init_weights(fresh, str(path))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), full.state_dict().values()))
    other = zoo.build("refscale-x2", **{"blocks": [2], **TINY, "clamp": 2.0})  # same tensors, other function
    with pytest.raises(ConfigError, match="init_weights"):
        _load_init_weights(other, str(path))
