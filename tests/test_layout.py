"""The package's shape, checked from its source: no import cycle between its modules, no module
importing another's private names, and the CLI and server routes kept small (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "acculturate"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported_from(module: str, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """(imported module, names) for every import of the package's own modules, at any depth
    (imports inside functions count: a cycle through a lazy import is still a cycle)."""
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            source = _imported_from(module, node)
            if source and source.split(".")[0] == "acculturate":
                yield source, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "acculturate":
                    yield alias.name, []


def _edges() -> dict[str, set[str]]:
    edges = {module: set() for module in MODULES}
    for module in MODULES:
        for source, names in _imports(module):
            # `from pkg import sub` imports the submodule; `from pkg import name` the package.
            targets = [f"{source}.{n}" if f"{source}.{n}" in MODULES else source for n in names] or [source]
            edges[module] |= {t for t in targets if t in MODULES and t != module}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_checks_see_the_package():
    assert len(MODULES) > 100 and "acculturate.decode.static" in MODULES
    assert "acculturate.decode.cache_layer" in _edges()["acculturate.decode.static"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(_edges()) == []


def test_no_module_imports_a_private_name_from_another():
    private = [f"{module} imports {name} from {source}"
               for module in MODULES for source, names in _imports(module)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_cli_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "cli").glob("*.py")}
    assert sizes and max(sizes.values()) <= 200, sizes


@pytest.mark.parametrize("folder", ["cli", "serve"])
def test_parser_and_route_functions_stay_under_100_lines(folder):
    long = []
    for path in (PACKAGE / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
