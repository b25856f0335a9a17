"""The import graph of the project's packages: no circle, no module takes another's private names.

Every import statement counts, wherever it is: at the top, inside a function (a lazy import) or
under ``TYPE_CHECKING``. A circle hides which layer depends on which, and a name with a leading
underscore is its module's own business: a caller that needs it needs a public name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "workers", "studies")


@dataclass
class Graph:
    """Modules of the project, what each imports, and the private names it takes."""

    files: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def build_graph(files: dict[str, Path]) -> Graph:
    graph = Graph(files, {module: set() for module in files})
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        bound: dict[str, str] = {}  # a local name -> the project module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in files:
                        graph.edges[module].add(alias.name)
                        bound[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, is_package, node.level, node.module)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in files:
                        graph.edges[module].add(submodule)
                        bound[alias.asname or alias.name] = submodule
                    elif source in files:
                        graph.edges[module].add(source)
                        if _is_private(alias.name):
                            graph.private.append(f"{module} imports {source}.{alias.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and bound.get(node.value.id, module) != module
                and _is_private(node.attr)
            ):
                graph.private.append(f"{module} uses {bound[node.value.id]}.{node.attr}")
        graph.edges[module].discard(module)
    return graph


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert circles(build_graph(module_files()).edges) == []


def test_no_module_takes_another_modules_private_names() -> None:
    assert build_graph(module_files()).private == []


def test_the_checker_sees_lazy_circles_and_private_names(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n    return b._hidden\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n"
        "_hidden = 1\n"
    )
    (package / "c.py").write_text("from .b import _hidden\n")
    graph = build_graph(module_files(tmp_path, ("pkg",)))
    assert circles(graph.edges) == [["pkg.a", "pkg.b"]]
    assert sorted(graph.private) == ["pkg.a uses pkg.b._hidden", "pkg.c imports pkg.b._hidden"]
