"""The docs tables as data (issue 28, item 1): every regenerated block of docs/*.md is rendered from
its small JSON in docs/results/ by one renderer (``python -m benchmarks render``), so the pages and
their data cannot drift apart; a benchmark's ``--write`` updates both."""
from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import main as bench_main
from benchmarks import render
from benchmarks.report_common import write_section

#: each results file, and all of them together (summaries, not raw measurements)
MAX_FILE_BYTES = 200_000
MAX_TOTAL_BYTES = 1_500_000

BODY = """Means over 3 images. Regenerate with:

    python -m benchmarks x report --write p.md

| model | PSNR-Y | vs bicubic | note |
|---|---:|---:|:---:|
| bicubic | 30.00 | | - |
| **fgrn** | **35.00** | +5.00 |  |

Text after the table.
| not | a table |
| because | no separator line |"""


def test_the_pages_are_what_their_results_render(capsys):
    """``python -m benchmarks render --check``: no page would change, every block has its results
    file and every results file its block."""
    rc = bench_main(["render", "--check"])
    out = capsys.readouterr()
    assert rc == 0, out.out[-3000:] + out.err


def test_every_block_is_covered_and_its_tables_are_data():
    pages, problems = render.regenerate()
    assert not problems, problems
    docs = render.load()
    for page in pages:
        for name in render.blocks(page.read_text()):
            doc = docs[name]
            assert doc["source"] and all(isinstance(s, str) and s for s in doc["source"]), name
            tables = [p for p in doc["parts"] if "rows" in p]
            stray = [line for p in doc["parts"] if "text" in p for line in p["text"] if line.startswith("|")]
            assert not stray, f"{name}: table lines kept as text: {stray[:2]}"
            for t in tables:
                assert all(len(r) == len(t["columns"]) == len(t["align"]) for r in t["rows"]), name


def test_results_files_are_small():
    sizes = {p.name: p.stat().st_size for p in render.RESULTS.glob("*.json")}
    assert sizes
    big = {n: s for n, s in sizes.items() if s > MAX_FILE_BYTES}
    assert not big, f"results files over {MAX_FILE_BYTES} bytes: {big}"
    assert sum(sizes.values()) <= MAX_TOTAL_BYTES, sum(sizes.values())


def test_parse_and_render_give_the_block_back():
    parts = render.parse("\n" + BODY + "\n\n")
    assert render.render({"parts": parts}) == BODY
    table = parts[1]
    assert table["columns"] == ["model", "PSNR-Y", "vs bicubic", "note"] and table["align"] == "lrrc"
    assert table["rows"] == [["bicubic", "30.00", None, "-"], ["**fgrn**", "**35.00**", "+5.00", ""]]
    assert parts[0]["text"] == ["Means over 3 images. Regenerate with:", "", "    python -m benchmarks x report --write p.md", ""]
    assert parts[2]["text"][-2:] == ["| not | a table |", "| because | no separator line |"]  # kept as text
    doc = render.document("rd:x", BODY, "python -m benchmarks x report")
    assert render.filename("rd:x") == "rd_x.json" and doc["source"] == ["python -m benchmarks x report"]
    assert json.loads(render.dumps(doc)) == doc  # the file's text is JSON of the document
    assert render.render(json.loads(render.dumps(doc))) == BODY


def test_replace_block_ignores_a_marker_quoted_in_a_line():
    text = "a `<!-- t:start -->` quoted\n<!-- t:start -->\nold\n<!-- t:end -->\nend `<!-- t:end -->`\n"
    assert render.blocks(text) == ["t"]
    assert render.replace_block(text, "t", "new\n") == text.replace("\nold\n", "\nnew\n")


@pytest.fixture
def docs(tmp_path):
    """A copy of the docs pages and their results."""
    shutil.copytree(render.DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("figures"))
    return tmp_path / "docs"


def test_check_finds_drift_and_render_repairs_it(docs, capsys):
    args = ["--docs", str(docs)]
    path = docs / "results" / "oscd-table.json"
    doc = json.loads(path.read_text())
    table = next(p for p in doc["parts"] if "rows" in p)
    old = table["rows"][0][2]
    table["rows"][0][2] = "99.99"
    path.write_text(render.dumps(doc))
    assert render.main([*args, "--check"]) == 1
    out = capsys.readouterr().out
    assert f"-| x2 | bicubic | {old} |" in out and "+| x2 | bicubic | 99.99 |" in out
    assert render.main(args) == 0
    assert "| x2 | bicubic | 99.99 |" in (docs / "oscd.md").read_text()
    assert render.main([*args, "--check"]) == 0
    (docs / "results" / "select-ref.json").unlink()  # a block without data
    (docs / "results" / "orphan.json").write_text(render.dumps(render.document("orphan", "x", "cmd")))
    assert render.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "block select-ref has no results file select-ref.json" in err and "no page holds block orphan" in err


def test_write_section_keeps_the_block_as_data(tmp_path, capsys):
    """A benchmark's ``--write``: the page and ``results/NAME.json`` beside it, the page as rendered."""
    page = tmp_path / "p.md"
    page.write_text("# P\n\nText.\n\n<!-- rd:x:start -->\nold\n<!-- rd:x:end -->\n\nAfter.\n")
    write_section(page, "\n" + BODY + "\n", "<!-- rd:x:start -->", "<!-- rd:x:end -->", source="python -m benchmarks x")
    saved = json.loads((tmp_path / "results" / "rd_x.json").read_text())
    assert saved["block"] == "rd:x" and saved["source"] == ["python -m benchmarks x"]
    assert page.read_text() == f"# P\n\nText.\n\n<!-- rd:x:start -->\n{BODY}\n<!-- rd:x:end -->\n\nAfter.\n"
    assert render.main(["--docs", str(tmp_path), "--check"]) == 0
    capsys.readouterr()


def test_the_source_recorded_is_the_command_a_user_types(monkeypatch):
    from benchmarks.report_common import command_line

    monkeypatch.setattr("sys.argv", ["python -m benchmarks oscd_report", "table", "--write", "docs/oscd.md"])
    assert command_line() == "python -m benchmarks oscd_report table --write docs/oscd.md"
    monkeypatch.setattr("sys.argv", ["somewhere/benchmarks/rd_curves.py", "report", "--name", "a b"])  # python -m benchmarks.rd_curves
    assert command_line() == "python -m benchmarks rd_curves report --name 'a b'"


def test_adopt_keeps_a_block_written_by_hand_as_data(tmp_path, capsys):
    """A block without a results file fails the check; ``--adopt`` parses it back from its page
    (same text) with the commands quoted above it as its source."""
    page = tmp_path / "p.md"
    text = f"# P\n\n## Speed\n\n```\npython -m benchmarks x run --out a.json\n```\n\n<!-- t:start -->\n{BODY}\n<!-- t:end -->\n"
    page.write_text(text)
    assert render.main(["--docs", str(tmp_path), "--check"]) == 1
    assert render.main(["--docs", str(tmp_path), "--adopt", "--check"]) == 0
    doc = json.loads((tmp_path / "results" / "t.json").read_text())
    assert doc["source"] == ["python -m benchmarks x run --out a.json", "python -m benchmarks x report --write p.md"]
    assert page.read_text() == text and render.render(doc) == BODY
    page.write_text(text.replace("30.00", "31.00"))  # edited by hand: re-adopted by name, its source kept
    assert render.main(["--docs", str(tmp_path), "--check"]) == 1
    assert render.main(["--docs", str(tmp_path), "--adopt", "t"]) == 0
    assert json.loads((tmp_path / "results" / "t.json").read_text())["parts"][1]["rows"][0][1] == "31.00"
    capsys.readouterr()
