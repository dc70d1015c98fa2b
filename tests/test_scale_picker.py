"""The scale picker ``enhance-hevc`` (issue 27, item 2): with a size budget the encoder codes the
image with each member (``enhance-x1``, ``enhance-x2``), fits each to the budget, decodes it as
the receiver will and writes the one with the best PSNR-Y; the container names that member.

The catalogue is patched: the members are tiny random models (nf 8, one block) with "shipped"
weights in a temporary weights folder, so nothing here needs the real weights.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import perturb
from refscale import files, metrics, pipeline, zoo
from refscale.cli import build_parser, main
from refscale.errors import InputError, ModelError
from refscale.format import codecs
from refscale.format.container import Packet, bytes_for_bpp
from refscale.format.inter import default_mode
from refscale.io.image import as_image_tensor
from refscale.protocol import REGISTRY, ArchSpec
from refscale.synthetic import synthetic_revisit_pair

torch.set_num_threads(1)
HEVC = codecs.available_codecs().get("hevc-inter", False)
needs_hevc = pytest.mark.skipif(not HEVC, reason="PyAV with libx265 is not installed")
TINY = {"nf": 8, "blocks": 1}
SIZE = 128  # at 128 px the x2 file at quality 1 is ~30 bytes smaller than the x1 file (~270 of ~300)


def install(tmp_path, monkeypatch, std: dict[int, float]) -> dict[int, str]:
    """enhance-x1 / enhance-x2 as tiny models, perturbed by ``std[scale]``, whose default weights
    are "shipped" in a temporary weights folder; returns the weights names by scale."""
    wdir = tmp_path / "weights"
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", wdir)
    names = {}
    for s in (1, 2):
        arch, names[s] = f"enhance-x{s}", f"tiny-enhance-x{s}"
        spec = zoo.architectures()[arch]
        monkeypatch.setitem(REGISTRY, arch, ArchSpec(arch, spec.cls, {**spec.defaults, **TINY}, names[s]))
        m = zoo.build(arch)
        perturb(m, std[s], seed=s)  # the network's output matters (the zero-initialised tail too)
        zoo.save_weights(m, wdir / f"{names[s]}.safetensors", card={"data": "test"})
    return names


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Two tiny members, both mildly perturbed (at a generous budget x1 is the better one)."""
    return install(tmp_path, monkeypatch, {1: 0.01, 2: 0.01})


@pytest.fixture
def pair(tmp_path):
    """A procedural revisit pair as PNG files: ``(hr path, ref path, hr tensor)``."""
    new, old = synthetic_revisit_pair(SIZE, SIZE, seed=3)
    Image.fromarray(new).save(tmp_path / "new.png")
    Image.fromarray(old).save(tmp_path / "old.png")
    return tmp_path / "new.png", tmp_path / "old.png", as_image_tensor(new)


def fitted(name: str, hr_path, ref_path, budget: int, verify: bool = True):
    """What one member gives within ``budget`` bytes, computed here step by step: ``(data, PSNR-Y
    of the receiver's decode)``, or None when even quality 1 is over the budget."""
    model = zoo.load(name)
    packet = pipeline.encode(model, hr_path, ref_path, verify=verify)
    try:
        data, _ = packet.fit("hevc-inter", budget)
    except InputError:
        return None
    hr_hat, _, _ = files.decode_file(data, ref_path)
    return data, float(metrics.psnr(hr_hat, as_image_tensor(np.asarray(Image.open(hr_path))))[0])


def test_members_come_from_the_catalogue(tiny, monkeypatch):
    assert zoo.picker_members("enhance-hevc") == ["enhance-x1", "enhance-x2"]
    assert zoo.picker_members("enhance-avif") == ["enhance-x1-avif", "enhance-x2-avif"]
    picker = zoo.load("enhance-hevc")
    assert [m.name for m in picker.members] == [tiny[1], tiny[2]] and [m.scale for m in picker.members] == [1, 2]
    assert picker.needs_reference and picker.default_codec == "hevc-inter" and picker.left_out == []
    with pytest.raises(ModelError, match="picks one per image"):  # not a model itself: a clear error, no AttributeError
        picker.encode(None)
    row = {r["name"]: r for r in zoo.catalogue()}["enhance-hevc"]
    assert "enhance-x1 / enhance-x2" in row["note"] and row["needs_reference"]
    # a member without shipped weights is left out; none left is an error
    spec = REGISTRY["enhance-x2"]
    monkeypatch.setitem(REGISTRY, "enhance-x2", ArchSpec("enhance-x2", spec.cls, spec.defaults, None))
    picker = zoo.load("enhance-hevc")
    assert [m.name for m in picker.members] == [tiny[1]] and picker.left_out == ["enhance-x2"]
    assert len(zoo.load("enhance-hevc", pretrained=False).members) == 2
    spec = REGISTRY["enhance-x1"]
    monkeypatch.setitem(REGISTRY, "enhance-x1", ArchSpec("enhance-x1", spec.cls, spec.defaults, None))
    with pytest.raises(ModelError, match="none of which has shipped weights"):
        zoo.load("enhance-hevc")
    # a scale-4 member is one more registration
    monkeypatch.setitem(REGISTRY, "enhance-x4", ArchSpec("enhance-x4", spec.cls, {**spec.defaults, "scale": 4}))
    assert zoo.picker_members("enhance-hevc") == ["enhance-x1", "enhance-x2", "enhance-x4"]


def test_picker_needs_a_budget(tiny, pair):
    hr, ref, _ = pair
    picker = zoo.load("enhance-hevc")
    job = files.Job("new", hr, ref, hr.parent / "out.rsc")
    for kwargs in ({"quality": 40}, {}):
        with pytest.raises(InputError, match="--bpp X or --bytes N.*enhance-x1, enhance-x2\\) with -q"):
            files.encode_file(job, picker, **kwargs)
    assert not job.output.exists()


@needs_hevc
@pytest.mark.parametrize("spoil_x1,verify,mode", [(False, True, "auto"), (True, False, "intra")])
def test_picks_the_best_decoded_member(tmp_path, monkeypatch, pair, spoil_x1, verify, mode):
    """The file written is the member with the best PSNR-Y of the receiver's decode, as found by
    encoding each member separately with the same options (verification, inter mode). A badly
    perturbed x1, unverified, loses to x2; a mild one wins."""
    names = install(tmp_path, monkeypatch, {1: 0.3 if spoil_x1 else 0.01, 2: 0.01})
    hr, ref, target = pair
    budget = bytes_for_bpp(1.0, (SIZE, SIZE))
    with default_mode(mode):
        want = {name: fitted(name, hr, ref, budget, verify=verify) for name in names.values()}
        assert all(w is not None for w in want.values())  # both fit: the choice is by PSNR-Y
        best = max(want, key=lambda n: want[n][1])
        other = min(want, key=lambda n: want[n][1])
        assert want[best][1] > want[other][1] + 3.0  # a clear margin: no numerics can flip it
        assert best == names[2 if spoil_x1 else 1]
        job = files.Job("new", hr, ref, hr.parent / "out.rsc")
        r = files.encode_file(job, zoo.load("enhance-hevc"), bpp=1.0, verify=verify)
    assert r["model"] == best and r["bytes"] <= budget and r["left_out"] == []
    assert r["inter_mode"] == ("intra" if mode == "intra" else "inter") and (r["verify"] is None) == (not verify)
    rows = {c["model"]: c for c in r["candidates"]}
    assert [rows[n]["chosen"] for n in names.values()] == [n == best for n in names.values()]
    assert rows[best]["psnr_y"] == max(c["psnr_y"] for c in r["candidates"])
    for name, (data, psnr_y) in want.items():  # x265's P-frame bits may vary a little with what the
        assert rows[name]["psnr_y"] == pytest.approx(psnr_y, abs=0.3)  # process coded before: not exact
    assert Packet.from_bytes(job.output.read_bytes()).model == best
    hr_hat, _, model = files.decode_file(job.output, ref)  # the model the file names, nothing else
    assert model.name == best and r["quality"] == rows[best]["quality"] and r["bytes"] == rows[best]["bytes"]
    assert float(metrics.psnr(hr_hat, target)[0]) == rows[best]["psnr_y"]  # what it measured is what is received


def test_encode_best_on_tensors(tiny, pair):
    """The Python API without files: tensors in, ``(data, packet, candidates)`` out, PNG LR (no codec
    needed), the second of two equal models never replaces the first (a tie keeps the first)."""
    _, _, target = pair
    _, old = synthetic_revisit_pair(SIZE, SIZE, seed=3)
    m = zoo.load(tiny[1])
    data, packet, rows = pipeline.encode_best([m, m], target, as_image_tensor(old), max_bytes=10**6, codec="png",
                                              verify=False)
    assert packet.model == tiny[1] and [c["chosen"] for c in rows] == [True, False]
    assert rows[0]["psnr_y"] == rows[1]["psnr_y"] and rows[0]["quality"] is None and len(data) == rows[0]["bytes"]
    with pytest.raises(InputError, match="needs a size budget"):
        pipeline.encode_best([m], target, as_image_tensor(old), codec="png")


@needs_hevc
def test_a_budget_only_one_member_meets(tiny, pair):
    hr, ref, _ = pair
    smallest = {s: len(pipeline.encode(zoo.load(n), hr, ref).to_bytes(quality=1)) for s, n in tiny.items()}
    assert smallest[2] < smallest[1] - 8  # the x2 file is smaller at the lowest quality
    picker = zoo.load("enhance-hevc")
    job = files.Job("new", hr, ref, hr.parent / "tight.rsc")
    budget = (smallest[1] + smallest[2]) // 2  # at least 4 bytes from either
    r = files.encode_file(job, picker, max_bytes=budget)
    assert r["model"] == tiny[2] and r["bytes"] <= budget
    assert [("error" in c, c["chosen"]) for c in r["candidates"]] == [(True, False), (False, True)]
    job = files.Job("new", hr, ref, hr.parent / "none.rsc")
    with pytest.raises(InputError, match=f"no model fits the budget.*{tiny[1]} \\(x1\\).*> the budget.*"
                                         f"{tiny[2]} \\(x2\\).*> the budget"):
        files.encode_file(job, picker, max_bytes=smallest[2] - 1)
    assert not job.output.exists()


def test_cli_refuses_a_quality_or_no_budget(tiny, pair, capsys):
    hr, ref, _ = pair
    out = hr.parent / "q.rsc"
    for extra in (["-q", "40"], []):
        code = main(["encode", str(hr), "--ref", str(ref), "-m", "enhance-hevc", *extra, "-o", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and not out.exists()
        assert err.startswith("refscale: error: enhance-hevc picks the scale") and "--bpp" in err
        assert len(err.splitlines()) == 1 and "Traceback" not in err


@needs_hevc
def test_cli_encode_names_the_choice_and_decode_needs_nothing_new(tiny, pair, capsys):
    hr, ref, _ = pair
    out = hr.parent / "s.rsc"
    lr = hr.parent / "lr.png"
    assert main(["encode", str(hr), "--ref", str(ref), "-m", "enhance-hevc", "--bpp", "1", "-o", str(out),
                 "--lr-out", str(lr)]) == 0
    line = capsys.readouterr().out.strip()
    chosen = Packet.from_bytes(out.read_bytes()).model
    assert chosen in tiny.values() and f", {chosen}, hevc-inter" in line
    scale = 1 if chosen == tiny[1] else 2
    assert Image.open(lr).size == (SIZE // scale, SIZE // scale)  # the chosen member's LR
    assert "scale picked by PSNR-Y (*):" in line and f"*x{scale} q" in line
    for extra in ([], ["-m", "enhance-hevc"]):  # the model the file names; the picker's member of that name
        png = hr.parent / f"out{len(extra)}.png"
        assert main(["decode", str(out), "--ref", str(ref), *extra, "-o", str(png)]) == 0
        assert f"({chosen}, seed 0)" in capsys.readouterr().out
        want, _, _ = files.decode_file(out, ref)
        got = np.asarray(Image.open(png).convert("RGB"))
        assert np.array_equal(got, torch.round(want[0] * 255).to(torch.uint8).permute(1, 2, 0).numpy())


def test_shipped_catalogue():
    """With the weights shipped today the picker has the members that have them and names the others
    (enhance-x2 takes part once its weights ``enhance-x2-hevc-oscd`` ship); ``refscale models`` says so."""
    cards = zoo.weights_cards()
    assert zoo.default_weights("enhance-x2") == "enhance-x2-hevc-oscd"
    members = zoo.picker_members("enhance-hevc")
    shipped = [n for n in members if zoo.default_weights(n) in cards]
    picker = zoo.load("enhance-hevc")
    assert [m.name for m in picker.members] == [zoo.default_weights(n) for n in shipped]
    assert picker.left_out == [n for n in members if n not in shipped]
    note = {r["name"]: r for r in zoo.catalogue()}["enhance-hevc"]["note"]
    assert ("no shipped weights, left out" in note) == bool(picker.left_out)


def test_demo_refuses_the_picker(tmp_path, capsys):
    assert main(["demo", "-m", "enhance-hevc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refscale: error: enhance-hevc picks a scale per image in refscale encode")
    assert "one of enhance-x1, enhance-x2" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("extra", [[], ["-q", "40"]])
def test_evaluate_refuses_the_picker_without_a_budget(tmp_path, extra, capsys):
    assert main(["evaluate", "--data", str(tmp_path), "-m", "enhance-hevc", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "--bpp X or --bytes N" in err and len(err.splitlines()) == 1


@needs_hevc
def test_evaluate_scores_what_encode_writes(tiny, pair, tmp_path, capsys):
    """refscale evaluate -m enhance-hevc --bpp X codes each image as refscale encode does (the same
    member, quality and bytes) and scores the receiver's decode of it on every pixel."""
    hr, ref, target = pair
    data_dir = tmp_path / "set" / "scene"
    data_dir.mkdir(parents=True)
    (data_dir / "hr.png").write_bytes(hr.read_bytes())
    (data_dir / "ref.png").write_bytes(ref.read_bytes())
    job = files.Job("new", hr, ref, tmp_path / "enc.rsc")
    r = files.encode_file(job, zoo.load("enhance-hevc"), bpp=1.0)
    assert main(["evaluate", "--data", str(tmp_path / "set"), "-m", "enhance-hevc", "--bpp", "1.0",
                 "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    row = result["images"][0]
    assert result["model"] == "enhance-hevc" and result["scale"] == 1 and result["budget"] == {"bpp": 1.0}
    assert row["member"] == r["model"] and row["quality"] == r["quality"]
    assert row["bpp"] == pytest.approx(r["bytes"] * 8 / SIZE**2)
    assert [c["model"] for c in row["candidates"]] == [c["model"] for c in r["candidates"]]
    decoded, _, _ = files.decode_file(job.output.read_bytes(), ref)
    want = float(metrics.psnr(decoded, target, crop_border=1, y_channel=True)[0])
    assert row["psnr_y"] == pytest.approx(want, abs=0.05)  # x265's bits may differ a little between two encodes


@needs_hevc
def test_folders_and_batch_workers(tiny, tmp_path, capsys, monkeypatch):
    """A folder of pairs encodes with the picker, each scene choosing for itself; a batch worker's task
    (refscale batch encode --bpp, run here in-process) writes the same kind of file."""
    from refscale import batch

    src = tmp_path / "in"
    for i in range(2):
        new, old = synthetic_revisit_pair(64, 64, seed=i)
        (src / f"s{i}").mkdir(parents=True)
        Image.fromarray(new).save(src / f"s{i}" / "hr.png")
        Image.fromarray(old).save(src / f"s{i}" / "ref.png")
    out = tmp_path / "out"
    assert main(["encode", str(src), "-m", "enhance-hevc", "--bpp", "1.5", "-o", str(out)]) == 0
    assert "encode: 2 of 2 done" in capsys.readouterr().out
    assert {Packet.from_bytes(p.read_bytes()).model for p in out.glob("*.rsc")} <= set(tiny.values())
    monkeypatch.setattr(batch, "_MODELS", {})  # this process: a fresh model cache and thread setting
    monkeypatch.setattr(batch, "_THREADS", [])
    job = {"name": "s0", "input": str(src / "s0" / "hr.png"), "ref": str(src / "s0" / "ref.png"),
           "output": str(tmp_path / "b" / "s0.rsc"), "lr_output": None}
    row = batch.run_task("encode", job, {"model": "enhance-hevc", "threads": 1,
                                         "encode": {"bpp": 1.5, "max_bytes": None, "quality": None, "codec": None}})
    assert row["status"] == "done", row["error"]
    assert row["model"] == Packet.from_bytes((out / "s0.rsc").read_bytes()).model and row["bpp"] <= 1.5
    row = batch.run_task("encode", {**job, "output": str(tmp_path / "b" / "q.rsc")},
                         {"model": "enhance-hevc", "threads": 1, "encode": {"quality": 40}})
    assert row["status"] == "failed" and "give --bpp X or --bytes N" in row["error"]
    args = build_parser().parse_args(["batch", "encode", str(src), "-o", str(out), "-m", "enhance-hevc", "--bytes", "900"])
    assert (args.max_bytes, args.bpp, args.quality) == (900, None, None)


def test_the_picker_stands_for_its_codecs_decoders_only():
    """``enhance-hevc`` picks among the decoders after the inter codec, ``enhance-avif`` among
    those after AVIF."""
    assert zoo.picker_members("enhance-hevc") == ["enhance-x1", "enhance-x2"]
    assert zoo.picker_members("enhance-avif") == ["enhance-x1-avif", "enhance-x2-avif"]
