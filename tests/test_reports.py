"""The report scripts of benchmarks/ show colour (issue 26): RGB beside Y, the worst image, >40 levels,
and old results files without these values render "-" instead of failing; the out-of-domain suite."""
import json
from pathlib import Path

import pytest
import torch

from refscale.io.image import write_image
from refscale.zoo import card_for
from tests.conftest import synthetic_image

from benchmarks import natural_report, oscd_report, out_of_domain, rd_curves

OLD_MEAN = {"psnr_y": 30.0, "ssim_y": 0.9, "psnr_rgb": 28.0, "ssim_rgb": 0.88, "si_lr": 0.3, "bpp": 4.0, "bpp_lr": 3.9,
            "bpp_side": 0.0, "seconds": 1.0}  # written before frac_off40 and worst existed


def result(psnr_y: float, psnr_rgb: float | None, frac: float | None = None) -> dict:
    """A ``refscale evaluate`` result of two images; ``frac=None``: an old file without frac_off40."""
    mean = {**OLD_MEAN, "psnr_y": psnr_y, "psnr_rgb": psnr_rgb}
    images = [{"name": "a", "psnr_y": psnr_y, "psnr_rgb": psnr_rgb}, {"name": "b", "psnr_y": psnr_y, "psnr_rgb": psnr_rgb}]
    if psnr_rgb is not None:
        images[1]["psnr_rgb"] = psnr_rgb - 3
    else:
        for r in images:
            del r["psnr_rgb"]
        del mean["psnr_rgb"], mean["ssim_rgb"]
    if frac is not None:
        mean["frac_off40"] = frac
        for r in images:
            r["frac_off40"] = frac
    return {"mean": mean, "images": images, "precision": "bf16"}


def test_oscd_table_and_glance_show_rgb_worst_and_missing_values():
    rows = [{"scale": 2, "arch": "bicubic", "ref": "bicubic-x2", "command": "c1", "result": result(34.0, 32.0, 0.01)},
            {"scale": 2, "arch": "irn", "ref": "irn-x2", "command": "c2", "result": result(41.0, 36.0)},
            {"scale": 2, "arch": "fgrn", "ref": "fgrn-x2-oscd", "command": "c3", "result": result(44.0, None)}]
    table = oscd_report.table_markdown(rows)
    lines = table.splitlines()
    assert "| PSNR-RGB | SSIM-RGB | worst image (PSNR-RGB) | >40 levels |" in lines[0]
    assert lines[2].startswith("| x2 | bicubic | 34.00 | 0.9000 | 32.00 | 0.8800 | b 29.00 | 1.00% |")
    assert lines[3].startswith("| x2 | irn | 41.00 | 0.9000 | 36.00 | 0.8800 | b 33.00 | - |")  # old file: no frac_off40
    assert lines[4].startswith("| x2 | fgrn | 44.00 | 0.9000 | - | - | - | - |")  # nor RGB
    ood = {"runs": {
        "bicubic-x2|Set5|verify=False": {"model": "bicubic-x2", "weights": "bicubic-x2", "set": "Set5", "scale": 2,
                                         "verify": False, "images": 5, "psnr_y": 33.7, "psnr_rgb": 31.8},
        "irn-x2|Set5|verify=False": {"model": "irn-x2", "weights": "irn-x2-oscd", "set": "Set5", "scale": 2,
                                     "verify": False, "images": 5, "psnr_y": 27.6, "psnr_rgb": 18.9}}}
    glance = oscd_report.glance_markdown(rows, ood, "python -m benchmarks oscd_report glance").splitlines()
    bic, irn, fgrn = (next(x for x in glance if x.startswith(f"| {m}")) for m in ("bicubic-x2", "irn-x2", "fgrn-x2-oscd"))
    assert "| out of domain: natural sets, RGB / Y vs bicubic |" in glance[2]
    assert irn.startswith("| irn-x2 (`irn-x2-oscd`) | 41.00 | +7.00 | 0.9000 | **36.00** | +4.00 | 0.8800 | b 33.00 | - |")
    assert irn.endswith("| Set5 RGB -12.90 / Y -6.10 |") and bic.endswith("| Set5 RGB 31.80 / Y 33.70 |")
    assert fgrn.startswith("| fgrn-x2-oscd | **44.00** | +10.00 | 0.9000 | - |  | - | - | - |") and fgrn.endswith("| - |")


def test_natural_table_and_glance_show_rgb_per_set():
    rows = [{"scale": 2, "arch": arch, "set": s, "ref": ref, "command": f"{arch} {s}", "result": result(y, y - 2, frac)}
            for arch, ref, y, frac in (("bicubic", "bicubic-x2", 30.0, 0.001), ("fgrn", "fgrn-x2-natural", 35.0, None))
            for s in ("Set5", "Set14")]
    table = natural_report.table_markdown(rows, ["Set5", "Set14"])
    assert "| Set5 ours Y | Set5 ours RGB | Set5 paper Y |" in table
    assert "| x2 | fgrn | 35.00 / 0.9000 | 33.00 / 0.8800 | 44.15 / 0.9902 | 35.00 / 0.9000 | 33.00 / 0.8800 | 42.28 / 0.9840 |" in table
    assert "| x2 | bicubic | b 25.00 | 0.10% | b 25.00 | 0.10% |" in table and "| x2 | fgrn | b 30.00 | - | b 30.00 | - |" in table
    assert "No shipped weights, left out: irn-x2-natural." in table  # a method without rows is named
    glance = natural_report.glance_markdown(rows, ["Set5", "Set14"], None, "cmd")
    steps = card_for("fgrn-x2-natural").get("iterations") or "-"
    assert f"| `fgrn-x2-natural` | {steps} | **35.00** / **33.00** | **35.00** / **33.00** | Set5 b 30.00 | - / - | - |" in glance


def tiny_images(folder: Path, n: int = 2, size: int = 32) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        write_image(synthetic_image(size, size, i), folder / f"im{i}.png")


def test_rd_report_with_rgb_and_with_an_old_results_file(tmp_path):
    torch.set_num_threads(1)
    tiny_images(tmp_path / "set")
    out = tmp_path / "rd.json"
    rd_curves.main(["run", "--data", str(tmp_path / "set"), "--codecs", "jpeg", "webp", "--models", "bicubic-x2",
                    "--points", "4", "--out", str(out)])
    points = json.loads(out.read_text())["points"]
    assert all({"psnr_rgb", "ssim_rgb", "frac_off40"} <= set(p) for p in points.values())
    cs = rd_curves.curves(json.loads(out.read_text()))
    md = rd_curves.report_markdown(cs, rd_curves.bd_table(cs), "tiny", "cmd")
    assert "| BD-rate RGB | BD-PSNR RGB |" in md and "**Colour at each curve's highest quality**" in md
    row = next(x for x in md.splitlines() if x.startswith("| bicubic-x2 | jpeg | 95 |"))
    assert row.split("|")[6].strip() != "-" and row.split("|")[8].strip().startswith("im")
    old = json.loads(out.read_text())
    for p in old["points"].values():
        for k in ("psnr_rgb", "ssim_rgb", "frac_off40"):
            del p[k]
    cs = rd_curves.curves(old)
    rows = rd_curves.bd_table(cs)
    assert all(r["bd_rate_rgb"] is None for r in rows)
    md = rd_curves.report_markdown(cs, rows, "tiny", "cmd")
    row = next(x for x in md.splitlines() if x.startswith("| bicubic-x2 | jpeg | 95 |"))
    assert row.endswith("| - | - | - | - |")


@pytest.fixture
def tiny_data(tmp_path):
    root = tmp_path / "data"
    tiny_images(root / "natural" / "Set5")
    for i, city in enumerate(("c1", "c2", "c3")):
        (root / "oscd" / city).mkdir(parents=True)
        write_image(synthetic_image(32, 32, 10 + i), root / "oscd" / city / "img1.png")
        write_image(synthetic_image(32, 32, 20 + i), root / "oscd" / city / "img2.png")
    (root / "oscd" / "split.json").write_text(json.dumps({"train": ["c3"], "test": ["c1", "c2"]}))
    return root


def test_out_of_domain_runs_caches_and_tabulates(tiny_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    out, md, doc = tmp_path / "ood.json", tmp_path / "ood.md", tmp_path / "results.md"
    doc.write_text("# Results\n\n<!-- ood:start -->\nplaceholder\n<!-- ood:end -->\n\nafter\n")
    argv = ["--data", str(tiny_data), "--sets", "Set5", "oscd", "--models", "fgrn-x2-oscd", "refscale-x2", "fgrn-x2-natural",
            "--max-images", "1", "--out", str(out), "--md", str(md), "--write", str(doc)]
    out_of_domain.main(argv)
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {f"{m}|{s}|verify=False" for m, s in (("bicubic-x2", "Set5"), ("fgrn-x2-oscd", "Set5"),
                                                              ("refscale-x2", "Set5"), ("bicubic-x2", "oscd"),
                                                              ("fgrn-x2-natural", "oscd"))}
    fgrn = runs["fgrn-x2-oscd|Set5|verify=False"]
    assert fgrn["images"] == 1 and fgrn["worst"]["name"] == "im0" and 0 <= fgrn["frac_off40"] <= 1
    assert fgrn["sha256"] and fgrn["trained_on"] == "oscd" and fgrn["result"]["images"][0]["name"] == "im0"
    assert runs["fgrn-x2-natural|oscd|verify=False"]["worst"]["name"] == "c1"  # the test split, first city
    assert runs["refscale-x2|Set5|verify=False"]["skipped"].startswith("needs a reference")
    text = md.read_text()
    assert "| Set5 | oscd | fgrn-x2-oscd (" in text and "needs a reference" in text
    assert "placeholder" not in doc.read_text() and doc.read_text().endswith("<!-- ood:end -->\n\nafter\n")
    kept = json.loads((tmp_path / "results" / "ood.json").read_text())  # the block as data beside the page
    assert kept["block"] == "ood" and kept["source"][0] and any("rows" in p for p in kept["parts"])

    calls = []
    monkeypatch.setattr(out_of_domain, "measure", lambda *a: calls.append(a))
    out_of_domain.main(argv)  # everything cached: nothing measured again
    assert calls == []


def test_out_of_domain_cell_of_the_glance_tables():
    from benchmarks.report_common import ood_cell

    runs = {"a": {"model": "bicubic-x2", "weights": "bicubic-x2", "set": "oscd", "scale": 2, "verify": False, "images": 10,
                  "psnr_y": 33.0, "psnr_rgb": 31.0},
            "b": {"model": "irn-x2-natural", "weights": "irn-x2-natural", "set": "oscd", "scale": 2, "verify": False,
                  "images": 10, "psnr_y": 40.0, "psnr_rgb": 34.5},
            "c": {"model": "irn-x2-natural", "weights": "irn-x2-natural", "set": "oscd", "scale": 2, "verify": True,
                  "images": 10, "psnr_y": 41.0, "psnr_rgb": 35.5},
            "d": {"model": "refscale-x2", "weights": "refscale-x2-oscd", "set": "Set5", "scale": 2, "verify": False,
                  "images": 0, "skipped": "needs a reference"}}
    ood = {"runs": runs}
    assert ood_cell(ood, "irn-x2-natural", ("oscd",)) == "oscd RGB +3.50 / Y +7.00"  # the no-verify run
    assert ood_cell(ood, "irn-x2-natural", ("Set5",)) == "-"
    assert ood_cell(ood, "refscale-x2-oscd") == "needs a reference"
    assert ood_cell(None, "irn-x2-natural") == "-"


def test_verification_checks_per_image_and_block():
    """The verifying encoder's checks: the worst per-image RGB gap to bicubic on the same image,
    the worst block gap the encoder measured, the mean share of blocks given to bicubic."""
    base = {"result": {"images": [{"name": "a", "psnr_rgb": 30.0}, {"name": "b", "psnr_rgb": 25.0}]}}
    run = {"result": {"images": [{"name": "a", "psnr_rgb": 31.0, "worst_block_gap": 0.2, "fallback": 0.5},
                                 {"name": "b", "psnr_rgb": 24.5, "worst_block_gap": 0.0, "fallback": 0.1}]}}
    gap, block, fallback = out_of_domain.image_checks(run, base)
    assert gap == pytest.approx(-0.5) and block == 0.0 and fallback == pytest.approx(0.3)
    assert out_of_domain.image_checks({"result": {"images": [{"name": "a", "psnr_rgb": 1.0}]}}, None) == (None, None, None)
    assert [m for m, s, _ in out_of_domain.plan(None, ["oscd"], in_domain=True)][:2] == ["bicubic-x2", "bicubic-x4"]
    assert "refscale-x2" in [m for m, _, _ in out_of_domain.plan(None, ["oscd"], in_domain=True)]
    assert "irn-x2-natural" in [m for m, _, _ in out_of_domain.plan(None, ["Set5"], in_domain=True)]


def test_rd_run_labels_models(tmp_path):
    """``--labels``: a model's points go under its label (weights not shipped yet beside shipped
    ones); one label per model."""
    torch.set_num_threads(1)
    tiny_images(tmp_path / "set", n=1)
    out = tmp_path / "rd.json"
    rd_curves.main(["run", "--data", str(tmp_path / "set"), "--codecs", "jpeg", "--models", "bicubic-x2",
                    "--labels", "bicubic-x2-candidate", "--points", "2", "--out", str(out)])
    pipes = {k.split("|")[1] for k in json.loads(out.read_text())["points"]}
    assert pipes == {"full", "bicubic-x2-candidate"}
    with pytest.raises(SystemExit, match="one label per model"):
        rd_curves.main(["run", "--data", str(tmp_path / "set"), "--codecs", "jpeg", "--models", "bicubic-x2",
                        "--labels", "a", "b", "--points", "2", "--out", str(tmp_path / "rd2.json")])
