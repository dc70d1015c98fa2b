"""Regenerate every table block of the docs pages from the results kept in docs/results/ (no measurement).

``python -m benchmarks render`` rewrites each ``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``
block of docs/*.md from ``docs/results/NAME.json`` (``:`` in a name is ``_`` in the file name);
``--check`` changes nothing and exits 1 where a page would change, a block has no results file or
a results file no block (``tests/test_docs_results.py`` runs it, so the pages and their data cannot
drift apart). ``--adopt`` first keeps a block that has no results file (written by hand, or
measured before its results were kept) as data, parsed back from its page: the same text.

A results file is one block as data, small JSON::

    {"block": "oscd-table",
     "source": ["the command that measured it", "..."],
     "note": "optional: where the numbers come from",
     "parts": [{"columns": ["scale", "method", ...], "align": "rl...", "rows": [["x2", "bicubic", ...], ...]},
               {"text": ["a line of prose or of a command", "", ...]}]}

``parts`` in page order: a Markdown table (its header, ``align`` one letter per column: ``l``
``---``, ``r`` ``---:``, ``c`` ``:---:``; cells as shown, a blank cell ``""``, or ``null`` for a
blank written ``| |``) or lines of text. Every benchmark's ``--write`` goes through
:func:`benchmarks.report_common.write_section`, which stores the block here (:func:`parse`, with
the command line as ``source``) and writes the page from it (:func:`render`): a new measurement
updates the data and the page together, and the page is always what ``render`` gives.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

from benchmarks import ROOT, store

#: the docs pages and, beside them, their results
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
#: a regenerated block: its markers alone on their lines (a marker quoted inside a line is no block)
BLOCK = re.compile(r"^<!-- (?P<name>[\w:.-]+):start -->\n(?:(?P<body>.*?)\n)?<!-- (?P=name):end -->$", re.S | re.M)
ALIGN = {"l": "---", "r": "---:", "c": ":---:"}


def filename(block: str) -> str:
    """The results file of ``block``: its name with ``:`` as ``_`` (no colon in file names), ``.json``."""
    return re.sub(r"[^\w.-]", "_", block) + ".json"


def _cells(line: str) -> list[str | None]:
    inner = line[1:-1] if line.endswith("|") else line[1:]
    return [None if c == " " else c.strip() for c in inner.split("|")]


def _row(cells) -> str:
    return "|" + "|".join(" " if c is None else f" {c} " for c in cells) + "|"


def _table(lines: list[str]) -> dict | None:
    """A Markdown table as columns / align / rows, or None where that would not give ``lines`` back."""
    if len(lines) < 2:
        return None
    seps = _cells(lines[1])
    code = {v: k for k, v in ALIGN.items()}
    if any(s not in code for s in seps):
        return None
    part = {"columns": _cells(lines[0]), "align": "".join(code[s] for s in seps), "rows": [_cells(x) for x in lines[2:]]}
    return part if _part_lines(part) == lines else None


def _part_lines(part: dict) -> list[str]:
    if "text" in part:
        return list(part["text"])
    return [_row(part["columns"]), "|" + "|".join(ALIGN[a] for a in part["align"]) + "|", *map(_row, part["rows"])]


def parse(body: str) -> list[dict]:
    """The parts of a block's Markdown ``body``: each table as data, the lines between as text;
    :func:`render` of them gives ``body.strip()`` back exactly (a table that would not is kept as text)."""
    parts: list[dict] = []
    lines = body.strip().splitlines()
    i = 0
    while i < len(lines):
        j = i
        if lines[i].startswith("|"):
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            table = _table(lines[i:j])
            if table is not None:
                parts.append(table)
                i = j
                continue
        while j < len(lines) and (j == i or not lines[j].startswith("|")):
            j += 1
        if parts and "text" in parts[-1]:
            parts[-1]["text"].extend(lines[i:j])
        else:
            parts.append({"text": lines[i:j]})
        i = j
    return parts


def render(doc: dict) -> str:
    """The Markdown body of a results file's block (without its markers)."""
    return "\n".join(line for part in doc["parts"] for line in _part_lines(part))


def dumps(doc: dict) -> str:
    """``doc`` as JSON text, one table row or text line a line (small diffs when a number changes)."""
    one = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    out = []
    for key, value in doc.items():
        if key != "parts":
            many = isinstance(value, list) and value
            out.append(f" {one(key)}: " + ("[\n" + ",\n".join(f"  {one(v)}" for v in value) + "\n ]" if many else one(value)))
            continue
        parts = []
        for part in value:
            if "text" in part:
                lines = ",\n".join(f"   {one(x)}" for x in part["text"])
                parts.append(f'  {{"text": [\n{lines}\n  ]}}')
            else:
                rows = ",\n".join(f"   {one(r)}" for r in part["rows"])
                parts.append(f'  {{"columns": {one(part["columns"])}, "align": {one(part["align"])}, "rows": [\n{rows}\n  ]}}')
        out.append(' "parts": [\n' + ",\n".join(parts) + "\n ]")
    return "{\n" + ",\n".join(out) + "\n}\n"


def document(block: str, body: str, source, note: str | None = None) -> dict:
    """The results file of ``block`` whose Markdown is ``body``, measured by ``source`` (a command or a list)."""
    doc = {"block": block, "source": source if isinstance(source, list) else [source]}
    if note:
        doc["note"] = note
    doc["parts"] = parse(body)
    return doc


def save(doc: dict, folder: Path = RESULTS) -> Path:
    """Write results file ``doc`` into ``folder`` (atomically, as :mod:`benchmarks.store` does)."""
    return store.write_text(dumps(doc), Path(folder) / filename(doc["block"]))


def load(folder: Path = RESULTS) -> dict[str, dict]:
    """Every results file in ``folder``, by block name."""
    docs = {}
    for path in sorted(Path(folder).glob("*.json")):
        doc = json.loads(path.read_text())
        if path.name != filename(doc["block"]):
            raise SystemExit(f"{path}: block {doc['block']!r} belongs in {filename(doc['block'])}")
        docs[doc["block"]] = doc
    return docs


def blocks(text: str) -> list[str]:
    """The names of the blocks in a page's ``text``."""
    return [m.group("name") for m in BLOCK.finditer(text)]


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with block ``name``'s body replaced by ``body`` (stripped)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}" if body.strip() else f"{start}\n{end}"
    return BLOCK.sub(lambda m: block if m.group("name") == name else m.group(0), text)


def regenerate(docs_dir: Path = DOCS, results: Path | None = None) -> tuple[dict[Path, str], list[str]]:
    """The new text of every page of ``docs_dir`` with its blocks rendered from ``results``
    (default ``docs_dir/results``), and the problems: blocks without a results file, results
    files without a block."""
    data = load(results or Path(docs_dir) / "results")
    pages, problems, seen = {}, [], set()
    for page in sorted(Path(docs_dir).glob("*.md")):
        text = new = page.read_text()
        for name in blocks(text):
            seen.add(name)
            if name not in data:
                problems.append(f"{page.name}: block {name} has no results file {filename(name)}")
                continue
            new = replace_block(new, name, render(data[name]))
        pages[page] = new
    problems += [f"{filename(name)}: no page holds block {name}" for name in sorted(set(data) - seen)]
    return pages, problems


#: a command line in a page: a benchmark or an evaluation
COMMAND = re.compile(r"^\s*(?:PYTHONPATH=\S+ )?(?:python -m benchmarks|refscale evaluate)\b")


def commands_near(text: str, name: str) -> list[str]:
    """The commands quoted for block ``name`` of a page's ``text``: those of the fenced code
    blocks between the previous heading (or block end) and the block, then those inside it."""
    m = next(m for m in BLOCK.finditer(text) if m.group("name") == name)
    before = text[:m.start()].splitlines()
    i = len(before)
    while i > 0 and not before[i - 1].startswith("#") and not before[i - 1].endswith(":end -->"):
        i -= 1
    found, fence = [], False
    for line in before[i:]:
        if line.startswith("```"):
            fence = not fence
        elif fence and COMMAND.match(line):
            found.append(line.strip())
    found += [c.strip() for c in (m.group("body") or "").splitlines() if COMMAND.match(c) and c.strip() not in found]
    return found


def adopt(docs_dir: Path = DOCS, names: list[str] | None = None, results: Path | None = None) -> list[Path]:
    """Keep blocks written by hand (or measured before their results were kept) as data: parse
    each block of ``names`` (default: every block without a results file) back from its page
    into ``results``, the same text; ``source``: the file's earlier one, else the commands quoted
    with the block (:func:`commands_near`). Returns the files written."""
    folder = Path(results or Path(docs_dir) / "results")
    data = load(folder) if folder.is_dir() else {}
    written = []
    for page in sorted(Path(docs_dir).glob("*.md")):
        text = page.read_text()
        for m in BLOCK.finditer(text):
            name = m.group("name")
            if (name in data) if names is None else (name not in names):
                continue
            source = data.get(name, {}).get("source") or commands_near(text, name) or ["(written by hand)"]
            doc = document(name, m.group("body") or "", source, note=f"parsed back from the block in docs/{page.name}")
            written.append(save(doc, folder))
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 where a page would change")
    ap.add_argument("--docs", type=Path, default=DOCS, help="the docs folder (default: the repository's docs/)")
    ap.add_argument("--results", type=Path, default=None, help="the results folder (default DOCS/results)")
    ap.add_argument("--adopt", nargs="*", metavar="NAME", default=None,
                    help="first keep blocks as data, parsed back from their pages: these (re-parsed), or without a "
                         "NAME every block that has no results file (a block written by hand or before this existed)")
    args = ap.parse_args(argv)
    if args.adopt is not None:
        for path in adopt(args.docs, args.adopt or None, args.results):
            print("kept", path)
    pages, problems = regenerate(args.docs, args.results)
    changed = [p for p, text in pages.items() if text != p.read_text()]
    for page in changed:
        if args.check:
            old = page.read_text().splitlines(keepends=True)
            sys.stdout.writelines(difflib.unified_diff(old, pages[page].splitlines(keepends=True), str(page), "rendered"))
        else:
            page.write_text(pages[page])
            print("updated", page)
    for problem in problems:
        print(problem, file=sys.stderr)
    if args.check and changed:
        print(f"{len(changed)} page(s) differ from docs/results: python -m benchmarks render", file=sys.stderr)
    return 1 if problems or (args.check and changed) else 0
