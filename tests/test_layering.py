"""The import graph of the package (every import, also those inside functions): no cycle, and
the layers of refscale.protocol's docstring -- protocol < models < zoo < pipeline < CLI."""
import ast
from pathlib import Path

import refscale

ROOT = Path(refscale.__file__).resolve().parent


def import_graph() -> dict[str, set[str]]:
    """module -> the refscale modules it imports (``from refscale import ops`` -> refscale.ops)."""
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [mod, *subs]
            else:
                continue
            edges |= {t for t in targets if t in mods and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_layers():
    graph = import_graph()
    assert graph["refscale.protocol"] <= {"refscale.errors"}
    onnx = {m for m in graph if m == "refscale.onnx" or m.startswith("refscale.onnx.")}
    assert {"refscale.onnx.graphs", "refscale.onnx.runtime", "refscale.onnx.export", "refscale.onnx.onboard",
            "refscale.onnx.wrap"} <= onnx
    upper = {"refscale.zoo", "refscale.pipeline", "refscale.evaluate", "refscale.cli", "refscale.container",
             "refscale.demo", "refscale.files", "refscale.export", "refscale"} | onnx | \
        {m for m in graph if m.startswith("refscale.train")}
    for name, edges in graph.items():
        if name.startswith(("refscale.models", "refscale.nn", "refscale.ops")):
            assert not edges & upper, (name, edges & upper)
    assert not graph["refscale.pipeline"] & ({"refscale.cli", "refscale.evaluate", "refscale.zoo", "refscale.export"} | onnx)
    # the ONNX export sits above the models and the pipeline, like the CLI: only the CLI imports it
    # (refscale.export is its old name, re-exporting refscale.onnx) ...
    assert all("refscale.export" not in edges for name, edges in graph.items() if name != "refscale.cli")
    for name, edges in graph.items():
        if name not in onnx | {"refscale.cli", "refscale.export"}:
            assert not edges & onnx, (name, edges & onnx)
    # ... and goes through the protocol: it imports no model module (no class switch) and nothing above it
    models = {m for m in graph if m.startswith("refscale.models")}
    for name in onnx:
        assert not graph[name] & (models | {"refscale.cli", "refscale.export", "refscale.evaluate", "refscale.zoo"}), name
    assert all("refscale.cli" not in edges for name, edges in graph.items() if name != "refscale.__main__")


def test_one_tile_loop_below_the_pipeline():
    """refscale.tiling (the Tiler of the encoder, decoder and on-board loop) sits below the
    pipeline: it imports no model, container, pipeline or anything above them."""
    graph = import_graph()
    assert graph["refscale.tiling"] <= {"refscale.ops", "refscale.raster"}
    assert "refscale.tiling" in graph["refscale.pipeline"] and "refscale.tiling" in graph["refscale.onnx.onboard"]


def test_protocol_calls_the_pipeline_only_by_name():
    """Rescaler.encode/decode reach the pipeline at call time (importlib, no import statement and
    no binding of the pipeline into the protocol at import); nothing else is looked up that way."""
    text = (ROOT / "protocol.py").read_text()
    assert text.count("importlib.import_module(") == 1 and 'importlib.import_module("refscale.pipeline")' in text
    assert "bind_pipeline" not in text and "bind_pipeline" not in (ROOT / "pipeline.py").read_text()

