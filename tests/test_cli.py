"""The refscale command line: round trips, batches, and every error path (exit 2, one line, no traceback)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch

from conftest import synthetic_image
from refscale import zoo
from refscale.cli import main
from refscale.container import Packet
from refscale.imageio import write_image
from test_pipeline import ToyRef, pair


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path):
    """hr.png / ref.png (40x48), a smaller reference, and a toy reference model saved as weights."""
    hr, ref = pair(40, 48)
    write_image(hr, tmp_path / "hr.png")
    write_image(ref, tmp_path / "ref.png")
    write_image(ref[..., :36, :], tmp_path / "ref_small.png")
    zoo.save_weights(ToyRef(), tmp_path / "toyref.safetensors")
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, *words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refscale: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ----------------------------------------------------------------------------- happy paths
def test_encode_info_decode_round_trip(files, capsys):
    inputs = {p: digest(p) for p in (files / "hr.png", files / "ref.png")}
    w = files / "toyref.safetensors"
    code, out, err = run(capsys, "encode", files / "hr.png", "--ref", files / "ref.png", "-m", w, "-o", files / "x.rsc",
                         "--lr-out", files / "lr.png")
    assert code == 0, err
    assert "bpp" in out and (files / "x.rsc").is_file()
    data = (files / "x.rsc").read_bytes()
    packet = Packet.from_bytes(data)
    assert np.array_equal(np.asarray(Image.open(files / "lr.png").convert("RGB")), packet.lr)

    code, out, err = run(capsys, "info", files / "x.rsc")
    info = json.loads(out)
    assert code == 0 and info["model"] == "toyref" and info["size"] == [40, 48] and info["bytes"] == len(data)
    assert info["bpp"] == pytest.approx(len(data) * 8 / (40 * 48)) and info["sections"]["side"] > 0

    code, out, err = run(capsys, "decode", files / "x.rsc", "--ref", files / "ref.png", "-m", w, "-o", files / "out.png", "--seed", "3")
    assert code == 0, err
    api = ToyRef().decode(packet, files / "ref.png", seed=3)
    from refscale.metrics import to_uint8

    assert np.array_equal(np.asarray(Image.open(files / "out.png")), to_uint8(api)[0].permute(1, 2, 0).numpy())
    assert {p: digest(p) for p in inputs} == inputs  # inputs never touched
    assert not list(files.glob(".*tmp"))  # no temporary files left


def test_bicubic_with_codec_quality_and_tile(files, capsys):
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "--codec", "webp", "-q", "70", "--tile", "16",
                       "-o", files / "b.rsc")
    assert code == 0, err
    info = Packet.from_bytes((files / "b.rsc").read_bytes())
    assert info.codec == "webp" and info.quality == 70 and info.tiles == {"tile": 16, "overlap": 16}
    code, _, err = run(capsys, "decode", files / "b.rsc", "-o", files / "b.png")  # model from the container
    assert code == 0, err
    assert Image.open(files / "b.png").size == (48, 40)


def test_ref_is_ignored_with_a_warning_for_models_without_reference(files, capsys):
    code, _, err = run(capsys, "encode", files / "hr.png", "--ref", files / "ref.png", "-m", "bicubic-x2", "-o", files / "b.rsc")
    assert code == 0 and err.strip() == "refscale: warning: model bicubic-x2 takes no reference; --ref ignored"


def test_greyscale_input_warns_in_one_line(files, capsys):
    Image.open(files / "hr.png").convert("L").save(files / "grey.png")
    code, _, err = run(capsys, "encode", files / "grey.png", "-m", "bicubic-x2", "-o", files / "g.rsc")
    assert code == 0 and "refscale: warning: grey.png is greyscale; converted to RGB" in err and "Warning" not in err


def test_jpeg_without_quality_records_the_quality_used(files, capsys):
    """Issue 26, item 5.6: --codec jpeg without -q recorded quality null; it is JPEG's default, 95."""
    from refscale.codecs import JPEG_DEFAULT_QUALITY

    code, out, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "--codec", "jpeg", "-o", files / "j.rsc")
    assert code == 0 and f"jpeg q{JPEG_DEFAULT_QUALITY}" in out, err
    code, out, _ = run(capsys, "info", files / "j.rsc")
    assert code == 0 and json.loads(out)["quality"] == JPEG_DEFAULT_QUALITY
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "--codec", "webp", "-o", files / "w.rsc")[0] == 0
    assert json.loads(run(capsys, "info", files / "w.rsc")[1])["quality"] is None  # a lossless default stays "default"


def test_force_overwrites_and_output_folder(files, capsys):
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "b.rsc")[0] == 0
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "b.rsc", "--codec", "jpeg", "--force")
    assert code == 0 and Packet.from_bytes((files / "b.rsc").read_bytes()).codec == "jpeg"
    (files / "outdir").mkdir()
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "outdir")[0] == 0
    assert (files / "outdir" / "hr.rsc").is_file()


def test_batch_folder_encode_and_decode(tmp_path, capsys):
    data = tmp_path / "pairs"
    for i in range(3):
        hr, ref = pair(24, 32, seed=i)
        write_image(hr, data / f"s{i}" / "hr.png")
        write_image(ref, data / f"s{i}" / "ref.png")
    w = tmp_path / "toyref.safetensors"
    zoo.save_weights(ToyRef(), w)
    code, out, err = run(capsys, "encode", data, "-m", w, "-o", tmp_path / "rsc", "--lr-out", tmp_path / "lr")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "rsc").iterdir()) == ["s0.rsc", "s1.rsc", "s2.rsc"]
    assert len(list((tmp_path / "lr").glob("*.png"))) == 3 and "3 of 3 done" in out
    code, out, err = run(capsys, "decode", tmp_path / "rsc", "--ref", data, "-m", w, "-o", tmp_path / "dec")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["s0.png", "s1.png", "s2.png"]
    # a manifest of containers works too
    (tmp_path / "m.csv").write_text("rsc,ref,name\nrsc/s1.rsc,pairs/s1/ref.png,one\n")
    assert run(capsys, "decode", tmp_path / "m.csv", "-m", w, "-o", tmp_path / "dec2")[0] == 0
    assert (tmp_path / "dec2" / "one.png").is_file()


def test_batch_with_a_bad_sample_reports_it_and_finishes_the_rest(tmp_path, capsys):
    folder = tmp_path / "imgs"
    for i in range(2):
        write_image(synthetic_image(16, 16, i), folder / f"a{i}.png")
    (folder / "broken.png").write_bytes(b"this is not a png")
    code, out, err = run(capsys, "encode", folder, "-m", "bicubic-x2", "-o", tmp_path / "out")
    assert code == 2 and "2 of 3 done, 1 failed" in out
    assert err.strip().startswith("refscale: error: broken: cannot read image") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a0.rsc", "a1.rsc"]


def test_models_lists_catalogue_and_codecs(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "bicubic-x2" in out and "codecs: png (available)" in out
    code, out, _ = run(capsys, "models", "--json")
    parsed = json.loads(out)
    assert code == 0 and parsed["codecs"]["png"] is True and any(r["name"] == "bicubic-x4" for r in parsed["models"])


def test_help_reports_codecs(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Codecs available on this machine: png (yes)" in " ".join(out.split())


def test_evaluate_writes_json_and_markdown(tmp_path, capsys):
    data = tmp_path / "pairs"
    for i in range(2):
        hr, ref = pair(24, 24, seed=i)
        write_image(hr, data / f"p{i}" / "hr.png")
        write_image(ref, data / f"p{i}" / "ref.png")
    code, out, err = run(capsys, "evaluate", "--data", data, "-m", "bicubic-x2", "--json", tmp_path / "r.json", "--md", tmp_path / "r.md")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["model"] == "bicubic-x2" and len(result["images"]) == 2 and result["mean"]["bpp"] > 0
    assert "| **mean** |" in (tmp_path / "r.md").read_text()
    code, _, err = run(capsys, "evaluate", "--data", data, "-m", "bicubic-x2", "--json", tmp_path / "r.json")
    assert_refused(code, err, "exists", "--force")
    # --save-lr: the LR images as stored in the containers; they score like the model's own LR
    code, _, err = run(capsys, "evaluate", "--data", data, "-m", "bicubic-x2", "--json", tmp_path / "s.json",
                       "--save-lr", tmp_path / "lr")
    assert code == 0, err
    from refscale import ops
    from refscale.imageio import read_image
    from refscale.metrics import to_uint8
    lr0 = read_image(tmp_path / "lr" / "p0.png")
    expected = to_uint8(ops.bicubic_down(read_image(data / "p0" / "hr.png"), 2)).float() / 255
    assert sorted(p.name for p in (tmp_path / "lr").iterdir()) == ["p0.png", "p1.png"] and torch.equal(lr0, expected)
    code, _, err = run(capsys, "evaluate", "--data", data, "-m", "bicubic-x2", "--json", tmp_path / "t.json",
                       "--save-lr", tmp_path / "lr")
    assert_refused(code, err, "p0.png exists", "--force")
    assert not (tmp_path / "t.json").exists()


def test_save_lr_never_overwrites_the_inputs(tmp_path, capsys):
    data = tmp_path / "singles"
    write_image(synthetic_image(24, 24, seed=1), data / "a.png")
    before = (data / "a.png").read_bytes()
    code, _, err = run(capsys, "evaluate", "--data", data, "-m", "bicubic-x2", "--json", tmp_path / "r.json",
                       "--save-lr", data, "--force")
    assert_refused(code, err, "overwrite the input image")
    assert (data / "a.png").read_bytes() == before and not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------- error paths
def test_missing_input_file(files, capsys):
    code, _, err = run(capsys, "encode", files / "nope.png", "-m", "bicubic-x2", "-o", files / "x.rsc")
    assert_refused(code, err, "not found", "nope.png")
    code, _, err = run(capsys, "decode", files / "nope.rsc", "-o", files / "x.png")
    assert_refused(code, err, "not found")
    code, _, err = run(capsys, "info", files / "nope.rsc")
    assert_refused(code, err, "not found")
    assert not (files / "x.rsc").exists() and not (files / "x.png").exists()


def test_unreadable_image(files, capsys):
    (files / "fake.png").write_text("not an image")
    code, _, err = run(capsys, "encode", files / "fake.png", "-m", "bicubic-x2", "-o", files / "x.rsc")
    assert_refused(code, err, "cannot read image", "fake.png")
    assert not (files / "x.rsc").exists()


def test_wrong_reference_size(files, capsys):
    w = files / "toyref.safetensors"
    code, _, err = run(capsys, "encode", files / "hr.png", "--ref", files / "ref_small.png", "-m", w, "-o", files / "x.rsc")
    assert_refused(code, err, "48x36", "48x40", "--resample-ref")  # width x height
    assert not (files / "x.rsc").exists() and not list(files.glob(".*tmp"))
    code, _, err = run(capsys, "encode", files / "hr.png", "--ref", files / "ref_small.png", "-m", w, "-o", files / "x.rsc",
                       "--resample-ref")
    assert code == 0, err
    code, _, err = run(capsys, "decode", files / "x.rsc", "--ref", files / "ref_small.png", "-m", w, "-o", files / "x.png")
    assert code == 0, err  # the recorded reference is resampled as the encoder did, without the option
    assert (files / "x.png").exists()


def test_reference_missing_for_a_reference_model(files, capsys):
    w = files / "toyref.safetensors"
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", w, "-o", files / "x.rsc")
    assert_refused(code, err, "needs a reference")
    assert run(capsys, "encode", files / "hr.png", "--ref", files / "ref.png", "-m", w, "-o", files / "x.rsc")[0] == 0
    code, _, err = run(capsys, "decode", files / "x.rsc", "-m", w, "-o", files / "x.png")
    assert_refused(code, err, "needs a reference")
    assert not (files / "x.png").exists()


def test_corrupted_container(files, capsys):
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "x.rsc")[0] == 0
    data = bytearray((files / "x.rsc").read_bytes())
    data[len(data) // 2] ^= 0x40
    (files / "bad.rsc").write_bytes(bytes(data))
    code, _, err = run(capsys, "decode", files / "bad.rsc", "-o", files / "x.png")
    assert_refused(code, err, "checksum")
    code, _, err = run(capsys, "info", files / "bad.rsc")
    assert_refused(code, err, "checksum")
    (files / "trunc.rsc").write_bytes(bytes(data[:50]))
    code, _, err = run(capsys, "decode", files / "trunc.rsc", "-o", files / "x.png")
    assert_refused(code, err, "truncated")
    code, _, err = run(capsys, "decode", files / "hr.png", "-o", files / "x.png")
    assert_refused(code, err, "PNG image, not a .rsc")
    assert not (files / "x.png").exists()


def test_existing_output_without_force(files, capsys):
    (files / "x.rsc").write_bytes(b"precious")
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "x.rsc")
    assert_refused(code, err, "exists", "--force")
    assert (files / "x.rsc").read_bytes() == b"precious"
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "y.rsc")[0] == 0
    (files / "y.png").write_bytes(b"precious")
    code, _, err = run(capsys, "decode", files / "y.rsc", "-o", files / "y.png")
    assert_refused(code, err, "exists")
    assert (files / "y.png").read_bytes() == b"precious"
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "z.rsc", "--lr-out", files / "y.png")
    assert_refused(code, err, "y.png exists")
    assert not (files / "z.rsc").exists()  # checked before any work


def test_output_may_not_be_an_input_even_with_force(files, capsys):
    before = digest(files / "hr.png")
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "hr.png", "--force")
    assert_refused(code, err, "one of the inputs")
    assert digest(files / "hr.png") == before


def test_model_mismatch_and_override(files, capsys):
    assert run(capsys, "encode", files / "hr.png", "--ref", files / "ref.png", "-m", files / "toyref.safetensors", "-o", files / "x.rsc")[0] == 0
    other = ToyRef()
    other.mix.data.fill_(0.25)
    zoo.save_weights(other, files / "toyref2.safetensors")
    code, _, err = run(capsys, "decode", files / "x.rsc", "--ref", files / "ref.png", "-m", files / "toyref2.safetensors", "-o", files / "x.png")
    assert_refused(code, err, "made by toyref", "toyref2", "--allow-mismatch")
    code, _, err = run(capsys, "decode", files / "x.rsc", "--ref", files / "ref.png", "-m", files / "toyref2.safetensors",
                       "-o", files / "x.png", "--allow-mismatch")
    assert code == 0, err
    # the recorded model name is not in the catalogue: a hint to pass -m
    code, _, err = run(capsys, "decode", files / "x.rsc", "--ref", files / "ref.png", "-o", files / "y.png")
    assert_refused(code, err, "toyref", "-m")


def test_usage_errors(files, capsys):
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "x.rsc", "--codec", "gif")
    assert_refused(code, err, "unknown codec")
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "x.rsc", "-q", "80")
    assert_refused(code, err, "png is lossless")
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "no-such-model", "-o", files / "x.rsc")
    assert_refused(code, err, "unknown model")
    code, _, err = run(capsys, "train", files / "missing.yaml")
    assert_refused(code, err, "not found")
    assert run(capsys, "encode")[0] == 2  # argparse usage error
    assert run(capsys, "frobnicate")[0] == 2


def test_subprocess_exit_code_and_no_traceback(files):
    """The installed entry point: exit 0 on success; 2 with one line and no traceback on a bad file."""
    cmd = [sys.executable, "-m", "refscale.cli"]
    ok = subprocess.run(cmd + ["encode", str(files / "hr.png"), "-m", "bicubic-x2", "-o", str(files / "s.rsc")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    (files / "bad.rsc").write_bytes((files / "s.rsc").read_bytes()[:-10])
    bad = subprocess.run(cmd + ["decode", str(files / "bad.rsc"), "-o", str(files / "s.png")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("refscale: error: file truncated")
    assert not (files / "s.png").exists()


def test_16bit_input_is_handled(files, capsys):
    """A 16-bit PNG is not silently reduced to 8 bits (issue 16): it is mapped into the model's
    domain with a recorded per-band mapping (format version 3) and decodes to 16 bits."""
    arr = (np.asarray(Image.open(files / "hr.png")).astype(np.uint16) * 257)
    import imagecodecs

    (files / "hr16.png").write_bytes(imagecodecs.png_encode(arr))
    code, out, err = run(capsys, "encode", files / "hr16.png", "-m", "bicubic-x2", "-o", files / "a.rsc")
    assert code == 0, err
    assert "uint16" in out and "mapped j0,100" in out
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "b.rsc")[0] == 0
    a, b = (Packet.from_bytes((files / n).read_bytes()) for n in ("a.rsc", "b.rsc"))
    assert a.raster.dtype == "uint16" and a.version == 3 and b.raster is None and b.version == 2
    assert run(capsys, "decode", files / "a.rsc", "-o", files / "a16.png")[0] == 0
    assert imagecodecs.png_decode((files / "a16.png").read_bytes()).dtype == np.uint16


def test_rgba_input_warns_and_encodes(files, capsys):
    Image.open(files / "hr.png").convert("RGBA").save(files / "rgba.png")
    code, _, err = run(capsys, "encode", files / "rgba.png", "-m", "bicubic-x2", "-o", files / "a.rsc")
    assert code == 0 and "refscale: warning: rgba.png has an alpha channel; dropped" in err


def test_decompression_bomb_guard_stays_on(files, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x48 > 2 * 100: Pillow refuses it as a bomb
    code, _, err = run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "a.rsc")
    assert_refused(code, err, "too large")
    assert not (files / "a.rsc").exists()


def test_decode_refuses_another_reference(files, capsys):
    """The container records the reference's fingerprint: another reference is refused (exit 2,
    one line, no output file), --allow-other-reference decodes with a warning, and a container
    written before fingerprints existed (format version 1) decodes with a note."""
    from test_container import as_version_1

    w = files / "toyref.safetensors"
    assert run(capsys, "encode", files / "hr.png", "--ref", files / "ref.png", "-m", w, "-o", files / "x.rsc", "--no-verify")[0] == 0
    assert Packet.from_bytes((files / "x.rsc").read_bytes()).ref_hash is not None
    other = files / "other.png"
    write_image(synthetic_image(40, 48, seed=11), other)
    code, _, err = run(capsys, "decode", files / "x.rsc", "--ref", other, "-m", w, "-o", files / "out.png")
    assert_refused(code, err, "not the one this image was encoded with", "--allow-other-reference")
    assert not (files / "out.png").exists()
    code, out, err = run(capsys, "decode", files / "x.rsc", "--ref", other, "-m", w, "-o", files / "out.png",
                         "--allow-other-reference")
    assert code == 0 and (files / "out.png").is_file() and "refscale: warning: the reference is not the one" in err
    code, _, err = run(capsys, "decode", files / "x.rsc", "--ref", files / "ref.png", "-m", w, "-o", files / "same.png")
    assert code == 0 and "warning" not in err
    (files / "v1.rsc").write_bytes(as_version_1((files / "x.rsc").read_bytes()))
    code, _, err = run(capsys, "decode", files / "v1.rsc", "--ref", other, "-m", w, "-o", files / "v1.png")
    assert code == 0 and "no reference fingerprint" in err and (files / "v1.png").is_file()
    info = json.loads(run(capsys, "info", files / "v1.rsc")[1])
    assert info["format_version"] == 1 and info["reference_fingerprint"] is None


def test_an_image_of_a_few_pixels_with_a_reference_model(tmp_path, capsys):
    """Issue 26, item 5.1: refscale-x2 on a 3x3 image: encoded unregistered (one warning line), decoded."""
    hr = synthetic_image(3, 3, seed=1)
    write_image(hr, tmp_path / "hr.png")
    write_image((hr * 0.9 + 0.05).clamp(0, 1), tmp_path / "ref.png")
    code, _, err = run(capsys, "encode", tmp_path / "hr.png", "--ref", tmp_path / "ref.png", "-m", "refscale-x2",
                       "-o", tmp_path / "x.rsc")
    assert code == 0, err
    assert err.strip().splitlines() == [line for line in err.strip().splitlines() if line.startswith("refscale: warning: ")]
    assert "too small" in err and "Traceback" not in err
    code, _, err = run(capsys, "decode", tmp_path / "x.rsc", "--ref", tmp_path / "ref.png", "-o", tmp_path / "out.png")
    assert code == 0, err
    assert Image.open(tmp_path / "out.png").size == (3, 3)


def _no_work(monkeypatch):
    """Make encoding or decoding fail loudly (not a RefScaleError): an output refused before the work never gets there."""
    from refscale import pipeline

    def boom(*a, **k):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(pipeline, "encode", boom)
    monkeypatch.setattr(pipeline, "decode", boom)


def test_an_unwritable_output_is_refused_before_the_work(files, capsys, monkeypatch):
    """Issue 26, item 5.2: an output whose folder is a regular file (unwritable even for root), or
    where no file can be created, is refused in one line before encoding or decoding, for one
    file, a batch, and the API under them; evaluate, export and wrap check their outputs too."""
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "ok.rsc")[0] == 0
    (files / "plain").write_text("a file, not a folder")
    (files / "batch").mkdir()
    write_image(synthetic_image(16, 16, 0), files / "batch" / "a.png")
    _no_work(monkeypatch)
    bad = files / "plain" / "sub"
    for argv in (("encode", files / "hr.png", "-m", "bicubic-x2", "-o", bad / "x.rsc"),
                 ("encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "y.rsc", "--lr-out", bad / "lr.png"),
                 ("encode", files / "batch", "-m", "bicubic-x2", "-o", files / "plain"),
                 ("decode", files / "ok.rsc", "-o", bad / "x.png"),
                 ("decode", files / "ok.rsc", "-o", files / "plain" / "x.png"),
                 ("evaluate", "--data", files / "batch", "-m", "bicubic-x2", "--json", bad / "r.json"),
                 ("export", "-m", "bicubic-x2", "--part", "encoder", "-o", bad / "x.onnx"),
                 ("wrap", files / "lr.npy", "--onnx", files / "x.onnx", "-o", bad / "x.rsc")):
        code, _, err = run(capsys, *argv)
        if argv[0] == "export" and "refscale[onnx]" in err:
            continue  # the onnx extra is missing: refused for that first
        assert_refused(code, err, "cannot write", "plain is not a folder")
    assert not (files / "y.rsc").exists()
    import refscale.files as files_api
    from refscale.errors import InputError

    with pytest.raises(InputError, match="not a folder"):
        files_api.decode_to_file(files / "ok.rsc", bad / "x.png")
    job = files_api.Job("hr", files / "hr.png", None, bad / "x.rsc")
    with pytest.raises(InputError, match="not a folder"):
        files_api.encode_file(job, zoo.load("bicubic-x2"))
    # a folder where no file can be created (permissions, read-only file system): simulated, as root writes anyway
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    code, _, err = run(capsys, "decode", files / "ok.rsc", "-o", files / "new" / "x.png")
    assert_refused(code, err, "cannot write", "Permission denied")
    assert not (files / "new").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_refused_before_decoding(files, capsys, monkeypatch):
    assert run(capsys, "encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "ok.rsc")[0] == 0
    (files / "ro").mkdir()
    (files / "ro").chmod(0o555)
    try:
        _no_work(monkeypatch)
        for argv in (("decode", files / "ok.rsc", "-o", files / "ro" / "x.png"),
                     ("encode", files / "hr.png", "-m", "bicubic-x2", "-o", files / "ro" / "x.rsc")):
            code, _, err = run(capsys, *argv)
            assert_refused(code, err, "cannot write", "Permission denied")
    finally:
        (files / "ro").chmod(0o755)
