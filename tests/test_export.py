"""ONNX export (issue 17) on the tiny models of every catalogue architecture.

Tolerances (``export.within_tolerance``): float outputs (LR before rounding, HR) of ONNX Runtime
equal PyTorch's to ``export.TOLERANCE`` = 1e-4 (measured ~1e-6) for all but ``export.MAX_SHARE``
= 1% of the values, none off by a whole 8-bit level (1/255), and at most 1% of the integer
similarity-map levels move, by one level: graphs that round inside (FGRN's 8-bit representation,
RefScale's map) can move a value that float rounding puts on a .5 boundary by one step, and the
convolutions after it spread that. IRN and bicubic (no rounding inside) stay within 1e-4 everywhere.
"""
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import synthetic_image  # noqa: E402
from test_conformance import CASES, build  # noqa: E402
from refscale import cli, export, pipeline, zoo  # noqa: E402
from refscale.container import Packet  # noqa: E402
from refscale.errors import ModelError  # noqa: E402

torch.set_num_threads(1)

SUPPORTED = sorted(c for c in CASES if CASES[c][0].split("-")[0] in ("bicubic", "irn", "refscale", "fgrn"))
UNSUPPORTED = sorted(c for c in CASES if c not in SUPPORTED)


def _within(diff, case=""):
    assert export.within_tolerance(diff), diff
    if case.startswith(("irn", "bicubic")):  # no rounding inside the graph: TOLERANCE everywhere
        assert diff["float"] <= export.TOLERANCE, diff


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (model, {part: path}); exported once per module."""
    root = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(case):
        if case not in cache:
            model = build(case)
            paths = {}
            for part in export.PARTS:
                paths[part] = root / f"{case.replace('/', '_')}-{part}.onnx"
                meta = export.export_onnx(model, part, paths[part])
                _within(meta["check"]["max_abs_diff"], case)
            cache[case] = model, paths
        return cache[case]

    return get


@pytest.mark.parametrize("case", SUPPORTED)
def test_export_matches_pytorch_on_other_sizes(case, exported):
    """Dynamic batch, height and width: a non-square size and a batch of 2, not what was traced."""
    model, paths = exported(case)
    a = model.alignment
    h, w = max(3 * a, 72 // a * a), max(5 * a, 120 // a * a)
    for part in export.PARTS:
        diff = export.check_graph(model, str(paths[part]), part, h, w, batch=2, seed=5)
        _within(diff, case)
    meta = export.read_metadata(paths["encoder"])
    assert meta["model"] == model.name and meta["weights_hash"] == model.weights_hash()
    assert meta["scale"] == model.scale and meta["alignment"] == a and meta["opset"] == export.DEFAULT_OPSET
    assert meta["tile"] == 0 and meta["dynamic_hw"] is True and meta["part"] == "encoder"
    assert meta["container"]["precision"] == "fp32"
    names = [i["name"] for i in meta["inputs"]]
    assert names == (["hr", "ref"] if model.needs_reference else ["hr"])
    dec = [i["name"] for i in export.read_metadata(paths["decoder"])["inputs"]]
    assert dec[0] == "lr" and ("z" in dec) == (model.arch in ("irn", "refscale"))


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_architectures_are_refused(case, tmp_path):
    model = build(case)
    with pytest.raises(ModelError, match="cannot be exported to ONNX"):
        export.export_onnx(model, "encoder", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("case", ["refscale-x2/irn-blocks", "refscale-x4", "irn-x2", "fgrn-x2", "bicubic-x4"])
def test_onboard_to_ground_round_trip(case, exported):
    """ONNX encoder on board (tiles) -> wrap -> .rsc bytes -> refscale decode, against refscale encode -> decode."""
    model, paths = exported(case)
    a = max(model.alignment, model.scale)
    h, w = 130 + a // 2, 101  # odd sizes: padding; more than one window
    hr = synthetic_image(h, w, seed=1)
    ref = (synthetic_image(h, w, seed=2) * 0.5 + hr * 0.5) if model.needs_reference else None
    board = export.onboard_encode(paths["encoder"], hr, ref, tile=48, overlap=16)
    assert board.tiles is not None and board.size == (h, w)
    packet = export.wrap(board.lr, board.side, paths["encoder"], size=board.size, ref=ref, tiles=board.tiles)
    back = Packet.from_bytes(packet.to_bytes())
    ground = pipeline.encode(model, hr, ref, tile=48, overlap=16, register=False, precision="fp32", verify=False)
    assert back.tiles == ground.tiles and back.padded_size == ground.padded_size and back.ref_hash == ground.ref_hash
    lr_diff = np.abs(back.lr.astype(int) - ground.lr.astype(int))
    assert lr_diff.max() <= 1 and (lr_diff > 0).mean() < 0.001  # a float ulp can move a value across .5
    for k in ground.side:
        d = np.abs(back.side[k].astype(int) - ground.side[k].astype(int))
        assert d.max() <= 1 and (d > 0).mean() <= 0.01
    out_onnx = pipeline.decode(model, back, ref, seed=3)
    out_torch = pipeline.decode(model, ground, ref, seed=3)
    assert out_onnx.shape == (1, 3, h, w)
    if np.array_equal(back.lr, ground.lr) and all(np.array_equal(back.side[k], ground.side[k]) for k in ground.side):
        assert torch.equal(out_onnx, out_torch)  # the same container content decodes to the same pixels
    else:
        assert (out_onnx - out_torch).abs().mean() < 1e-3


def test_wrap_cli_and_decode(exported, tmp_path):
    model, paths = exported("refscale-x2/irn-blocks")
    weights = tmp_path / "tiny.safetensors"
    zoo.save_weights(model, weights)
    # the graph names the model by its weights file; export from that file so decode finds it
    enc = tmp_path / "enc.onnx"
    assert cli.main(["export", "-m", str(weights), "--part", "encoder", "-o", str(enc)]) == 0
    assert cli.main(["export", "-m", str(weights), "--part", "encoder", "-o", str(enc)]) == 2  # exists, no --force
    hr = synthetic_image(64, 80, seed=1)
    ref = synthetic_image(64, 80, seed=2) * 0.5 + hr * 0.5
    from refscale.imageio import write_image

    write_image(ref, tmp_path / "ref.png")
    from refscale.imageio import read_image

    ref8 = read_image(tmp_path / "ref.png")
    board = export.onboard_encode(enc, hr[..., :62, :78], ref8[..., :62, :78])
    write_image(ref8[..., :62, :78], tmp_path / "ref_crop.png")
    board.save(tmp_path / "board.npz")
    rsc = tmp_path / "scene.rsc"
    assert cli.main(["wrap", str(tmp_path / "board.npz"), "--onnx", str(enc), "--ref", str(tmp_path / "ref_crop.png"),
                     "-o", str(rsc)]) == 0
    packet = Packet.from_bytes(rsc.read_bytes())
    assert packet.model == "tiny" and tuple(packet.size) == (62, 78) and "smap" in packet.side
    out = tmp_path / "rebuilt.png"
    assert cli.main(["decode", str(rsc), "--ref", str(tmp_path / "ref_crop.png"), "-m", str(weights), "-o", str(out)]) == 0
    assert out.is_file()
    # another reference is refused by the fingerprint the wrap recorded
    write_image(hr[..., :62, :78], tmp_path / "other.png")
    assert cli.main(["decode", str(rsc), "--ref", str(tmp_path / "other.png"), "-m", str(weights),
                     "-o", str(tmp_path / "x.png")]) == 2


def test_wrap_refuses_a_reference_of_another_size(exported, tmp_path, capsys):
    """Issue 26, item 5.3: the reference the board used has the image's size; wrap refused none
    (its container then decoded with another reference to 24.7 dB with only a warning). Now one
    line, exit 2, nothing written, as encode; the right size still wraps."""
    from refscale.errors import InputError
    from refscale.imageio import read_image, write_image

    model, paths = exported("refscale-x2/irn-blocks")
    hr = synthetic_image(40, 56, seed=1)
    write_image(synthetic_image(40, 56, seed=2) * 0.5 + hr * 0.5, tmp_path / "ref.png")
    ref = read_image(tmp_path / "ref.png")
    board = export.onboard_encode(paths["encoder"], hr, ref)
    board.save(tmp_path / "board.npz")
    write_image(ref[..., :36, :], tmp_path / "small.png")
    with pytest.raises(InputError, match=r"reference is 56x36 but the image is 56x40"):
        export.wrap(board.lr, board.side, paths["encoder"], size=board.size, ref=ref[..., :36, :])
    capsys.readouterr()
    out = tmp_path / "scene.rsc"
    assert cli.main(["wrap", str(tmp_path / "board.npz"), "--onnx", str(paths["encoder"]), "--ref", str(tmp_path / "small.png"),
                     "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference is 56x36 but the image is 56x40 (width x height)" in err[0]
    assert not out.exists()
    assert cli.main(["wrap", str(tmp_path / "board.npz"), "--onnx", str(paths["encoder"]), "--ref", str(tmp_path / "ref.png"),
                     "-o", str(out)]) == 0
    assert Packet.from_bytes(out.read_bytes()).ref_hash == pipeline.fingerprint(ref)


def test_fixed_tile_graph(tmp_path):
    model = build("irn-x2")
    path = tmp_path / "fixed.onnx"
    meta = export.export_onnx(model, "encoder", path, tile=32)
    assert meta["tile"] == 32 and meta["dynamic_hw"] is False
    hr = synthetic_image(32, 32, seed=1)
    board = export.onboard_encode(path, hr)
    ref_lr, _ = model.downscale(hr)
    assert np.abs(board.lr - ref_lr.detach().numpy()).max() <= export.TOLERANCE
    with pytest.raises(Exception, match="32x32 windows only"):
        export.onboard_encode(path, synthetic_image(40, 40, seed=1))


def test_missing_extra_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelError, match=r"refscale\[onnx\]"):
        export.require_onnx()
    assert cli.main(["export", "-m", "bicubic-x2", "--part", "encoder", "-o", str(tmp_path / "b.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'refscale[onnx]'" in err[0]


def test_bad_part_and_wrap_checks(exported, tmp_path):
    model, paths = exported("irn-x2")
    with pytest.raises(Exception, match="part must be one of"):
        export.export_onnx(model, "both", tmp_path / "x.onnx")
    lr = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(Exception, match="does not fit an image"):
        export.wrap(lr, {}, paths["encoder"], size=(20, 20))
    with pytest.raises(Exception, match="side tensors"):
        export.wrap(lr, {"smap": np.zeros((1, 1, 8, 8))}, paths["encoder"])


def test_cli_refuses_tadm_and_inter_by_name(tmp_path, capsys):
    for name in ("tadm-x16", "inter-h264"):
        assert cli.main(["export", "-m", name, "--part", "encoder", "-o", str(tmp_path / "x.onnx")]) == 2
        assert "cannot be exported to ONNX" in capsys.readouterr().err


def test_a_corrupt_onboard_file_is_a_one_line_error(tmp_path):
    from refscale.errors import InputError
    from refscale.export import OnboardOutput

    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    np.savez(tmp_path / "short.npz", lr=np.zeros((4, 4, 3)), tiles=np.array([5]))
    for name in ("bad.npz", "short.npz"):
        with pytest.raises(InputError):
            OnboardOutput.load(tmp_path / name)
