"""The benchmark tool (issue 28, item 2): ``python -m benchmarks NAME [args]`` runs every module of
benchmarks/, lists them, each one's ``--help`` works; one results store; the benchmarks and
scripts use the package's public names only and insert nothing into ``sys.path``."""
import ast
import contextlib
import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks
from benchmarks import store

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))


def test_every_module_is_a_benchmark_or_a_helper():
    assert set(benchmarks.names()) | set(benchmarks.HELPERS) == set(MODULES)
    assert set(benchmarks.HELPERS) <= set(MODULES) and not set(benchmarks.names()) & set(benchmarks.HELPERS)


def test_help_lists_every_benchmark_with_a_line():
    """``python -m benchmarks --help`` in a new process (as a user runs it), without a benchmark's import."""
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env=benchmarks.env())
    assert out.returncode == 0, out.stderr
    for name in benchmarks.names():
        line = next((ln for ln in out.stdout.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None, name
        assert len(line.split(None, 1)) == 2 and benchmarks.summary(name) in line, line
    listed = [ln.split()[0] for ln in out.stdout.split("benchmarks:\n")[1].splitlines()]
    assert listed == benchmarks.names()  # the helpers are not listed


def test_no_name_or_an_unknown_one(capsys):
    assert benchmarks.main([]) == 2
    assert "rd_curves" in capsys.readouterr().out
    assert benchmarks.main(["no_such_bench"]) == 2
    assert "no benchmark 'no_such_bench'" in capsys.readouterr().err


@pytest.mark.parametrize("name", benchmarks.names())
def test_each_benchmark_help(name):
    """``python -m benchmarks NAME --help``: argparse only (nothing is measured), exit 0."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        benchmarks.main([name, "--help"])
    assert e.value.code == 0
    assert buf.getvalue().startswith("usage: ") and f"python -m benchmarks {name}" in buf.getvalue()
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.main) and "argv" in module.main.__code__.co_varnames[:module.main.__code__.co_argcount]


def test_dispatch_passes_the_arguments_and_the_exit_code(capsys):
    """A real run of a fast benchmark through the tool: model_complexity on a tiny image."""
    assert benchmarks.main(["model_complexity", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "compute counted on a 32x32 HR image" in out and "refscale-x2 cond_stride=1" in out


def test_store_round_trip_and_default_path(tmp_path):
    import numpy as np

    path = store.save({"a": np.float32(1.5), "b": [1, 2], "p": tmp_path}, tmp_path / "x" / "r.json")
    assert path.read_text().endswith("\n") and not list((tmp_path / "x").glob("*.tmp"))
    assert store.load(path) == {"a": 1.5, "b": [1, 2], "p": str(tmp_path)}
    assert json.loads(path.read_text())["b"] == [1, 2]
    assert store.load(tmp_path / "missing.json", {"runs": {}}) == {"runs": {}}
    assert store.default_path("rd_curves") == Path("out/bench/rd_curves.json")
    assert store.default_path("batch_archive", "speed") == Path("out/bench/batch_archive-speed.json")


def _sources() -> list[Path]:
    return sorted(BENCH.glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def private_uses(path: Path) -> list[str]:
    """``from refscale... import _x``, ``import refscale._x`` and ``x._y`` (but ``self._y``, ``cls._y``
    and dunders) in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("refscale", "benchmarks"):
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"{path.name}:{node.lineno} from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_")] + ([f"{path.name}:{node.lineno} {node.module}"]
                                                    if any(p.startswith("_") for p in parts[:-len(node.names)]) else [])
        elif isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                      if any(p.startswith("_") and not p.startswith("__") for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_benchmarks_and_scripts_use_public_names_only():
    found = [u for p in _sources() for u in private_uses(p)]
    assert not found, found


def test_the_private_name_check_finds_them(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from refscale.format.inter import _code\nfrom refscale import registration\n"
                   "registration._band(1)\nself._ok = 1\nx.__class__\n")
    assert [u.split(" ", 1)[1] for u in private_uses(bad)] == ["from refscale.format.inter import _code", "registration._band"]


def test_no_sys_path_inserts_and_no_loading_by_file_path():
    for p in _sources():
        text = p.read_text()
        assert not re.search(r"sys\.path\.(insert|append)", text), p
        if p.parent == BENCH:
            assert "spec_from_file_location" not in text or p.stem == "enhance_cache_eval", p


def test_documented_commands_name_existing_benchmarks():
    """Every ``python -m benchmarks NAME`` quoted in the docs, README, CHANGELOG, configs, scripts and
    code names a benchmark, and no old ``python benchmarks/NAME.py`` form is left."""
    names = set(benchmarks.names())
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "configs").glob("*.yaml"),
             *(ROOT / "scripts").glob("*"), *BENCH.glob("*.py"), *(ROOT / "refscale").rglob("*.py")]
    bad = []
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        bad += [f"{f.name}: python benchmarks/{m}" for m in re.findall(r"python3? benchmarks/([a-z_]+)\.py", text)]
        bad += [f"{f.name}: {m}" for m in re.findall(r"python -m benchmarks ([a-z_]+)", text) if m not in names]
    assert not bad, bad


def test_every_refscale_module_named_in_benchmarks_and_scripts_exists():
    """Imports inside functions run only when that command does: a module that moved
    (``refscale.container`` -> ``refscale.format.container``) must not linger there."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    missing = []
    for folder in ("benchmarks", "scripts"):
        for f in sorted((root / folder).glob("*.py")):
            for name in re.findall(r"^\s*(?:from|import)\s+(refscale(?:\.\w+)*)", f.read_text(), re.M):
                if importlib.util.find_spec(name) is None:
                    missing.append(f"{folder}/{f.name}: {name}")
    assert not missing, missing


def test_evaluate_bd_from_evaluate_results(tmp_path, capsys):
    """``evaluate_bd``: a pipeline 0.5 dB above another at the same rates saves bits on the mean
    curve and on each image; files whose images differ are refused."""
    from benchmarks import evaluate_bd

    def result(model, q, gain, names=("a", "b")):
        bpp = 0.05 * 2 ** (q / 15)
        images = [{"name": n, "quality": q, "bpp": bpp * (1 + i / 10), "psnr_y": 30 + q / 5 + gain + i,
                   "psnr_rgb": 28 + q / 5 + gain + i, "fallback": 0.1} for i, n in enumerate(names)]
        mean = {k: sum(x[k] for x in images) / len(images) for k in ("bpp", "psnr_y", "psnr_rgb")}
        return {"model": model, "images": images, "mean": mean}

    for q in (10, 25, 40, 55):
        (tmp_path / f"base_q{q}.json").write_text(json.dumps(result("plain", q, 0.0)))
        (tmp_path / f"new_{q}.json").write_text(json.dumps(result("learned", q, 0.5)))
    evaluate_bd.main(["--base", *sorted(map(str, tmp_path.glob("base_*"))), "--new", *sorted(map(str, tmp_path.glob("new_*")))])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| PSNR")}
    assert set(rows) == {"PSNR-Y", "PSNR-RGB"} and "(+0.50 dB)" in rows["PSNR-Y"]
    assert all(float(c.strip().strip("*%").split("%")[0]) < 0 for c in rows["PSNR-Y"].split("|")[2:5])
    (tmp_path / "new_55.json").write_text(json.dumps(result("learned", 55, 0.5, names=("a", "c"))))
    with pytest.raises(SystemExit, match="same images"):
        evaluate_bd.main(["--base", *map(str, tmp_path.glob("base_*")), "--new", *map(str, tmp_path.glob("new_*"))])


def test_evaluate_bd_of_budget_files(tmp_path, capsys):
    """``evaluate_bd`` on ``refscale evaluate --bpp`` results: one point per budget (the qualities
    differ per image), a scale picker's choice counted per point."""
    from benchmarks import evaluate_bd

    def result(model, budget, gain, picker):
        images = [{"name": n, "quality": 20 + i + int(budget * 100), "bpp": budget * (0.95 - i / 20),
                   "psnr_y": 30 + 3 * budget + gain + i, "psnr_rgb": 28 + 3 * budget + gain + i, "fallback": 0.0,
                   **({"member": f"m{1 + i}", "scale": 1 + i} if picker else {})} for i, n in enumerate(("a", "b"))]
        mean = {k: sum(x[k] for x in images) / len(images) for k in ("bpp", "psnr_y", "psnr_rgb")}
        return {"model": model, "budget": {"bpp": budget}, "images": images, "mean": mean}

    for b in (0.05, 0.1, 0.2, 0.4):
        (tmp_path / f"base_b{b}.json").write_text(json.dumps(result("plain", b, 0.0, False)))
        (tmp_path / f"new_b{b}.json").write_text(json.dumps(result("picker", b, 0.3, True)))
    evaluate_bd.main(["--base", *map(str, tmp_path.glob("base_*")), "--new", *map(str, tmp_path.glob("new_*"))])
    out = capsys.readouterr().out
    assert "| <= 0.05 bpp |" in out and "| x1 1, x2 1 |" in out and "(+0.30 dB)" in out
    assert "changed pixels" not in out  # no change masks in these results
    for f in tmp_path.glob("*_b*.json"):  # a change mask on image "a" only: its changed pixels are scored too
        r = json.loads(f.read_text())
        r["images"][0]["psnr_y_changed"] = r["mean"]["psnr_y_changed"] = r["images"][0]["psnr_y"] - 3
        f.write_text(json.dumps(r))
    evaluate_bd.main(["--base", *map(str, tmp_path.glob("base_*")), "--new", *map(str, tmp_path.glob("new_*"))])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| PSNR-Y, changed pixels"))
    assert "(+0.30 dB)" in row and row.rstrip(" |").endswith("| -")  # image "b" has no mask
    (tmp_path / "new_b0.4.json").write_text(json.dumps(result("picker", 0.1, 0.3, True)))
    with pytest.raises(SystemExit, match="two files of budget 0.1"):
        evaluate_bd.main(["--base", *map(str, tmp_path.glob("base_*")), "--new", *map(str, tmp_path.glob("new_*"))])
