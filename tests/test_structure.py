"""The shape of the tree: no import cycle (imports inside functions count), short functions, and no
branch on a method's name outside the method's own module."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_FUNCTION_LINES = 60
# the rooms that must ask the method registry instead of naming methods
REGISTRY_CLIENTS = ("train", "config", "bench", "sweep", "viz/report", "cli")


def _room_files(room: str) -> list[Path]:
    """A room is a module or a package."""
    base = SRC / "lore" / room
    return sorted(base.glob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "lore").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            for candidate in [target] + [f"{target}.{a.name}" for a in node.names]:
                if candidate in known and candidate != name:
                    edges.add(candidate)
        elif isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name in known and a.name != name}
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_import_graph_has_no_cycle():
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # the checker sees lazy imports and finds a cycle when there is one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_harness_rooms_do_not_branch_on_method_names():
    from lore.models.registry import aliases, available_methods

    names = set(available_methods()) | set(aliases())
    assert {"lore", "vpt-deep", "lore-no-kp"} <= names
    found = []
    for path in [p for room in REGISTRY_CLIENTS for p in _room_files(room)]:
        room = path.relative_to(SRC / "lore").with_suffix("")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            text = ast.unparse(node)
            constants = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
            # a comparison of something called method (cfg.method, method, name of a method) with a
            # method's name
            if "method" in text and constants & names:
                found.append(f"{room}.py:{node.lineno}: {text}")
    assert not found, found


def test_the_harness_asks_models_through_their_declared_interface():
    """train, bench, checkpoint, viz and the feature cache call what AdaptedViT declares (prepare,
    set_negatives, negative_source, knowledge_width, kla_module, feature_head, bare), never
    hasattr/getattr on a model to find out what a method can do."""
    rooms = [*sorted((SRC / "lore" / "train").glob("*.py")), *sorted((SRC / "lore" / "viz").glob("*.py")),
             SRC / "lore" / "bench.py", SRC / "lore" / "checkpoint.py", SRC / "lore" / "features.py"]
    probes = []
    for path in rooms:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("hasattr", "getattr") and node.args
                    and isinstance(node.args[0], ast.Name) and node.args[0].id in ("model", "m", "net")):
                probes.append(f"{path.name}:{node.lineno}")
    assert probes == []
    # the probe finder finds one
    tree = ast.parse("hasattr(model, 'kla')")
    assert any(isinstance(n, ast.Call) and n.func.id == "hasattr" for n in ast.walk(tree))
