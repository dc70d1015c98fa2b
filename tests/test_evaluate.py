import json
import math

import pytest
import torch

from refscale import zoo
from refscale.data import discover
from refscale.errors import RefScaleError
from refscale.evaluate import METRIC_KEYS, evaluate, to_markdown, worst_image
from refscale.io.image import write_image
from refscale.metrics import fraction_off, psnr, ssim
from refscale.protocol import Rescaler
from refscale.ops import bicubic_down, bicubic_up, quantize_8bit
from tests.conftest import synthetic_image

TOP_KEYS = {"model", "scale", "dataset", "split", "draws", "precision", "verify", "temperature", "codec", "budget", "images",
            "over_budget", "mean", "worst"}
IMAGE_KEYS = {"name", "quality", "fallback", "worst_block_gap", "verify_seconds", *METRIC_KEYS}  # docs/design.md's keys, plus the codec settings used


@pytest.fixture
def singles(tmp_path):
    root = tmp_path / "tiny"
    root.mkdir()
    write_image(synthetic_image(24, 32, 1), root / "a.png")
    write_image(synthetic_image(27, 21, 2), root / "b.png")  # not a multiple of the scale
    return root


def test_evaluate_json_schema_and_values(singles):
    model = zoo.load("bicubic-x2")
    result = evaluate(model, discover(singles), draws=3, progress=False)
    assert set(result) == TOP_KEYS
    assert result["model"] == "bicubic-x2" and result["scale"] == 2
    assert result["dataset"] == "tiny" and result["split"] is None
    assert result["draws"] == 1  # deterministic model: one decode is enough
    assert result["precision"] == "fp32"  # bicubic has no fast path
    assert [r["name"] for r in result["images"]] == ["a", "b"]
    for row in result["images"]:
        assert set(row) == IMAGE_KEYS
        assert all(isinstance(row[k], float) for k in METRIC_KEYS)
    assert set(result["mean"]) == set(METRIC_KEYS)
    for k in METRIC_KEYS:
        assert result["mean"][k] == pytest.approx(sum(r[k] for r in result["images"]) / 2)
    json.loads(json.dumps(result))  # plain JSON

    # the numbers are the bicubic-down / 8-bit / bicubic-up metrics on the mod-cropped HR
    from refscale.io.image import read_image

    hr = read_image(singles / "b.png")[..., :26, :20]
    rec = bicubic_up(quantize_8bit(bicubic_down(hr, 2)), 2)
    row = result["images"][1]
    assert row["psnr_y"] == pytest.approx(float(psnr(rec, hr, crop_border=2)[0]), abs=1e-6)
    assert row["ssim_rgb"] == pytest.approx(float(ssim(rec, hr, crop_border=2, y_channel=False)[0]), abs=1e-6)
    assert row["frac_off40"] == pytest.approx(float(fraction_off(rec, hr, crop_border=2)[0]), abs=1e-12)
    assert 0 <= row["frac_off40"] < 1
    worst = min(result["images"], key=lambda r: r["psnr_rgb"])
    assert result["worst"] == {"name": worst["name"], "psnr_rgb": worst["psnr_rgb"], "psnr_y": worst["psnr_y"],
                               "frac_off40": worst["frac_off40"]}
    assert 20 < row["psnr_y"] < 60 and row["psnr_rgb"] != row["psnr_y"]
    # bpp counts every byte of the real container; LR and side are parts of it
    packet = model.encode(hr)
    nbytes = len(packet.to_bytes(codec="png"))
    assert row["bpp"] == pytest.approx(nbytes * 8 / (26 * 20))
    assert 0 < row["bpp_lr"] < row["bpp"] and row["bpp_side"] == 0
    assert row["si_lr"] > 0 and row["seconds"] > 0


def test_to_markdown(singles):
    result = evaluate(zoo.load("bicubic-x2"), discover(singles), progress=False)
    md = to_markdown(result)
    lines = md.strip().splitlines()
    assert "bicubic-x2" in lines[0]
    assert lines[2].startswith("| image | PSNR-Y | SSIM-Y")
    assert lines[4].startswith("| a | ") and lines[5].startswith("| b | ")
    assert "| >40 levels |" in lines[2]
    assert lines[-3].startswith("| **mean** | " + format(result["mean"]["psnr_y"], ".2f"))
    assert lines[-1] == f"Worst image (lowest PSNR-RGB): {result['worst']['name']}, PSNR-RGB {result['worst']['psnr_rgb']:.2f} dB."


def test_worst_image_of_results_written_before_it_was_recorded():
    old = {"images": [{"name": "a", "psnr_y": 30.0, "psnr_rgb": 28.0}, {"name": "b", "psnr_y": 31.0, "psnr_rgb": 25.5}]}
    assert worst_image(old) == {"name": "b", "psnr_rgb": 25.5, "psnr_y": 31.0, "frac_off40": None}
    assert worst_image({"images": [{"name": "a", "psnr_y": 30.0}]}) is None
    assert worst_image({"images": []}) is None
    old["worst"] = {"name": "a"}
    assert worst_image(old) == {"name": "a"}  # the recorded one wins


def test_evaluate_passes_verify_to_the_encoder(singles):
    model = zoo.load("bicubic-x2")
    seen = []

    def encode(hr, ref=None, **kw):
        seen.append(kw["verify"])
        return Rescaler.encode(model, hr, ref, **kw)

    model.encode = encode
    assert evaluate(model, discover(singles), progress=False)["verify"] is True
    assert evaluate(model, discover(singles), progress=False, verify=False)["verify"] is False
    assert seen == [True, True, False, False]


def test_greyscale_file_uses_grey_value_as_y(tmp_path):
    from PIL import Image

    g = torch.round(synthetic_image(24, 24, 3)[0, 0] * 255).to(torch.uint8)
    Image.fromarray(g.numpy(), mode="L").save(tmp_path / "g.png")  # stored greyscale
    write_image(g.float().div(255).expand(1, 3, 24, 24), tmp_path / "rgb.png")  # RGB with R = G = B
    with pytest.warns(UserWarning, match="greyscale"):
        rows = evaluate(zoo.load("bicubic-x2"), discover(tmp_path), progress=False)["images"]
    hr = g.float().div(255).expand(1, 3, 24, 24)
    rec = bicubic_up(quantize_8bit(bicubic_down(hr, 2)), 2)
    on_grey = float(psnr(rec[:, :1], hr[:, :1], crop_border=2, y_channel=False)[0])
    on_y = float(psnr(rec, hr, crop_border=2)[0])
    assert on_y == pytest.approx(on_grey + 20 * math.log10(255 / 219), abs=0.05)
    assert [r["name"] for r in rows] == ["g", "rgb"]
    assert rows[0]["psnr_y"] == pytest.approx(on_grey, abs=1e-6)  # the file is greyscale: Y = grey value
    assert rows[1]["psnr_y"] == pytest.approx(on_y, abs=1e-6)  # an RGB file is converted as usual


class NoisyRef(Rescaler):
    """A stochastic reference model for the test: LR = bicubic(hr - ref), HR = up + ref + noise."""

    arch = "noisyref"
    needs_reference = True
    stochastic = True

    def downscale(self, hr, ref=None):
        self.check_reference(ref)
        return bicubic_down(hr - ref + 0.5, self.scale), {}

    def upscale(self, lr, side=None, ref=None, *, temperature=1.0, generator=None):
        self.check_reference(ref)
        noise = 0.02 * temperature * torch.randn(ref.shape, generator=generator)
        return bicubic_up(lr, self.scale) - 0.5 + ref + noise


def test_draws_average_stochastic_reference_model(tmp_path):
    for i, name in enumerate(["p", "q"]):
        (tmp_path / name).mkdir()
        write_image(synthetic_image(16, 16, i), tmp_path / name / "hr.png")
        write_image(synthetic_image(16, 16, i + 5), tmp_path / name / "ref.png")
    samples = discover(tmp_path)
    model = NoisyRef(scale=2)
    result = evaluate(model, samples, draws=3, progress=False, dataset="pairs", split="test")
    assert result["draws"] == 3 and result["dataset"] == "pairs" and result["split"] == "test"
    from refscale.format.container import Packet
    from refscale.io.image import read_image

    hr, ref = read_image(tmp_path / "p" / "hr.png"), read_image(tmp_path / "p" / "ref.png")
    data = model.encode(hr, ref).to_bytes()
    per_seed = [float(psnr(model.decode(Packet.from_bytes(data), ref, seed=d), hr, crop_border=2)[0]) for d in range(3)]
    assert len(set(per_seed)) == 3  # the seeds really differ
    assert result["images"][0]["psnr_y"] == pytest.approx(sum(per_seed) / 3, abs=1e-9)
    with pytest.raises(RefScaleError):  # a reference model on single images
        write_image(synthetic_image(16, 16), tmp_path / "single.png")
        evaluate(model, discover(tmp_path / "single.png"), progress=False)


def test_evaluate_temperature_reaches_every_decode(tmp_path):
    (tmp_path / "p").mkdir()
    write_image(synthetic_image(16, 16, 0), tmp_path / "p" / "hr.png")
    write_image(synthetic_image(16, 16, 5), tmp_path / "p" / "ref.png")
    samples = discover(tmp_path)
    model = NoisyRef(scale=2)
    from refscale.format.container import Packet
    from refscale.io.image import read_image

    hr, ref = read_image(tmp_path / "p" / "hr.png"), read_image(tmp_path / "p" / "ref.png")
    data = model.encode(hr, ref).to_bytes()
    score = lambda t, d: float(psnr(model.decode(Packet.from_bytes(data), ref, seed=d, temperature=t), hr, crop_border=2)[0])  # noqa: E731
    cold = evaluate(model, samples, draws=3, progress=False, temperature=0.0)
    assert cold["draws"] == 1 and cold["temperature"] == 0.0  # z = 0: one decode says it all
    assert cold["images"][0]["psnr_y"] == pytest.approx(score(0.0, 0), abs=1e-9)
    hot = evaluate(model, samples, draws=2, progress=False, temperature=2.0)
    assert hot["draws"] == 2 and hot["images"][0]["psnr_y"] == pytest.approx((score(2.0, 0) + score(2.0, 1)) / 2, abs=1e-9)
    assert hot["images"][0]["psnr_y"] < cold["images"][0]["psnr_y"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluate_runs_and_records_the_requested_precision(singles, precision):
    torch.manual_seed(0)
    model = zoo.build("irn-x2", blocks=[1], gc=4).eval()
    result = evaluate(model, discover(singles), progress=False, precision=precision, verify=False)
    assert result["precision"] == precision
    seen = []
    original = model.set_speed

    def spy(**kw):
        seen.append(kw.get("bf16"))
        return original(**kw)

    model.set_speed = spy
    evaluate(model, discover(singles), progress=False, precision=precision, verify=False)
    # each encode/decode sets the requested arithmetic, then restores the model's own (fp32)
    assert seen[0::2] == [precision == "bf16"] * (len(seen) // 2) and seen[1::2] == [False] * (len(seen) // 2)
    assert len(seen) == 2 * 2 * 2  # two images, one encode and one decode each


def test_evaluate_refuses_an_unknown_precision(singles):
    with pytest.raises(RefScaleError, match="precision"):
        evaluate(zoo.load("bicubic-x2"), discover(singles), progress=False, precision="fp16")


def test_cli_evaluate_precision(singles, tmp_path):
    from refscale.cli import main

    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(singles), "-m", "bicubic-x2", "--precision", "bf16", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["precision"] == "fp32"  # bicubic has no bf16 path: recorded as run


def test_cli_evaluate_temperature(singles, tmp_path):
    from refscale.cli import main

    out = tmp_path / "r.json"
    assert main(["evaluate", "--data", str(singles), "-m", "bicubic-x2", "--temperature", "0.5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["temperature"] == 0.5


def test_seconds_include_the_search_for_the_quality(singles, monkeypatch):
    """With a budget, ``seconds`` counts the quality search and its checks (what ``refscale
    encode --bpp`` costs), not only the first encode and the decode."""
    import time

    import refscale.evaluate as ev

    real = ev.fit_verified

    def slow_fit(*args, **kw):
        time.sleep(0.3)
        return real(*args, **kw)

    monkeypatch.setattr(ev, "fit_verified", slow_fit)
    result = evaluate(zoo.load("bicubic-x2"), discover(singles), codec="jpeg", bpp=24.0, progress=False)
    assert all(img["seconds"] >= 0.3 for img in result["images"])


def test_change_mask_scores_changed_and_unchanged_pixels(tmp_path):
    """An OSCD city with a change_mask.png: PSNR-Y over its changed and unchanged pixels; a city
    without one has neither, and the mean is over the cities that have one."""
    from PIL import Image

    from refscale.metrics import psnr_y_masked

    for city, seed in (("masked", 5), ("plain", 6)):
        d = tmp_path / "oscd" / city
        d.mkdir(parents=True)
        write_image(synthetic_image(27, 33, seed), d / "img2.png")  # odd: mod-cropped to 26 x 32
        write_image(synthetic_image(27, 33, seed + 10), d / "img1.png")
    mask = torch.zeros(27, 33, dtype=torch.bool)
    mask[3:15, 4:20] = True
    Image.fromarray(mask.numpy().astype("uint8") * 255).save(tmp_path / "oscd" / "masked" / "change_mask.png")
    samples = discover(tmp_path / "oscd")
    assert [s.change_mask is not None for s in samples] == [True, False]
    result = evaluate(zoo.load("bicubic-x2"), samples, progress=False)
    masked, plain = result["images"]
    assert "psnr_y_changed" not in plain
    hr = quantize_8bit(synthetic_image(27, 33, 5)[..., :26, :32])  # as the PNG holds it
    rec = bicubic_up(quantize_8bit(bicubic_down(hr, 2)), 2)
    m = mask[:26, :32]
    assert masked["psnr_y_changed"] == pytest.approx(psnr_y_masked(rec, hr, m, crop_border=2), abs=1e-4)
    assert masked["psnr_y_unchanged"] == pytest.approx(psnr_y_masked(rec, hr, ~m, crop_border=2), abs=1e-4)
    assert masked["psnr_y_changed"] != pytest.approx(masked["psnr_y_unchanged"], abs=0.01)
    assert result["mean"]["psnr_y_changed"] == masked["psnr_y_changed"]
