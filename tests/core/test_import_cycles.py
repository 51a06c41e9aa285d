"""No import cycles between our modules, not even ones hidden in a function.

A function-level import that exists only so that two modules can import each
other hides a cycle: the two are one module in two files, and whichever is
imported first sees the other half-initialised. Both module-level and
function-level imports count; imports under `if TYPE_CHECKING:` do not (they
name types, never run). Break a cycle by moving the shared piece down into a
module both import, or by passing it in.
"""
from __future__ import annotations

import ast
import functools
import pathlib

from tests.core.source_kit import PACKAGES, ROOT, python_files


def our_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package in PACKAGES:
        for path in python_files(package):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skipped.update(id(n) for n in ast.walk(statement))
    return skipped


def imported_names(module: str, path: pathlib.Path) -> list[tuple[str, int]]:
    """Every dotted name `module` imports, with its line: `import a.b`, `from a.b import c`
    (as a.b.c, which may be a module or a name in a.b), importlib.import_module("a.b")."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append((node.args[0].value, node.lineno))
    return names


@functools.lru_cache(maxsize=None)
def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, pathlib.Path]]:
    """module -> {module it imports: line of the first such import}, over our modules only."""
    modules = our_modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for name, line in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.setdefault(name, line)
    return graph, modules


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def describe(component: set[str], graph, modules) -> str:
    edges = [f"  {a} -> {b} ({modules[a].relative_to(ROOT)}:{graph[a][b]})"
             for a in sorted(component) for b in sorted(graph[a]) if b in component]
    return "cycle among " + ", ".join(sorted(component)) + ":\n" + "\n".join(edges)


def test_no_import_cycles():
    graph, modules = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "\n".join(describe(c, graph, modules) for c in cycles)


def test_the_checker_sees_a_function_level_cycle(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("import b\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from a import g\n")
    c = tmp_path / "c.py"
    c.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\n")
    modules = {"a": a, "b": b, "c": c}
    graph = {m: {n.split(".")[0]: line for n, line in imported_names(m, p) if n.split(".")[0] in modules}
             for m, p in modules.items()}
    assert strongly_connected(graph) == [{"a", "b"}]
