"""The package's shape, enforced from its source: an acyclic import graph, module sizes,
and no module reaching into another module's underscore names (docs/architecture.md).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "coherent_cache"
MAX_LINES = 800
"""No module of the package is longer than this."""
MAX_LINES_OF = {"coherent_cache.manager": 600}
"""Tighter limits: the coordinator stays thin."""


@dataclass
class Module:
    """One source file of a package, parsed."""

    name: str
    path: Path
    tree: ast.Module
    lines: int
    imports: set[str] = field(default_factory=set)

    @property
    def is_package(self) -> bool:
        """Whether this is a package's ``__init__.py``."""
        return self.path.name == "__init__.py"


def module_name(root: Path, path: Path) -> str:
    """``coherent_cache.integrations.fastapi`` for ``<root>/integrations/fastapi.py``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_package(root: Path) -> dict[str, Module]:
    """Every module under ``root`` with the package modules it imports.

    Every import counts: module level, inside functions (deferred) and under
    ``if TYPE_CHECKING:`` alike, since each one couples the two modules.
    """
    modules: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = module_name(root, path)
        modules[name] = Module(name, path, ast.parse(source), len(source.splitlines()))
    for module in modules.values():
        for node in ast.walk(module.tree):
            module.imports.update(imported_modules(module.name, module.is_package, node, modules))
        module.imports.discard(module.name)
    return modules


def imported_modules(
    name: str, is_package: bool, node: ast.AST, modules: dict[str, Module]
) -> Iterator[str]:
    """The package modules an import statement ``node`` of module ``name`` loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in modules:
                yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
        yield from submodules
        # ``from . import sub`` loads the submodule; a name defined in the target itself
        # (``from .x import y``, ``from . import y``) couples to the target module.
        if target in modules and len(submodules) < len(node.names):
            yield target


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in sorted(modules[name].imports):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return found


def is_private(name: str) -> bool:
    """``_x`` but not ``__x__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_names_defined(tree: ast.Module) -> set[str]:
    """The underscore names a module defines itself: functions, classes, assigned names and
    attributes (``self._x = ...``), ``__slots__`` entries and parameters."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias) and node.asname:
            names.add(node.asname)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            for element in ast.walk(node.value):
                if isinstance(element, ast.Constant) and isinstance(element.value, str):
                    names.add(element.value)
    return {name for name in names if is_private(name)}


def foreign_private_uses(module: Module, modules: dict[str, Module]) -> list[str]:
    """Where ``module`` uses an underscore name another module defines.

    ``from .x import _y`` always counts; ``obj._y`` counts unless ``_y`` is defined in this
    module (its own classes' attributes). Private *modules* (``from . import _telemetry``)
    are the package's internal floors and may be imported.
    """
    own = private_names_defined(module.tree)
    found: list[str] = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                targets = imported_modules(module.name, module.is_package, node, modules)
                is_module = any(t.endswith(f".{alias.name}") for t in targets)
                if is_private(alias.name) and not is_module:
                    found.append(f"{module.name}:{node.lineno} imports {alias.name}")
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            if node.attr not in own:
                found.append(f"{module.name}:{node.lineno} reads .{node.attr}")
    return found


@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    return load_package(PACKAGE)


class TestPackageShape:
    def test_the_import_graph_has_no_cycle(self, package: dict[str, Module]) -> None:
        """No two modules import each other, directly or through others, at any level."""
        assert [] == cycles(package)

    def test_modules_stay_small(self, package: dict[str, Module]) -> None:
        """No module over 800 lines; manager.py, the coordinator, at most 600."""
        too_long = {
            name: module.lines
            for name, module in package.items()
            if module.lines > MAX_LINES_OF.get(name, MAX_LINES)
        }
        assert {} == too_long

    def test_no_module_reads_another_modules_underscore_names(
        self, package: dict[str, Module]
    ) -> None:
        """Collaborators get what they need when built; nobody reaches for ``obj._name``."""
        found = [use for m in package.values() for use in foreign_private_uses(m, package)]
        assert [] == found

    def test_the_manager_sits_on_top(self, package: dict[str, Module]) -> None:
        """Only the integrations, the CLI, the demo and the testing helpers import the manager;
        lower floors (types, errors, config, keys, serializer) import no other layer."""
        importers = sorted(
            name for name, module in package.items() if "coherent_cache.manager" in module.imports
        )
        allowed = {
            "coherent_cache",
            "coherent_cache._demo_instance",
            "coherent_cache.cli",
            "coherent_cache.integrations",
            "coherent_cache.integrations.fastapi",
            "coherent_cache.testing",
        }
        assert [] == [name for name in importers if name not in allowed]
        assert "coherent_cache" in importers
        floors = {
            "coherent_cache.errors": set(),
            "coherent_cache.types": {"coherent_cache.errors"},
            "coherent_cache.keys": {"coherent_cache.errors"},
        }
        assert floors == {name: package[name].imports for name in floors}


class TestTheCheckerItself:
    """The checks above must be able to fail: run them on a small package with the faults."""

    @pytest.fixture
    def faulty(self, tmp_path: Path) -> dict[str, Module]:
        root = tmp_path / "pkg"
        (root / "sub").mkdir(parents=True)
        (root / "__init__.py").write_text("from .a import A\n")
        (root / "a.py").write_text(
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "from ._helpers import _secret\n"
            "if TYPE_CHECKING:\n"
            "    from .b import B\n"
            "class A:\n"
            "    def __init__(self) -> None:\n"
            "        self._mine = 1\n"
            "    def use(self, b: B) -> int:\n"
            "        return self._mine + b._theirs\n"
        )
        (root / "b.py").write_text(
            "def make() -> object:\n"
            "    from . import a\n"
            "    return a.A()\n"
            "class B:\n"
            "    _theirs = 2\n"
        )
        (root / "_helpers.py").write_text("_secret = 1\n" + "x = 1\n" * 900)
        (root / "sub" / "__init__.py").write_text("from .. import _helpers\n")
        return load_package(root)

    def test_a_deferred_or_type_checking_cycle_is_found(self, faulty: dict[str, Module]) -> None:
        """``a`` imports ``b`` only under TYPE_CHECKING and ``b`` imports ``a`` in a function."""
        assert [["pkg.a", "pkg.b"]] == cycles(faulty)

    def test_foreign_underscore_uses_are_found(self, faulty: dict[str, Module]) -> None:
        """A private import and a read of another class's private attribute are reported;
        the module's own ``self._mine`` and an import of a private module are not."""
        found = [use for m in faulty.values() for use in foreign_private_uses(m, faulty)]
        assert ["pkg.a:3 imports _secret", "pkg.a:10 reads ._theirs"] == found

    def test_long_modules_are_measured(self, faulty: dict[str, Module]) -> None:
        """Line counts are those of the file."""
        assert 901 == faulty["pkg._helpers"].lines
