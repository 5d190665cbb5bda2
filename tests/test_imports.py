"""Imports point down: no cycle among the project's modules, models/ never imports streaming/, clients import no model.

Read from the source (an AST walk over every import statement, including those inside functions and
``if TYPE_CHECKING:`` blocks), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("streaming", "models", "evaluation", "bench", "scripts")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(dotted: str) -> str | None:
    """The longest project module a dotted name refers to (``a.b.C`` -> ``a.b``), or None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in MODULES:
            return prefix
    return None


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports (``from a import b`` counts as ``a.b`` when that is a module, else ``a``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [_resolve(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found = [_resolve(f"{base}.{alias.name}") for alias in node.names]
        else:
            continue
        targets.update(t for t in found if t is not None and t != name)
    return targets


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_imports_it_should() -> None:
    """Sanity of the walk itself: known edges are found (relative and absolute, module and name imports)."""
    assert "streaming.session" in GRAPH["streaming.engine.scheduler"]
    assert "streaming.transports.rtc_support" in GRAPH["streaming.transports.webrtc_session"]
    assert "models.errors" in GRAPH["streaming.protocol"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["streaming", "models", "evaluation"])
def test_no_import_cycle(package: str) -> None:
    """No two modules of a package import each other, directly or around a loop (lazy imports included)."""
    graph = {n: {t for t in ts if t.startswith(package)} for n, ts in GRAPH.items() if n.startswith(package)}
    assert _cycles(graph) == []


def test_models_never_import_streaming() -> None:
    """The models are below the runtime: nothing in models/ imports streaming/."""
    offenders = {n: sorted(t for t in ts if t.split(".")[0] == "streaming")
                 for n, ts in GRAPH.items() if n.split(".")[0] == "models"}
    assert {n: ts for n, ts in offenders.items() if ts} == {}


def test_runtime_imports_no_model_family() -> None:
    """streaming/ depends only on the model contract (models.base, errors, registry), never on a family.

    The composition root (the server and the CLI, through ``models.registry``) is the one place that
    names families; clients, transports and the engine stay family-agnostic.
    """
    allowed = {"models", "models.base", "models.errors", "models.registry", "models.weights"}
    offenders = {
        n: sorted(t for t in ts if t.split(".")[0] == "models" and t not in allowed)
        for n, ts in GRAPH.items()
        if n.split(".")[0] == "streaming"
    }
    assert {n: ts for n, ts in offenders.items() if ts} == {}


def test_clients_import_no_model_and_no_server() -> None:
    """The Python clients talk the protocol only: no model code, no server-side transport or engine."""
    for name, targets in GRAPH.items():
        if name.startswith("streaming.client"):
            bad = [t for t in targets if t.startswith(("models.", "streaming.engine", "streaming.server"))
                   and t != "models.errors"]
            assert bad == [], f"{name} imports {bad}"


def _bare_imports(path: Path) -> set[str]:
    """Top-level names of every import in a file (``a.b`` -> ``a``; relative imports excluded)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def _path_edits(path: Path) -> list[str]:
    """Source of each ``sys.path.insert/append`` call in a file."""
    text = path.read_text()
    return [ast.get_source_segment(text, node) or "" for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("insert", "append") and ast.unparse(node.func.value) == "sys.path"]


@pytest.mark.parametrize(("folder", "others"), [("bench", ("scripts",)), ("scripts", ("bench",))])
def test_bench_and_scripts_do_not_reach_into_each_other(folder: str, others: tuple[str, ...]) -> None:
    """Shared helpers live in packages (evaluation/, streaming/client/): no import of the other folder's files,
    and no sys.path edit pointing into it (a script may only put the repository root on the path)."""
    foreign = {p.stem for other in others for p in (ROOT / other).glob("*.py")} | set(others)
    for path in sorted((ROOT / folder).glob("*.py")):
        assert not (_bare_imports(path) & foreign), f"{path.name} imports {sorted(_bare_imports(path) & foreign)}"
        for edit in _path_edits(path):
            assert not any(f'"{o}"' in edit or f"'{o}'" in edit for o in others), f"{path.name}: {edit}"
