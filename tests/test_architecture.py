"""The import graph of src/langmim, read statically with ``ast`` (function-level imports included):
arrows point down only, from entry points to the foundation, with no cycle between files or
between packages (see DESIGN.md, "Layout and the direction of dependencies")."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "langmim"
FOUNDATION = ("io", "dist", "transforms", "files")
FOUNDATION_MAY_IMPORT = {"errors", "files"}  # files: writes that never follow a link, torch-free
ABOVE_MODELS = {"engine", "api", "eval", "report", "export", "cli", "demo"}  # what models/ and methods/ never import

Edge = tuple[str, str]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Every langmim module that ``path`` imports, anywhere in the file, with the first line."""
    found: dict[str, int] = {}
    here = module if is_package(path) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import name``: name is a submodule when a file of that name exists
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                continue
            # importing a.b.c runs the __init__ of a.b too (the root package's lazy __init__ aside)
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):
                name = ".".join(parts[:depth])
                if name in modules and name != module and not module.startswith(name + "."):
                    found.setdefault(name, node.lineno)
            if target == PACKAGE and module != PACKAGE:
                found.setdefault(PACKAGE, node.lineno)
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[Edge, str]]:
    """Module -> the modules it imports, and where each edge is written (file:line)."""
    modules = all_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[Edge, str] = {}
    for module, path in modules.items():
        graph[module]
        for target, line in imported_names(module, path, modules).items():
            graph[module].add(target)
            where[(module, target)] = f"{path.relative_to(ROOT)}:{line}"
    return graph, where


def component(module: str) -> str:
    """The package-level node: a subpackage (models, engine...) or a top-level module (config, io...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def package_graph(graph: dict[str, set[str]], where: dict[Edge, str]) -> tuple[dict[str, set[str]], dict[Edge, list[str]]]:
    packages: dict[str, set[str]] = defaultdict(set)
    evidence: dict[Edge, list[str]] = defaultdict(list)
    for module, targets in graph.items():
        packages[component(module)]
        for target in targets:
            edge = (component(module), component(target))
            if edge[0] != edge[1]:
                packages[edge[0]].add(edge[1])
                evidence[edge].append(f"{module} -> {target} ({where[(module, target)]})")
    return packages, evidence


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A shortest cycle through each node that lies on one (within its strongly connected
    component, found by Tarjan's algorithm), each cycle listed once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            members = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.add(member)
                if member == node:
                    break
            if len(members) > 1:
                components.append(members)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found: list[list[str]] = []
    for members in components:
        for start in sorted(members):
            cycle = cycle_through(start, members, graph)
            if not any(set(cycle) == set(seen) for seen in found):
                found.append(cycle)
    return found


def cycle_through(start: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through ``start``, staying inside its component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    return paths[node] + [start]
                if succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def describe(cycle: list[str], where: dict) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        evidence = where[(a, b)]
        steps.append(f"  {a} -> {b}: " + (evidence if isinstance(evidence, str) else "; ".join(evidence)))
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


@pytest.fixture(scope="module")
def graphs():
    graph, where = import_graph()
    packages, evidence = package_graph(graph, where)
    return graph, where, packages, evidence


def test_no_cycle_between_files(graphs):
    graph, where, _, _ = graphs
    found = cycles(graph)
    assert not found, "import cycles between files:\n" + "\n".join(describe(c, where) for c in found)


def test_no_cycle_between_packages(graphs):
    _, _, packages, evidence = graphs
    found = cycles(packages)
    assert not found, "import cycles between packages:\n" + "\n".join(describe(c, evidence) for c in found)


def test_models_and_methods_import_nothing_above_them(graphs):
    _, _, packages, evidence = graphs
    bad = [(low, high) for low in ("models", "methods") for high in sorted(packages[low] & ABOVE_MODELS)]
    assert not bad, "models/methods import from above them:\n" + "\n".join(line for edge in bad for line in evidence[edge])


def test_foundation_imports_only_errors_and_files(graphs):
    _, _, packages, evidence = graphs
    missing = [name for name in FOUNDATION if not (ROOT / PACKAGE / f"{name}.py").is_file()]
    assert not missing, f"foundation modules missing: {missing}"
    bad = [(base, other) for base in FOUNDATION for other in sorted(packages[base] - FOUNDATION_MAY_IMPORT)]
    assert not bad, "the foundation imports other parts of langmim:\n" + "\n".join(line for edge in bad for line in evidence[edge])


def test_the_graph_reader_sees_function_level_and_relative_imports(graphs):
    graph, _, _, _ = graphs
    assert "langmim.api" in graph["langmim"]  # the lazy ``load`` in __init__'s __getattr__
    assert "langmim.errors" in graph["langmim.cli"]  # ``from .errors import ...``
