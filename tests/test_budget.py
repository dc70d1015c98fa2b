"""Encoding to a size budget (issue 15, item 2): ``Packet.fit`` / ``to_bytes(max_bytes=)``,
``refscale encode --bpp/--bytes``, ``evaluate(bpp=)``. Synthetic images only."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import synthetic_image
from refscale import zoo
from refscale.format import codecs
from refscale.format.codecs import check_budget
from refscale.format.container import Packet, bytes_for_bpp, read_header
from refscale.errors import InputError
from refscale.io.image import write_image
from test_cli import assert_refused, run

torch.set_num_threads(1)

#: codecs with a quality knob that this machine can run
KNOB_CODECS = [c for c in ("webp", "jpeg", "avif", "jxl", "j2k") if codecs.available_codecs()[c]]


@pytest.fixture(scope="module")
def packet():
    return zoo.load("bicubic-x2").encode(synthetic_image(96, 128, seed=3))


@pytest.mark.parametrize("codec", KNOB_CODECS)
def test_fit_hits_the_budget_for_every_codec_with_a_quality(packet, codec):
    lowest, best = len(packet.to_bytes(codec, 1)), len(packet.to_bytes(codec, 100))
    assert lowest < best
    budget = (lowest + best) // 2
    data, q = packet.fit(codec, budget)
    assert len(data) <= budget and 1 <= q < 100
    assert len(packet.to_bytes(codec, q + 1)) > budget  # the next quality up does not fit
    assert data == packet.to_bytes(codec, q)  # the same file as asking for that quality
    assert read_header(data).quality == q and Packet.from_bytes(data).codec == codec
    assert packet.to_bytes(codec, max_bytes=budget) == data
    # a budget above the best quality takes the best quality
    assert packet.fit(codec, best + 10) == (packet.to_bytes(codec, 100), 100)


def test_fit_codes_the_best_quality_only_when_the_one_below_fits(packet, monkeypatch):
    """Quality 100 is the slowest code (near-lossless): a budget it cannot meet never codes it."""
    coded = []
    real = Packet._lr_bitstream

    def spy(self, codec, quality):
        coded.append(quality)
        return real(self, codec, quality)

    monkeypatch.setattr(Packet, "_lr_bitstream", spy)
    budget = (len(packet.to_bytes("jpeg", 1)) + len(packet.to_bytes("jpeg", 80))) // 2
    coded.clear()
    _, q = packet.fit("jpeg", budget)
    assert q < 99 and 100 not in coded and len(coded) <= 9


@pytest.mark.parametrize("codec", KNOB_CODECS + ["png"])
def test_an_impossible_budget_is_a_clear_error(packet, codec):
    with pytest.raises(InputError, match=r"needs [\d,]+ bytes .* > the budget of 50 bytes"):
        packet.fit(codec, 50)


def test_png_has_no_knob_but_fits_when_large_enough(packet):
    lossless = packet.to_bytes("png")
    assert packet.fit("png", len(lossless)) == (lossless, None)


def test_budget_arguments_are_checked():
    assert bytes_for_bpp(0.5, (100, 80)) == 500
    assert bytes_for_bpp(0.1234, (10, 10)) == 1  # rounded down, never over the budget
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InputError, match="positive"):
            bytes_for_bpp(bad, (10, 10))
    with pytest.raises(InputError, match="not a quality and a bpp budget"):
        check_budget(50, 0.2, None)
    with pytest.raises(InputError, match="positive integer"):
        check_budget(None, None, 0)


def test_cli_encode_to_a_bpp_budget_and_refusals(tmp_path, capsys):
    write_image(synthetic_image(96, 128, seed=3), tmp_path / "hr.png")
    code, out, err = run(capsys, "encode", tmp_path / "hr.png", "-m", "bicubic-x2", "--codec", "webp", "--bpp", "0.5",
                         "-o", tmp_path / "a.rsc")
    assert code == 0, err
    data = (tmp_path / "a.rsc").read_bytes()
    assert len(data) * 8 / (96 * 128) <= 0.5 and f"{len(data) * 8 / (96 * 128):.4f} bpp" in out
    assert f"webp q{read_header(data).quality})" in out
    code, out, err = run(capsys, "encode", tmp_path / "hr.png", "-m", "bicubic-x2", "--codec", "webp", "--bytes", "700",
                         "-o", tmp_path / "b.rsc")
    assert code == 0, err
    assert len((tmp_path / "b.rsc").read_bytes()) <= 700
    code, _, err = run(capsys, "encode", tmp_path / "hr.png", "-m", "bicubic-x2", "--codec", "webp", "--bpp", "0.001",
                       "-o", tmp_path / "c.rsc")
    assert_refused(code, err, "quality 1 needs", "budget")
    assert not (tmp_path / "c.rsc").exists()
    code, _, err = run(capsys, "encode", tmp_path / "hr.png", "-m", "bicubic-x2", "--bpp", "-1", "-o", tmp_path / "d.rsc")
    assert_refused(code, err, "positive")
    code, _, err = run(capsys, "encode", tmp_path / "hr.png", "-m", "bicubic-x2", "-q", "50", "--bpp", "1", "-o", tmp_path / "e.rsc")
    assert code == 2 and "not allowed with" in err  # argparse: one of -q / --bpp / --bytes


def test_evaluate_at_equal_rate(tmp_path, capsys):
    data = tmp_path / "set"
    for i in range(2):
        write_image(synthetic_image(128, 160, seed=i), data / f"im{i}.png")
    code, _, err = run(capsys, "evaluate", "--data", data, "-m", "bicubic-x2", "--codec", "jpeg", "--bpp", "0.8",
                       "--json", tmp_path / "r.json")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["budget"] == {"bpp": 0.8} and result["codec"] == "jpeg"
    assert all(r["bpp"] <= 0.8 and 1 <= r["quality"] <= 100 for r in result["images"])


def test_evaluate_rows_record_the_quality_really_used(tmp_path):
    from refscale.data import discover
    from refscale.evaluate import evaluate

    write_image(synthetic_image(64, 80, seed=1), tmp_path / "a.png")
    rows = evaluate(zoo.load("bicubic-x2"), discover(tmp_path), codec="jpeg", progress=False)["images"]
    assert rows[0]["quality"] == codecs.JPEG_DEFAULT_QUALITY  # not None: JPEG has no lossless default
    rows = evaluate(zoo.load("bicubic-x2"), discover(tmp_path), codec="png", progress=False)["images"]
    assert rows[0]["quality"] is None  # lossless


def test_evaluate_leaves_out_an_image_over_the_budget_and_says_so(tmp_path):
    from refscale.data import discover
    from refscale.evaluate import evaluate, to_markdown

    model = zoo.load("bicubic-x2")
    small, large = synthetic_image(64, 80, seed=1), synthetic_image(256, 320, seed=2)
    write_image(small, tmp_path / "a_small.png")
    write_image(large, tmp_path / "b_large.png")
    least = [len(model.encode(im).to_bytes("jpeg", 1)) for im in (small, large)]
    assert least[0] < least[1]
    with pytest.warns(UserWarning, match="b_large"):
        result = evaluate(model, discover(tmp_path), codec="jpeg", max_bytes=sum(least) // 2, progress=False)
    assert [r["name"] for r in result["images"]] == ["a_small"]
    assert [r["name"] for r in result["over_budget"]] == ["b_large"]
    assert result["mean"]["bpp"] == result["images"][0]["bpp"]
    assert "b_large" in to_markdown(result)
    with pytest.raises(InputError, match="no image fits"), pytest.warns(UserWarning):
        evaluate(model, discover(tmp_path), codec="jpeg", max_bytes=least[0] - 1, progress=False)
