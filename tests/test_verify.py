"""The verifying encoder (refscale.pipeline, "Verification"; issue 26): the encoder decodes its own
packet, falls back to bicubic block by block where the model is worse, and records the modes
(format version 5) so that the decoder rebuilds exactly what the encoder checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_image
from test_conformance import CASES, build
from refscale import ops, pipeline, zoo
from refscale.cli import main
from refscale.format.container import Packet, read_header
from refscale.io.image import write_image
from refscale.format.rounding import to_uint8
from refscale.metrics import psnr
from refscale.protocol import Rescaler


def saturated_scene(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """Saturated colour fields (pure red, green, blue, yellow, magenta, cyan) with texture and
    edges: the palette that made the OSCD-trained invertible models paint wrong colours."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.float32)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    field = ((yy // 24) * 5 + (xx // 32)) % len(colours)
    img = colours[field].permute(2, 0, 1) * 0.85 + 0.05
    img = img + 0.08 * torch.rand(3, h, w, generator=g) + 0.05 * torch.sin(xx / 3.0)
    return img.clamp(0, 1).unsqueeze(0)


class HalfWrong(Rescaler):
    """Bicubic, except that the left half of every decoded image has its colour channels rotated:
    a model that is right in some blocks and badly wrong in others (one parameter so it has weights)."""

    arch = "halfwrong"

    def __init__(self, scale: int = 2):
        super().__init__(scale)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def downscale(self, hr, ref=None):
        return ops.bicubic_down(hr, self.scale), {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        out = ops.bicubic_up(lr, self.scale)
        half = out.shape[-1] // 2
        out[..., :half] = out[..., :half].roll(1, dims=1)
        return out


def rgb_psnr(a, b, border):
    return float(psnr(a, b, crop_border=border, y_channel=False)[0])


def bicubic_pipeline(hr, scale, packet=None):
    """The bicubic pipeline; with ``packet``, its LR through the packet's codec at its quality (what
    the verifying encoder compares with: the learned inter decoders' default codec is lossy)."""
    lr = to_uint8(ops.bicubic_down(hr, scale))
    if packet is not None:
        lr = torch.from_numpy(pipeline._as_received(packet, lr[0].permute(1, 2, 0).contiguous().numpy())).permute(2, 0, 1)[None]
    return ops.bicubic_up(lr.float() / 255, scale).clamp(0, 1)


VERIFIED = [c for c in CASES if pipeline.verifiable(zoo.build(CASES[c][0], **CASES[c][1]))]


def tiny(case):
    return build(case)


@pytest.mark.parametrize("name", VERIFIED)
def test_a_saturated_scene_is_never_worse_than_bicubic_with_verification(name):
    """Every architecture of the catalogue, untrained (the worst case), through the verifying
    encoder: the decoded image is not below the bicubic pipeline in RGB PSNR; where the model
    alone is below it, blocks fell back."""
    torch.set_num_threads(1)
    model = tiny(name)
    s = model.scale
    h, w = (96, 128) if s <= 4 else (2 * pipeline.verify_block(model),) * 2  # TADM: 2 x 2 blocks
    hr = saturated_scene(h, w)
    ref = saturated_scene(h, w, seed=1) if model.needs_reference else None
    packet = pipeline.encode(model, hr, ref, precision="fp32")
    base = rgb_psnr(bicubic_pipeline(hr, s, packet), hr, s)
    out = pipeline.decode(model, Packet.from_bytes(packet.to_bytes()), ref)
    assert rgb_psnr(out, hr, s) >= base - 0.05
    report = packet.verify_report
    assert report["blocks"] == packet.verification.fallback.size
    assert report["fallback"] == ("bicubic" if s > 1 else "the plain decode")  # what the summary line names
    unchecked = pipeline.decode(model, Packet.from_bytes(pipeline.encode(model, hr, ref, precision="fp32", verify=False).to_bytes()), ref)
    if rgb_psnr(unchecked, hr, s) < base - 0.5:  # what the check protects from
        assert report["fallback_blocks"] >= 1


def test_only_the_wrong_blocks_fall_back_and_the_decoder_rebuilds_what_was_checked():
    torch.set_num_threads(1)
    model = HalfWrong()
    hr = synthetic_image(64, 256, seed=3)
    packet = pipeline.encode(model, hr)
    fb = packet.verification.fallback
    assert fb.shape == (1, 4) and fb.tolist() == [[True, True, False, False]]
    data = packet.to_bytes()
    assert read_header(data).version == 5
    out = pipeline.decode(model, Packet.from_bytes(data))
    # left half: the bicubic fallback, right half: the model (= bicubic here); the whole is bicubic
    assert torch.equal(to_uint8(out), to_uint8(bicubic_pipeline(hr, 2)))
    report = packet.verify_report
    assert report["psnr_rgb"] == pytest.approx(rgb_psnr(out, hr, 0), abs=1e-6)
    assert report["worst_block_psnr_rgb"] >= report["bicubic_there"] - 1e-9


def test_with_a_budget_the_check_is_of_the_quality_that_fits(tmp_path):
    """With a size budget the quality is known only after encoding: the verifying encoder checks
    again at the quality that fits (pipeline.fit_verified), so the report and the fallback map
    are of the file the receiver decodes (before, a lossless check of a lossy file); the same
    through files.encode_file and refscale.evaluate."""
    from refscale import files
    from refscale.data import Sample
    from refscale.evaluate import evaluate

    torch.set_num_threads(1)
    model = HalfWrong()
    hr = synthetic_image(80, 200, seed=4)
    packet = pipeline.encode(model, hr, codec="webp")
    budget = len(packet.to_bytes(quality=40))
    data, checked, quality = pipeline.fit_verified(model, packet, hr, max_bytes=budget, codec="webp")
    assert len(data) <= budget and quality == checked.quality and quality < 100
    out = pipeline.decode(model, Packet.from_bytes(data))
    assert checked.verify_report["psnr_rgb"] == pytest.approx(rgb_psnr(out, hr, 0), abs=1e-6)
    write_image(hr, tmp_path / "hr.png")
    job = files.Job("hr", tmp_path / "hr.png", None, tmp_path / "x.rsc")
    info = files.encode_file(job, model, codec="webp", max_bytes=budget)
    written = Packet.from_bytes((tmp_path / "x.rsc").read_bytes())
    assert len((tmp_path / "x.rsc").read_bytes()) <= budget and written.quality == info["quality"] < 100
    out = pipeline.decode(model, written)
    assert info["verify"]["psnr_rgb"] == pytest.approx(rgb_psnr(out, to_uint8(hr).float() / 255, 0), abs=1e-6)
    result = evaluate(model, [Sample("hr", tmp_path / "hr.png", None)], codec="webp", max_bytes=budget, progress=False)
    assert result["images"][0]["quality"] == info["quality"]


@pytest.mark.parametrize("tile", [0, 64])
def test_tiled_and_lossy_verification_matches_the_decoder(tile):
    """The report is computed from the very pixels the receiver decodes: tiled, and through a
    lossy LR codec at the packet's quality."""
    torch.set_num_threads(1)
    model = HalfWrong()
    hr = synthetic_image(80, 200, seed=4)
    packet = pipeline.encode(model, hr, tile=tile, overlap=8, codec="webp", quality=70)
    out = pipeline.decode(model, Packet.from_bytes(packet.to_bytes()))
    assert packet.verify_report["psnr_rgb"] == pytest.approx(rgb_psnr(out, hr, 0), abs=1e-6)
    assert packet.verification.fallback[:, 0].all() and not packet.verification.fallback[:, -1].any()


def test_seed_and_temperature_recorded_and_another_seed_still_decodes():
    torch.set_num_threads(1)
    model = tiny("irn-x2")
    hr = saturated_scene(64, 64)
    packet = pipeline.encode(model, hr, precision="fp32")
    data = packet.to_bytes()
    back = Packet.from_bytes(data)
    assert back.verification.seed == 0 and back.verification.temperature == model.decode_temperature == 1.0
    default = pipeline.decode(model, back)
    assert torch.equal(default, pipeline.decode(model, Packet.from_bytes(data), seed=0, temperature=1.0))
    other = pipeline.decode(model, Packet.from_bytes(data), seed=5)
    assert other.shape == default.shape


def test_weights_decode_temperature_is_what_encoder_checks_and_decoder_uses(tmp_path):
    """Weights may name their decoding temperature (metadata ``decode_temperature``): it survives
    save/load, the verifying encoder checks and records it, and a plain decode uses it."""
    torch.set_num_threads(1)
    model = tiny("irn-x2")
    model.decode_temperature = 0.0
    path = tmp_path / "irn-t0.safetensors"
    zoo.save_weights(model, path)
    loaded = zoo.load(path)
    assert loaded.decode_temperature == 0.0
    assert zoo.load_weights_file(_saved(tiny("irn-x2"), tmp_path / "plain.safetensors")).decode_temperature == 1.0
    hr = saturated_scene(64, 64)
    data = pipeline.encode(loaded, hr, precision="fp32").to_bytes()
    assert Packet.from_bytes(data).verification.temperature == 0.0
    out = pipeline.decode(loaded, Packet.from_bytes(data))
    assert torch.equal(out, pipeline.decode(loaded, Packet.from_bytes(data), temperature=0.0, seed=3))
    unverified = pipeline.encode(loaded, hr, precision="fp32", verify=False).to_bytes()
    assert torch.equal(pipeline.decode(loaded, Packet.from_bytes(unverified)),
                       pipeline.decode(loaded, Packet.from_bytes(unverified), temperature=0.0))
    assert not torch.equal(pipeline.decode(loaded, Packet.from_bytes(unverified)),
                           pipeline.decode(loaded, Packet.from_bytes(unverified), temperature=1.0))


def _saved(model, path):
    zoo.save_weights(model, path)
    return path


def test_a_bad_decode_temperature_in_the_metadata_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = _saved(tiny("irn-x2"), tmp_path / "w.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(path)), str(path), metadata={**meta, "decode_temperature": "-1"})
    with pytest.raises(zoo.ModelError, match="decode_temperature"):
        zoo.load_weights_file(path)


def test_without_verification_the_file_is_as_before():
    model = HalfWrong()
    hr = synthetic_image(32, 32)
    packet = pipeline.encode(model, hr, verify=False)
    assert packet.verification is None and packet.verify_report is None
    assert read_header(packet.to_bytes()).version == 2


def test_bicubic_and_windowed_scenes_are_not_verified():
    hr = synthetic_image(32, 32)
    assert pipeline.encode(zoo.load("bicubic-x2"), hr).verification is None
    assert not pipeline.verifiable(zoo.load("bicubic-x4")) and pipeline.verifiable(tiny("irn-x2"))


def test_cli_prints_the_check_and_no_verify_skips_it(tmp_path, capsys):
    torch.set_num_threads(1)
    write_image(saturated_scene(48, 64), tmp_path / "hr.png")
    weights = tmp_path / "tiny-irn.safetensors"
    zoo.save_weights(tiny("irn-x2"), weights)
    assert main(["encode", str(tmp_path / "hr.png"), "-m", str(weights), "-o", str(tmp_path / "a.rsc")]) == 0
    out = capsys.readouterr().out
    assert "verified:" in out and "blocks to bicubic" in out
    assert main(["encode", str(tmp_path / "hr.png"), "-m", str(weights), "-o", str(tmp_path / "b.rsc"), "--no-verify"]) == 0
    assert "verified" not in capsys.readouterr().out
    assert main(["decode", str(tmp_path / "a.rsc"), "-m", str(weights), "-o", str(tmp_path / "a.png")]) == 0
    assert "seed 0" in capsys.readouterr().out
    assert np.asarray(Packet.from_bytes((tmp_path / "a.rsc").read_bytes()).verification.fallback).any()


def test_failures_after_the_first_round_take_their_neighbours():
    """From the second round on a failing block brings its 3 x 3 neighbourhood along (failures
    next to a fallback block spread one block a round otherwise: OSCD dubai with fgrn-x2-oscd went
    to bicubic as a whole after 4 rounds, 8 dB RGB lost)."""
    bad = np.zeros((4, 5), bool)
    bad[0, 0] = bad[2, 3] = True
    grown = pipeline._with_neighbours(bad)
    expect = np.zeros((4, 5), bool)
    expect[0:2, 0:2] = True
    expect[1:4, 2:5] = True
    assert (grown == expect).all()
