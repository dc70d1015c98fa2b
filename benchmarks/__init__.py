"""The benchmarks and report generators of refscale, one tool: ``python -m benchmarks NAME [args]``
(from the repository root) runs ``benchmarks/NAME.py``'s ``main(argv)``; ``python -m benchmarks``
lists them with the first sentence of each module's docstring (read from the source: listing
imports no benchmark).

Conventions (tests/test_benchmarks_cli.py checks them):

- every module but the helpers (:data:`HELPERS`) is a benchmark with ``main(argv=None)``, its
  options in ``argparse``, and ``--help`` cheap (heavy imports inside the functions where possible);
- the helpers are imported as ``from benchmarks.report_common import ...`` -- no ``sys.path``
  inserts, so ``python benchmarks/NAME.py`` works only where the repository root is importable;
  ``python -m benchmarks NAME`` is the documented form;
- results: JSON through :mod:`benchmarks.store` (one writer, default file ``out/bench/NAME.json``);
  Markdown blocks of the docs pages through :func:`benchmarks.report_common.write_section`
  (``--write docs/<page>.md`` replaces a ``<!-- name:start -->`` ... ``<!-- name:end -->`` block and
  keeps it as data in ``docs/results/NAME.json``, from which ``python -m benchmarks render``
  regenerates every block: :mod:`benchmarks.render`);
- the package's public API only: no ``from refscale... import _x`` and no ``module._x``.
"""
from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from pathlib import Path

#: the repository root (benchmarks/ is beside refscale/)
ROOT = Path(__file__).resolve().parents[1]
#: modules of benchmarks/ that are no benchmark: shared helpers
HELPERS = ("report_common", "store")


def names() -> list[str]:
    """The benchmarks: every module of benchmarks/ but the helpers, sorted."""
    here = Path(__file__).resolve().parent
    return sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_") and p.stem not in HELPERS)


def summary(name: str) -> str:
    """The first sentence (of its first paragraph) of benchmark ``name``'s module docstring, read without importing it."""
    doc = ast.get_docstring(ast.parse((Path(__file__).resolve().parent / f"{name}.py").read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    m = re.match(r".+?[.?!](?=\s+[A-Z]|$)", first)  # not at "Fig. 6"
    return m.group(0) if m else first


def command(name: str, *args) -> list[str]:
    """The command line running benchmark ``name`` in a new process (with :func:`env`)."""
    return [sys.executable, "-m", "benchmarks", name, *map(str, args)]


def env() -> dict[str, str]:
    """The environment of a :func:`command`: this one, with the repository root on ``PYTHONPATH``."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def usage() -> str:
    width = max(map(len, names()))
    lines = [f"  {n:<{width}}  {summary(n)}" for n in names()]
    return ("usage: python -m benchmarks NAME [args]   (python -m benchmarks NAME --help: its options)\n\n"
            "benchmarks:\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run benchmark ``argv[0]`` with the rest of ``argv``; list the benchmarks without one."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names():
        print(f"python -m benchmarks: no benchmark {name!r}\n\n{usage()}", end="", file=sys.stderr)
        return 2
    sys.argv = [f"python -m benchmarks {name}", *rest]  # argparse's prog
    try:
        rc = importlib.import_module(f"benchmarks.{name}").main(rest)
    except Exception as e:
        from refscale.errors import RefScaleError

        if not isinstance(e, RefScaleError):
            raise
        print(f"{name}: error: {e}", file=sys.stderr)  # bad input: one line, exit 2 (as the refscale CLI)
        return 2
    return rc if isinstance(rc, int) else 0
