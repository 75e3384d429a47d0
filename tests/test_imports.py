"""No import circles among the modules under src/: every ``import`` and ``from ... import``, at the top of a
module or inside a function (a lazy import is still a dependency), read with :mod:`ast`."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("ranksweep", "hydra_plugins")

# Cycles another change removes; each entry is the cycle's modules, sorted. Keep this empty otherwise.
KNOWN: set[tuple[str, ...]] = set()


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()  # a package's __init__ is the package
    return ".".join(parts)


def src_modules(root: Path = SRC, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The src modules ``path`` (module ``name``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        # The module an import names: `import a.b.c` depends on a.b.c (the deepest src module it names;
        # a parent package's __init__ runs first, as for every module, and is not counted as an edge).
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in known:
                out.add(".".join(parts[:i]))
                return

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x` in pkg.a is pkg; `from ..x import y` is one up
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            for n in names:  # `from pkg import mod`: mod is a submodule, the dependency is pkg.mod
                if f"{target}.{n}" in known:
                    out.add(f"{target}.{n}")
            if any(f"{target}.{n}" not in known for n in names):  # a name defined in target itself
                add(target)
    out.discard(name)
    return out


def import_graph(root: Path = SRC, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    modules = src_modules(root, packages)
    known = set(modules)
    return {name: imported(path, name, known) for name, path in modules.items()}


def components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For each component, the shortest cycle through each of its modules, as paths a -> ... -> a."""
    out: list[list[str]] = []
    for component in components(graph):
        for start in sorted(component):
            cycle = shortest_cycle(graph, component, start)
            if not any(set(cycle) == set(c) for c in out):
                out.append(cycle)
    return out


def shortest_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """The shortest cycle through ``start`` within its component (breadth-first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a component always has one


def test_the_graph_sees_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    (pkg / "sub" / "d.py").write_text("from .. import a, VERSION\nimport os\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d"}
    assert imported(pkg / "a.py", "pkg.a", known) == {"pkg.b"}  # lazy, relative, a submodule
    assert imported(pkg / "b.py", "pkg.b", known) == {"pkg.sub.c"}
    assert imported(pkg / "sub" / "c.py", "pkg.sub.c", known) == {"pkg.a"}
    assert imported(pkg / "sub" / "d.py", "pkg.sub.d", known) == {"pkg", "pkg.a"}  # VERSION is pkg's own
    graph = import_graph(tmp_path, ("pkg",))
    assert set(graph) == known
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_no_import_cycles_among_src_modules():
    graph = import_graph()
    assert "ranksweep.config" in graph and "hydra_plugins.ranksweep_sweeper" in graph
    found = [c for c in components(graph) if tuple(sorted(c)) not in KNOWN]
    shown = [" -> ".join(c) for c in cycles(graph) if any(set(c) <= f for f in found)]
    assert not found, "import cycles:\n" + "\n".join(shown)
