"""The package's module structure: no import cycle, no module reading another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "coherent_cache"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], list[str]]:
    """The package modules ``name`` imports (module level, deferred and TYPE_CHECKING
    alike) and the private names it imports from them."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    edges: set[str] = set()
    private: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target not in known:
                continue
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            edges.update(submodules)
            if len(submodules) < len(node.names):
                edges.add(target)
            private += [
                f"from {target} import {a.name}"
                for a in node.names
                if a.name.startswith("_")
                and not a.name.startswith("__")
                and f"{target}.{a.name}" not in known
            ]
    edges.discard(name)
    return edges, private


class TestImports:
    """The import graph of the package is acyclic (manager on top)."""

    def test_no_cycle(self) -> None:
        """Depth-first search finds no back edge."""
        known = modules()
        graph = {name: imported(name, path, known)[0] for name, path in known.items()}
        cycles: list[list[str]] = []
        state: dict[str, int] = {}

        def visit(node: str, stack: list[str]) -> None:
            state[node] = 1
            stack.append(node)
            for nxt in sorted(graph[node]):
                if state.get(nxt) == 1:
                    cycles.append([*stack[stack.index(nxt) :], nxt])
                elif nxt not in state:
                    visit(nxt, stack)
            stack.pop()
            state[node] = 2

        for name in sorted(graph):
            if name not in state:
                visit(name, [])
        assert [] == cycles

    def test_no_private_name_imported(self) -> None:
        """No ``from .module import _name`` across modules (private modules are fine)."""
        known = modules()
        assert [] == [
            f"{name}: {text}"
            for name, path in known.items()
            for text in imported(name, path, known)[1]
        ]


class TestPrivateAttributes:
    """No module reads an underscore attribute that it does not define itself."""

    def test_no_foreign_private_attribute(self) -> None:
        """``obj._x`` only where the module defines ``_x`` (its own classes' state)."""
        found: list[str] = []
        for name, path in modules().items():
            tree = ast.parse(path.read_text())
            defined: set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    defined.add(node.name)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    defined.add(node.id)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    defined.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    defined.add(node.value)  # __slots__ entries
            found += [
                f"{name}:{node.lineno}: {ast.unparse(node)}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in defined
            ]
        assert [] == found
