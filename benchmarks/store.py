"""The results store of the benchmarks: every benchmark writes and reads its JSON results here.

A results file is written whole and atomically (through a ``.tmp`` file beside it, so a stopped
run keeps every point it saved; one writer per file at a time), as ``json.dumps(data, indent=1)``
and a newline; values JSON does not know are written by ``.item()`` (numpy and torch scalars) or
as text. A benchmark's default file is ``out/bench/NAME.json`` (``out/`` is ignored by git),
relative to the working directory: the repository root when run as ``python -m benchmarks NAME``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

#: where the benchmarks keep their results by default (relative to the working directory)
OUT = Path("out") / "bench"


def default_path(name: str, part: str | None = None) -> Path:
    """The default results file of benchmark ``name`` (its ``part``, e.g. a subcommand's):
    ``out/bench/NAME.json`` or ``out/bench/NAME-PART.json``."""
    return OUT / (f"{name}-{part}.json" if part else f"{name}.json")


def plain(value):
    """A value JSON does not know as one it does: ``.item()`` of numpy and torch scalars, else text."""
    return value.item() if hasattr(value, "item") else str(value)


def save(data, path: str | os.PathLike, default=plain) -> Path:
    """Write ``data`` to ``path`` as JSON atomically, its folder created; ``default`` turns the
    values JSON does not know into ones it does (:func:`plain`). Returns the path."""
    return write_text(json.dumps(data, indent=1, default=default) + "\n", path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (through ``PATH.tmp``), its folder created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike, missing=None):
    """The JSON in ``path``; ``missing`` where there is no such file (a run that starts afresh)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else missing
