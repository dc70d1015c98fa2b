"""Learned decoders on top of the inter codec (issue 27): ``enhance-x1`` / ``enhance-x2``.

The untrained model is the plain codec; the training data carry the codec's decode aligned with
the crops; one engine run trains on them; the CLI round-trips a container. Tiny synthetic images.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import perturb, synthetic_image
from refscale import pipeline, zoo
from refscale.format import codecs
from refscale.cli import main
from refscale.format.container import Packet
from refscale.data import PairCropDataset, Sample, discover
from refscale.errors import InputError, ModelError
from refscale.train import engine

torch.set_num_threads(1)
HEVC = codecs.available_codecs().get("hevc-inter", False)
needs_hevc = pytest.mark.skipif(not HEVC, reason="PyAV with libx265 is not installed")
TINY = {"nf": 8, "blocks": 1}


def pair(h, w):
    hr = synthetic_image(h, w, seed=1)
    ref = (0.6 * hr + 0.4 * synthetic_image(h, w, seed=2)).clamp(0, 1)
    ref[..., : h // 3, : w // 3] = 0.2  # a changed corner
    return torch.round(hr * 255) / 255, torch.round(ref * 255) / 255


def test_default_size_protocol_and_residual():
    for name in ("enhance-x1", "enhance-x2"):
        m = zoo.build(name)
        assert 100_000 <= m.num_parameters() <= 300_000 and m.needs_reference and m.default_codec == "hevc-inter"
        assert not m.stochastic and m.alignment == 2
    m = zoo.build("enhance-x1", **TINY)
    perturb(m, 0.05)
    hr, ref = pair(13, 17)  # odd sizes: padded to the grid inside, cropped back
    lr, side = m.downscale(hr, ref)
    assert torch.equal(lr, hr) and side == {}
    out = m.upscale(lr, side, ref)
    assert out.shape == hr.shape and not torch.equal(out, lr)
    m2 = zoo.build("enhance-x2", **TINY)
    lr2, _ = m2.downscale(hr[..., :12, :16], ref[..., :12, :16])
    assert lr2.shape[-2:] == (6, 8)
    with pytest.raises(ModelError, match="needs a reference"):
        m2.upscale(lr2, {}, None)
    with pytest.raises(ModelError, match="data.coded"):
        m2.training_losses(hr[..., :12, :16], ref[..., :12, :16])
    with pytest.raises(ModelError, match="scale 1 or 2"):
        zoo.build("enhance-x2", scale=4)


def test_untrained_is_the_plain_decode():
    hr, ref = pair(24, 20)
    for name in ("enhance-x1", "enhance-x2"):
        m = zoo.build(name, **TINY).eval()
        lr, _ = m.downscale(hr, ref)
        with torch.no_grad():
            out = m.upscale(lr, {}, ref)
        plain = lr if m.scale == 1 else zoo.build("bicubic-x2").upscale(lr)
        assert torch.equal(out, plain)


@needs_hevc
@pytest.mark.parametrize("name,plain", [("enhance-x1", "inter-hevc"), ("enhance-x2", "bicubic-x2")])
def test_untrained_container_equals_the_plain_codec(name, plain):
    hr, ref = pair(40, 36)
    m, p = zoo.build(name, **TINY).eval(), zoo.build(plain).eval()
    ours = pipeline.encode(m, hr, ref, quality=50, register=False)
    base = pipeline.encode(p, hr, ref, codec="hevc-inter", quality=50, register=False)
    assert ours.codec == "hevc-inter"
    a, b = Packet.from_bytes(ours.to_bytes()), Packet.from_bytes(base.to_bytes())
    assert torch.equal(pipeline.decode(m, a, ref), pipeline.decode(p, b, ref))


def test_context_is_the_receptive_radius():
    """A changed pixel of the decoded LR or of the reference moves the output up to ``context``
    pixels away and no further (and ``context`` is not much more than that)."""
    torch.manual_seed(0)
    for name, cfg in (("enhance-x1", {}), ("enhance-x1", TINY), ("enhance-x2", TINY)):
        m = zoo.build(name, **cfg).eval()
        for p in m.parameters():  # untrained models are the identity: give every layer a say
            torch.nn.init.normal_(p, std=0.05)
        s, n, c = m.scale, 96, 48
        lr, ref = torch.rand(1, 3, n // s, n // s), torch.rand(1, 3, n, n)
        reach = 0
        for moved_lr in (True, False):
            a, b = lr.clone(), ref.clone()
            if moved_lr:
                a[..., c // s, c // s] += 0.5
            else:
                b[..., c, c] += 0.5
            with torch.no_grad():
                d = (m.rebuild(lr, ref) - m.rebuild(a, b)).abs().amax(1)[0]
            rows, cols = torch.nonzero(d > 0, as_tuple=True)
            reach = max(reach, c - rows.min().item(), rows.max().item() - c, c - cols.min().item(), cols.max().item() - c)
        assert m.context - 4 <= reach <= m.context, (name, cfg, reach, m.context)


@needs_hevc
def test_tiled_decode_equals_the_whole_image():
    """The default overlap covers the receptive field (34 px, more than the 16 px of the rescalers'
    default): tiles change nothing (to float rounding); a 16 px overlap would."""
    hr, ref = pair(120, 112)
    torch.manual_seed(0)
    m = zoo.build("enhance-x1").eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)

    def decoded(**tiles):
        packet = pipeline.encode(m, hr, ref, quality=50, register=False, verify=False, precision="fp32", **tiles)
        return packet, pipeline.decode(m, Packet.from_bytes(packet.to_bytes()), ref)

    _, whole = decoded()
    packet, tiled = decoded(tile=48)
    assert packet.tiles["overlap"] >= m.context > 16
    assert (tiled - whole).abs().max() < 1e-5
    _, short = decoded(tile=48, overlap=16)
    assert (short - whole).abs().max() > 1e-4


def write_png(t: torch.Tensor, path):
    Image.fromarray(torch.round(t[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(path)


def box_down(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.round(torch.nn.functional.avg_pool2d(x * 255, k)) / 255 if k > 1 else x


def coded_manifest(tmp_path, k: int, n: int = 3, size=(40, 36)):
    """Pairs whose 'coded' image is a known function of the HR (2x2 box average at k = 2, the
    negative at k = 1), so alignment can be checked exactly; a manifest with the coded column."""
    rows = []
    for i in range(n):
        hr = torch.round(synthetic_image(*size, seed=10 + i) * 255) / 255
        ref = torch.round(synthetic_image(*size, seed=20 + i) * 255) / 255
        coded = box_down(hr, k) if k > 1 else 1 - hr
        for what, t in (("hr", hr), ("ref", ref), ("coded", coded)):
            write_png(t, tmp_path / f"{what}{i}.png")
        rows.append([f"hr{i}.png", f"ref{i}.png", f"pair{i}", "1", f"coded{i}.png", "50", str(k)])
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["hr", "ref", "name", "repeat", "coded", "quality", "scale"])
        w.writerows(rows)
    return path


@pytest.mark.parametrize("k", [1, 2])
def test_dataset_carries_the_coded_image_aligned(tmp_path, k):
    samples = discover(coded_manifest(tmp_path, k))
    assert all(s.coded is not None and s.coded.is_file() for s in samples)
    ds = PairCropDataset(samples, 16, augment=True, scale_multiple=k, seed=1, coded=True)
    for i in range(24):
        item = ds[i % len(ds)]
        assert item["coded"].shape == (3, 16 // k, 16 // k) and item["hr"].shape == (3, 16, 16)
        want = box_down(item["hr"][None], k)[0] if k > 1 else 1 - item["hr"]
        assert (item["coded"] - want).abs().max() < 0.6 / 255  # same place, same flips
    plain = PairCropDataset(samples, 16, seed=1)
    assert "coded" not in plain[0]
    with pytest.raises(InputError, match="both_directions"):
        PairCropDataset(samples, 16, both_directions=True, coded=True)
    with pytest.raises(InputError, match="no coded image"):
        PairCropDataset([Sample("x", samples[0].hr, samples[0].ref)], 16, coded=True)
    if k == 2:
        with pytest.raises(InputError, match="multiple"):
            PairCropDataset(samples, 15, coded=True)


def test_engine_trains_on_coded_images(tmp_path):
    path = coded_manifest(tmp_path, 2, n=3)
    cfg = {
        "seed": 1,
        "model": {"arch": "enhance-x2", "config": TINY},
        "data": {"path": str(path), "split": None, "val_names": ["pair2"], "patch_size": 16, "batch_size": 2,
                 "coded": True},
        "optim": {"lr": 2e-3},
        "schedule": {"steps": 12},
        "checkpoint": {"every_minutes": None, "every_steps": None},
        "val": {"every_steps": 6, "max_images": 1, "crop": 24},
        "log": {"every_steps": 4, "progress": False, "tensorboard": False},
    }
    result = engine.train(cfg, tmp_path / "run")
    assert result["steps"] == 12 and np.isfinite(result["loss"]["total"])
    val = result["val"]
    assert {"psnr_y", "coded_psnr_y", "coded_psnr_rgb"} <= set(val)
    trained = zoo.load_weights_file(result["weights"])
    assert trained.tail.weight.abs().sum() > 0  # the zero-initialised tail moved
    with pytest.raises(Exception, match="no coded image|coded"):  # data.coded on a manifest without the column
        plain = tmp_path / "plain.csv"
        plain.write_text("".join(",".join(line.split(",")[:4]) + "\n" for line in path.read_text().splitlines()))
        engine.train({**cfg, "data": {**cfg["data"], "path": str(plain)}}, tmp_path / "run2")


@needs_hevc
def test_cli_round_trip(tmp_path, capsys):
    hr, ref = pair(40, 36)
    write_png(hr, tmp_path / "hr.png")
    write_png(ref, tmp_path / "ref.png")
    m = zoo.build("enhance-x1", **TINY)
    perturb(m, 0.02)
    w = tmp_path / "enh.safetensors"
    zoo.save_weights(m, w)
    assert main(["encode", str(tmp_path / "hr.png"), "--ref", str(tmp_path / "ref.png"), "-m", str(w), "-q", "50",
                 "-o", str(tmp_path / "s.rsc")]) == 0
    assert main(["decode", str(tmp_path / "s.rsc"), "--ref", str(tmp_path / "ref.png"), "-m", str(w),
                 "-o", str(tmp_path / "out.png")]) == 0
    capsys.readouterr()
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    model = zoo.load_weights_file(w)
    want = pipeline.decode(model, (tmp_path / "s.rsc").read_bytes(), ref)
    assert np.array_equal(out, torch.round(want[0] * 255).to(torch.uint8).permute(1, 2, 0).numpy())
    assert Packet.from_bytes((tmp_path / "s.rsc").read_bytes()).codec == "hevc-inter"


def test_configs_hold_out_every_cached_validation_row():
    """The training configs list every validation row the cache builder writes (an unlisted one
    would be trained on) and the crops fit the model."""
    import importlib.util
    from pathlib import Path

    from refscale.train.config import load_file

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("build_codec_cache", root / "scripts" / "build_codec_cache.py")
    cache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cache)
    for s in (1, 2):
        cfg = load_file(root / "configs" / f"enhance-x{s}-hevc-cpu.yaml")
        model = zoo.build(cfg["model"]["arch"], **cfg["model"]["config"])
        assert cfg["data"]["coded"] and cfg["data"]["patch_size"] % model.alignment == 0
        want = [f"{c}-fwd-q{q}" for c in cache.VAL_CITIES for q in cache.DEFAULT_QUALITIES]
        assert cfg["data"]["val_names"] == want and cfg["val"]["max_images"] == len(want)


def test_avif_decoders_start_from_the_inter_decoders_weights():
    """``enhance-x1-avif`` is ``enhance-x1``'s network after AVIF (issue 27, item 3): it warm-starts
    from the HEVC decoder's weights (the same network; only the codec differs) and refuses others."""
    src = zoo.build("enhance-x1", **TINY)
    torch.nn.init.normal_(src.tail.weight, std=0.01)
    dst = zoo.build("enhance-x1-avif", **TINY)
    assert dst.default_codec == "avif" and dst.needs_reference and dst.scale == 1
    dst.warm_start(src)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    for other in (zoo.build("enhance-x2", **TINY), zoo.build("enhance-x1", nf=8, blocks=2), zoo.build("bicubic-x2")):
        with pytest.raises(ModelError, match="starts only from"):
            dst.warm_start(other)


def test_the_avif_decoders_default_to_a_lossy_avif(tmp_path):
    """Without -q / --codec / a budget an AVIF decoder codes lossy AVIF at its ``default_quality``
    (AVIF's own default is lossless: nothing to restore); a named codec or quality overrides it."""
    from refscale.format import codecs

    m = zoo.build("enhance-x1-avif", **TINY)
    assert m.default_quality == 25 and zoo.build("enhance-x1", **TINY).default_quality is None
    assert codecs.resolve(None, None, m.default_codec, default_quality=m.default_quality) == ("avif", 25)
    assert codecs.resolve(None, 60, m.default_codec, default_quality=m.default_quality) == ("avif", 60)
    assert codecs.resolve("png", None, m.default_codec, default_quality=m.default_quality) == ("png", None)
    assert codecs.resolve(None, None, m.default_codec, bpp=0.5, default_quality=m.default_quality) == ("avif", None)
    if not codecs.available_codecs()["avif"]:
        pytest.skip("no AVIF codec here")
    hr, ref = synthetic_image(32, 32, seed=1), synthetic_image(32, 32, seed=2)
    packet = pipeline.encode(m, hr, ref, verify=False)
    assert (packet.codec, packet.quality) == ("avif", 25)
