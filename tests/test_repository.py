"""The repository itself: no absolute machine path in the tracked tree, docs pages short enough to
read, every regenerated block in exactly one page (where the benchmark scripts' ``--write`` finds
it), links between the pages that resolve, and the size of the tracked tree."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: an absolute path of one machine: a Unix home, scratch, temp or mount folder, or a Windows drive
#: folder (written so that this file does not match itself)
ABSOLUTE_PATH = re.compile(r"(?<![\w.~$}/-])/(?:work|home|tmp|root|Users|mnt|scratch|data|srv|Volumes)/"
                           r"|(?<!\w)[A-Z]:\\{1,2}\w+\\{1,2}")
#: tracked files where such a pattern means something else (.gitignore patterns are repository-relative)
NOT_SCANNED = {".gitignore"}
MAX_PAGE_LINES = 400
MAX_INDEX_LINES = 150
#: the tracked tree (issue 28): figures as compact PNG, no duplicate weights
MAX_TREE_BYTES = 60_000_000
MARKER = re.compile(r"<!-- ([\w:.-]+):(start|end) -->")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte in its first 8 KiB)."""
    data = path.read_bytes()
    return None if b"\0" in data[:8192] else data.decode("utf-8", errors="replace")


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_no_absolute_machine_path_in_the_tracked_tree():
    hits = []
    for path in tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in NOT_SCANNED or not path.is_file():
            continue
        text = text_of(path)
        if text is None:
            continue
        for no, line in enumerate(text.splitlines(), 1):
            if ABSOLUTE_PATH.search(line):
                hits.append(f"{rel}:{no}: {line.strip()[:120]}")
    assert not hits, "absolute machine paths (write them relative to the repository root):\n" + "\n".join(hits)


def test_the_pattern_finds_machine_paths_and_spares_relative_ones():
    drive = "C" ":"  # split so that this file does not match the pattern itself
    for bad in ("--out /wo" "rk/eval8/x.json", "'/ho" "me/me/data'", drive + "\\Users\\me\\x.png", drive + "\\\\Users\\\\me"):
        assert ABSOLUTE_PATH.search(bad), bad
    for good in ("--data ../shared/data/oscd", "runs/irn-x2/tmp/", "#!/usr/bin/env bash", "except ModelError as e:\\n",
                 "https://example.org/home/x", "$HOME/.cache"):
        assert not ABSOLUTE_PATH.search(good), good


def test_docs_pages_are_short_enough_to_read():
    long = {p.name: n for p in pages() if (n := len(p.read_text().splitlines())) > MAX_PAGE_LINES}
    assert not long, f"pages over {MAX_PAGE_LINES} lines: {long}"
    index = DOCS / "index.md"
    assert len(index.read_text().splitlines()) <= MAX_INDEX_LINES


def test_every_regenerated_block_is_in_one_page_and_its_command_writes_there():
    seen: dict[str, str] = {}
    for page in pages():
        text = page.read_text()
        starts = [m.group(1) for m in MARKER.finditer(text) if m.group(2) == "start"]
        for name in starts:
            assert name not in seen, f"block {name} is in {seen[name]} and {page.name}"
            seen[name] = page.name
            block = re.search(rf"<!-- {re.escape(name)}:start -->(.*?)<!-- {re.escape(name)}:end -->", text, re.S)
            assert block, f"{page.name}: block {name} has no end marker after its start"
            for target in re.findall(r"--write ([^\s`]+)", block.group(1)):
                assert target == f"docs/{page.name}", f"{page.name}: block {name} says --write {target}"
        ends = [m.group(1) for m in MARKER.finditer(text) if m.group(2) == "end"]
        assert sorted(starts) == sorted(ends), f"{page.name}: unpaired markers"
    for expected in ("oscd-glance", "natural-glance", "oscd-table", "natural-table", "ood", "rd-summary", "misalignment"):
        assert expected in seen, expected


def test_links_between_pages_resolve():
    broken = []
    for page in [*pages(), ROOT / "README.md", ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_docs_pages_cited_anywhere_exist():
    """Code, configs, scripts and docs cite pages as ``docs/<page>.md``: each must exist (and the
    design document is docs/design.md, not a file outside the repository)."""
    missing = []
    for path in tracked_files():
        text = text_of(path) if path.is_file() else None
        if text is None:
            continue
        for name in set(re.findall(r"\bdocs/([\w.-]+\.md)\b", text)):
            if not (DOCS / name).is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}")
        if re.search(r"(?<![\w/])DESIGN\.md", text):
            missing.append(f"{path.relative_to(ROOT)}: the sketch outside the repository (the design document is docs/design.md)")
    assert not missing, missing


def test_write_finds_a_block_in_the_page_beside_the_one_named(tmp_path):
    from benchmarks.report_common import page_with, write_section

    (tmp_path / "oscd.md").write_text("# OSCD\n\n<!-- t:start -->\nold\n<!-- t:end -->\n")
    (tmp_path / "index.md").write_text("# Index\n\n<!-- g:start -->\nold\n<!-- g:end -->\n\nafter\n")
    write_section(tmp_path / "oscd.md", "new table", "<!-- t:start -->", "<!-- t:end -->")
    write_section(tmp_path / "oscd.md", "new glance", "<!-- g:start -->", "<!-- g:end -->")
    write_section(tmp_path / "gone.md", "found anyway", "<!-- g:start -->", "<!-- g:end -->")
    assert (tmp_path / "oscd.md").read_text() == "# OSCD\n\n<!-- t:start -->\nnew table\n<!-- t:end -->\n"
    assert (tmp_path / "index.md").read_text() == "# Index\n\n<!-- g:start -->\nfound anyway\n<!-- g:end -->\n\nafter\n"
    assert not (tmp_path / "gone.md").exists()
    assert page_with(tmp_path / "oscd.md", "<!-- new:start -->") == tmp_path / "oscd.md"  # appended there
    write_section(tmp_path / "oscd.md", "fresh", "<!-- new:start -->", "<!-- new:end -->")
    assert (tmp_path / "oscd.md").read_text().endswith("<!-- new:start -->\nfresh\n<!-- new:end -->\n")


def test_tracked_tree_is_at_most_60_mb():
    total = sum(p.stat().st_size for p in tracked_files() if p.is_file())
    assert total <= MAX_TREE_BYTES, f"{total / 1e6:.1f} MB tracked"
