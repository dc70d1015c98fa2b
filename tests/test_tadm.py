"""TADM end to end on tiny random Stable Diffusion parts built from diffusers configs.

Covers: encode -> container -> decode at 16x and 32x on odd sizes (refscale.pipeline); loading
from a local diffusers-layout folder (save_pretrained -> the same from_pretrained path users take
with SD 2.1-base) and from the environment variable; TADM weights without the base; LoRA
save/load; tiled = untiled when the latent fits one patch, per-patch time steps otherwise; the
three training stages' parameter groups; epsilon and v prediction.
"""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from refscale import pipeline, zoo  # noqa: E402
from refscale.container import Packet  # noqa: E402
from refscale.errors import ModelError  # noqa: E402
from refscale.models.tadm import backbone  # noqa: E402
from conftest import synthetic_image  # noqa: E402

TINY = {
    "unet": {
        "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": [8, 16], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 16,
        "attention_head_dim": 4, "norm_num_groups": 4, "use_linear_projection": True,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 8, 8, 8],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32,
    },
    "scheduler": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon"},
}
SMALL = {"dfrm_nf": 8, "dfrm_blocks": 1, "flow_gc": 8, "tpm_nf": 8, "scheduler_nf": 8, "lambda_pec": 0.0}


def build(scale=16, seed=0, **kw):
    torch.manual_seed(seed)
    args = {"base": TINY, "base_seed": 3, **SMALL, **kw}
    if "sd_path" in kw or kw.get("base", 1) is None:
        args.pop("base")
    return zoo.build(f"tadm-x{scale}", **args).eval()


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A diffusers-layout folder (unet/, vae/, scheduler/, null embedding) holding the tiny base of seed 3."""
    from diffusers import DDPMScheduler

    root = tmp_path_factory.mktemp("tiny-sd")
    parts = backbone.build_random(TINY, seed=3)
    parts.unet.save_pretrained(root / "unet")
    parts.vae.save_pretrained(root / "vae")
    DDPMScheduler(**TINY["scheduler"]).save_pretrained(root / "scheduler")
    save_file({backbone.NULL_EMBEDDING_KEY: parts.null_embedding}, str(root / backbone.NULL_EMBEDDING_FILE))
    return root


def _perturb(params, std=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * std)


# ----------------------------------------------------------------------------- the product path
@pytest.mark.parametrize("scale,precision", [(16, "bf16"), (32, "fp32")])
def test_encode_decode_odd_sizes_through_the_container(scale, precision):
    model = build(scale)
    _perturb(model.dfrm.parameters(), 0.02)  # a DFRM that is not the bicubic start
    hr = synthetic_image(37, 45, seed=1)
    packet = pipeline.encode(model, hr, precision=precision)
    lr_side = -(-48 // scale) if scale == 16 else -(-64 // scale)
    assert packet.lr.shape == (lr_side, lr_side, 3) and packet.side == {}
    assert packet.padded_size == ((48, 48) if scale == 16 else (64, 64))
    data = packet.to_bytes()
    out = pipeline.decode(model, Packet.from_bytes(data))
    assert out.shape == (1, 3, 37, 45) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1 and out.std() > 0
    assert torch.equal(out, pipeline.decode(model, Packet.from_bytes(data)))  # deterministic
    other = Packet.from_bytes(data)
    other = dataclasses.replace(other, lr=255 - other.lr)
    assert not torch.equal(out, pipeline.decode(model, other))  # the LR carries the image
    with pytest.raises(ModelError, match="weights"):
        pipeline.decode(build(scale, seed=1), Packet.from_bytes(data))


def test_from_pretrained_folder_is_the_random_base(sd_folder, monkeypatch, tmp_path):
    random_base = build(16)
    from_folder = build(16, sd_path=str(sd_folder))
    assert from_folder.base_source == str(sd_folder)
    assert from_folder.base_fingerprint() == random_base.base_fingerprint()
    assert from_folder.weights_hash() == random_base.weights_hash()
    assert "sd_path" not in from_folder.config
    lr = torch.rand(1, 3, 3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # equal tensors; oneDNN may round differently for differently aligned memory
        assert torch.allclose(from_folder.upscale(lr), random_base.upscale(lr), atol=1e-5)

    # TADM weights exclude the base and reload through the environment variable, as a user's would
    _perturb(from_folder.tpm.parameters())
    path = tmp_path / "tadm-x16-test.safetensors"
    zoo.save_weights(from_folder, path)
    assert not any(k.startswith(("unet.", "vae.")) and ".lora_" not in k for k in from_folder.state_dict())
    assert "conv_in.weight" in from_folder.unet.state_dict()  # the diffusers parts' own state dicts are whole
    monkeypatch.delenv(backbone.SD_PATH_ENV, raising=False)
    with pytest.raises(ModelError, match=backbone.SD_PATH_ENV):
        zoo.load_weights_file(path)
    monkeypatch.setenv(backbone.SD_PATH_ENV, str(sd_folder))
    loaded = zoo.load_weights_file(path)
    assert loaded.weights_hash() == from_folder.weights_hash()
    with torch.no_grad():
        assert torch.allclose(loaded.upscale(lr), from_folder.upscale(lr), atol=1e-5)


def test_base_folder_errors(sd_folder, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        build(16, sd_path=str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="diffusers-layout"):
        build(16, sd_path=str(tmp_path))
    with pytest.raises(ModelError, match="make_null_embedding"):
        build(16, sd_path=str(sd_folder), null_embedding=str(tmp_path / "none.safetensors"))
    with pytest.raises(ModelError, match="stage"):
        build(16, stage=4)
    with pytest.raises(ModelError, match="scale"):
        build(8)


def test_different_bases_have_different_hashes():
    a, b = build(16), build(16, base_seed=4)
    assert torch.equal(a.dfrm.encoder.tail.weight, b.dfrm.encoder.tail.weight)
    assert a.base_fingerprint() != b.base_fingerprint() and a.weights_hash() != b.weights_hash()


def test_lora_save_load_round_trip(tmp_path):
    model = build(16)
    lora = model.lora_parameters()
    assert lora and all(k.startswith(("unet.", "vae.decoder.")) for k in lora)
    _perturb(lora.values(), 0.1)
    path = tmp_path / "lora.safetensors"
    model.save_lora(path)
    fresh = build(16)
    lr = torch.rand(1, 3, 2, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = fresh.upscale(lr)
        fresh.load_lora(path)
        after = fresh.upscale(lr)
        assert not torch.equal(before, after)
        assert torch.equal(after, model.upscale(lr))
    assert all(torch.equal(p, lora[k]) for k, p in fresh.lora_parameters().items())
    with pytest.raises(ModelError, match="LoRA"):
        build(16, lora_rank=2).load_lora(path)


# ----------------------------------------------------------------------------- tiled inference
def test_tiled_equals_untiled_when_the_latent_fits_one_patch():
    model = build(16)  # default patch 96 / stride 64 latent pixels
    _perturb(model.tpm.parameters(), 0.2)
    z_hat = torch.randn(1, 4, 10, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tiled, tmap = model.enhance(z_hat, return_timesteps=True)
        untiled = model.enhance(z_hat, tile=0)
        z0, t = model.denoise(z_hat)
    assert torch.equal(tiled, untiled) and torch.equal(tiled, z0)
    assert torch.equal(tmap, t.view(1, 1, 1, 1).expand(1, 1, 10, 12))


def test_tiles_get_their_own_time_steps():
    model = build(16, tile_size=4, tile_stride=2, tile_batch=3)
    _perturb(model.tpm.parameters(), 0.05)
    z_hat = torch.randn(2, 4, 10, 12, generator=torch.Generator().manual_seed(4))
    z_hat[..., :5, :] *= 4  # uneven content: the patches see different degradation
    with torch.no_grad():
        z0, tmap = model.enhance(z_hat, return_timesteps=True)
        one = model.enhance(z_hat[1:], tile=4, stride=2)
    assert z0.shape == z_hat.shape and torch.isfinite(z0).all()
    assert tmap.shape == (2, 1, 10, 12) and tmap.min() > 0 and tmap.max() < 999 + 1e-3
    assert tmap[0].max() - tmap[0].min() > 1  # several time steps in one image
    assert torch.allclose(one, z0[1:], atol=1e-5)  # batching samples does not mix them
    assert not torch.allclose(z0, model.enhance(z_hat, tile=0), atol=1e-3)


# ----------------------------------------------------------------------------- training and schedules
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_training_stages_train_the_right_parts(stage):
    model = build(16, stage=stage).train()
    hr = torch.cat([synthetic_image(32, 32, seed=s) for s in range(2)])
    losses = model.training_losses(hr)
    losses["total"].backward()
    has_grad = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())  # noqa: E731
    assert has_grad(model.dfrm) == (stage in (1, 3))
    assert has_grad(model.scheduler) == (stage in (2, 3))  # the zero conv gets a gradient from the start
    assert any(p.grad is not None for p in model.lora_parameters().values()) == (stage in (2, 3))
    assert all(p.grad is None for k, p in model.named_parameters() if k.startswith(("unet.", "vae.")) and ".lora_" not in k)
    assert ("rec" in losses) == (stage in (1, 3)) and ("enh" in losses) == (stage in (2, 3))
    if stage == 2:
        assert 0 < float(losses["t_mean"]) < 999


def test_stage_two_with_perceptual_losses(tmp_path):
    from refscale import perceptual

    torch.manual_seed(0)
    save_file({f"features.{k}": v for k, v in perceptual.vgg16_features().state_dict().items()}, str(tmp_path / "vgg16.safetensors"))
    save_file({f"features.{k}": v for k, v in perceptual.alexnet_features().state_dict().items()}, str(tmp_path / "alexnet.safetensors"))
    save_file({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))},
              str(tmp_path / "lpips_alex.safetensors"))
    save_file({"alpha": torch.rand(1, 1475, 1, 1), "beta": torch.rand(1, 1475, 1, 1)}, str(tmp_path / "dists.safetensors"))
    model = build(16, stage=2, lambda_pec=0.5, lpips_net="alex", perceptual_dir=str(tmp_path)).train()
    losses = model.training_losses(synthetic_image(32, 32))
    assert torch.allclose(losses["enh"], losses["l1"] + 0.5 * (losses["lpips"] + losses["dists"]))
    losses["total"].backward()
    assert "perceptual_dir" not in model.config
    assert all(not k.startswith("_perceptual") for k in model.state_dict())
    no_weights = build(16, stage=2, lambda_pec=1.0, perceptual_dir=str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="cannot be downloaded"):
        no_weights.training_losses(synthetic_image(32, 32))


def test_init_weights_continue_a_previous_stage(tmp_path):
    stage1 = build(16, stage=1)
    _perturb(stage1.dfrm.parameters(), 0.02)
    path = tmp_path / "tadm-x16-stage1.safetensors"
    zoo.save_weights(stage1, path)
    stage2 = build(16, stage=2, init_weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(stage1.dfrm.state_dict().values(), stage2.dfrm.state_dict().values()))
    assert "init_weights" not in stage2.config and stage2.config["stage"] == 2
    with pytest.raises(ModelError, match="does not fit"):
        build(16, stage=2, dfrm_nf=16, init_weights=str(path))


def test_v_prediction_base():
    tiny_v = json.loads(json.dumps(TINY))
    tiny_v["scheduler"]["prediction_type"] = "v_prediction"
    model = build(16, base=tiny_v)
    assert model.scheduler.prediction_type == "v_prediction"
    z_hat = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z0, t = model.denoise(z_hat)
        v = model.unet(z_hat, t, encoder_hidden_states=model.null_embedding).sample
    a = model.scheduler.alphas_cumprod[t.round().long()].float()
    assert torch.allclose(z0, a.sqrt() * z_hat - (1 - a).sqrt() * v, atol=1e-5)


def test_evaluate_runs_on_tadm(tmp_path):
    from PIL import Image

    from refscale.data import discover
    from refscale.evaluate import evaluate

    arr = (synthetic_image(64, 80, seed=2)[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(arr).save(tmp_path / "scene.png")
    result = evaluate(build(16), discover(tmp_path), progress=False)
    row = result["images"][0]
    assert result["model"] == "tadm-x16" and result["scale"] == 16 and result["draws"] == 1
    assert 0 < row["psnr_y"] < 100 and row["bpp"] > 0 and row["bpp_side"] == 0


def test_cli_encode_decode_with_a_weights_file(tmp_path):
    from PIL import Image

    from refscale.cli import main

    weights = tmp_path / "tadm-x32-tiny.safetensors"
    zoo.save_weights(build(32), weights)
    arr = (synthetic_image(50, 70, seed=4)[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    Image.fromarray(arr).save(tmp_path / "in.png")
    assert main(["encode", str(tmp_path / "in.png"), "-m", str(weights), "-o", str(tmp_path / "x.rsc")]) == 0
    assert main(["decode", str(tmp_path / "x.rsc"), "-m", str(weights), "-o", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (70, 50)
