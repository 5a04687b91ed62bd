"""No import circles in the package tree, counting the imports written inside functions.

An import inside a function still says "this module needs that one": a circle hidden that way
keeps the tree importable but leaves no module that can be read, tested or moved on its own.
The graph is read from the source (ast), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "metrics", "reports", "slurm")


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: line of the first such import}, over every ``import`` and
    ``from`` statement anywhere in the file (functions, ``TYPE_CHECKING`` blocks included).
    Relative imports are resolved; ``from pkg import name`` is an edge to ``pkg.name`` when that
    is a module, else to ``pkg``. Modules outside ``packages`` are left out."""
    mods = modules(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in mods.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                           for alias in node.names]
            for target in targets:
                if target in mods and target != name:
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest circle through each module that lies on one, each circle listed once."""
    found: dict[frozenset[str], list[str]] = {}
    for start in sorted(graph):
        parent: dict[str, str | None] = {start: None}
        queue, closing = deque([start]), None
        while queue and closing is None:  # breadth first: the shortest way back to start
            node = queue.popleft()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    closing = node
                    break
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        if closing is None:
            continue
        path = [closing]
        while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
        circle = path[::-1]
        found.setdefault(frozenset(circle), circle)
    return list(found.values())


def describe_cycle(circle: list[str], graph: dict[str, dict[str, int]], root: Path,
                   packages: tuple[str, ...] = PACKAGES) -> str:
    """The circle one edge a line, each with the file and line of its import."""
    files = {name: path.relative_to(root) for name, (path, _) in modules(root, packages).items()}
    steps = zip(circle, circle[1:] + circle[:1])
    return "\n".join(f"  {a} -> {b}  ({files[a]} line {graph[a][b]})" for a, b in steps)


def test_the_package_tree_has_no_import_circle():
    graph = import_graph(ROOT)
    assert {"bench.run", "bench.runner", "slurm.dispatch", "reports.report"} <= set(graph)  # it read the tree
    found = cycles(graph)
    assert not found, f"{len(found)} import circle(s):\n" + "\n\n".join(
        describe_cycle(c, graph, ROOT) for c in found)


def test_the_check_sees_circles_inside_functions_and_through_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")       # `from pkg import module`
    (pkg / "sub" / "b.py").write_text("from ..c import thing\n")               # relative, two levels
    (pkg / "c.py").write_text("import os\n\n\ndef g():\n    import pkg.a\n")   # inside a function
    (pkg / "d.py").write_text("from pkg import a\n")                           # on no circle
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub.b": 2} and graph["pkg.sub.b"] == {"pkg.c": 1}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c"]]
    assert "pkg.c -> pkg.a  (pkg/c.py line 5)" in describe_cycle(cycles(graph)[0], graph, tmp_path, ("pkg",))
