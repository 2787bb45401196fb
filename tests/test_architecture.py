"""The package's layout keeps its promises: imports flow one way and no module reaches into another's privates.

Walks every ``import`` / ``from ... import`` statement in ``lance_concepts`` (the lazy ones inside
functions too: a lazy import is still a dependency) without importing anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lance_concepts"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def walk_outside_type_checking(tree):
    """ast.walk, minus ``if TYPE_CHECKING:`` blocks (annotation-only imports are not dependencies)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            todo.append(child)


def package_imports():
    """Yield (importer, imported module, imported name or None) for every import inside the package."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in walk_outside_type_checking(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("lance_concepts"):
                        yield name, alias.name, None
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, node, path.name == "__init__.py")
                if not target.startswith("lance_concepts"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:  # `from . import module`
                        yield name, sub, None
                    else:
                        yield name, target, alias.name


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in package_imports():
        if imported != importer:
            graph.setdefault(importer, set()).add(imported)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names():
    leaks = [f"{importer} imports {imported}.{name}"
             for importer, imported, name in package_imports()
             if name and name.startswith("_") and not name.startswith("__") and imported != importer]
    assert leaks == []


ROOMS = ["errors", "records", "threads", "models", "concepts", "lake", "query", "retrieval", "serve", "demo", "cli"]


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("importer_room", ROOMS)
def test_rooms_depend_only_on_rooms_upstream(importer_room):
    """Data flows models -> concepts -> lake -> query / retrieval -> cli / demo; never back (the CLI may call anything)."""
    order = {r: i for i, r in enumerate(ROOMS)}
    upstream_violations = sorted(
        f"{importer} -> {imported}" for importer, imported, _ in package_imports()
        if room(importer) == importer_room and room(imported) in order
        and order[room(imported)] > order[importer_room]
        and not (importer_room == "query" and room(imported) == "retrieval")
        and not (importer_room == "retrieval" and room(imported) == "query")
    )
    assert upstream_violations == []
