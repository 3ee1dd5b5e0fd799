"""One AST walker for the import rules: what each module of a package imports, however it imports it.

Records every import of every module under a package root, with where and how it happens:

- ``import a.b`` and ``from a import b`` at module level, inside functions (lazy) and in ``if TYPE_CHECKING:``
  blocks (each edge says which);
- relative imports (``from . import x``, ``from ..store import db``) resolved to absolute names;
- ``importlib.import_module("a.b")`` and ``__import__("a.b")`` with a literal name (and a ``package=`` literal
  for a relative one).

``from pkg import name`` records ``pkg.name`` when that is a module of the package, else ``pkg``, so the graph
is between modules. The architecture test, the retina and triage purity tests and the BLE licence test all
read imports through this walker, so a lazy or dynamic import cannot slip past one of them.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class How(Enum):
    """How an import happens."""

    TOP = "top"  # at module level: runs when the module is imported
    LAZY = "lazy"  # inside a function or method: runs when it is called
    TYPE_CHECKING = "type_checking"  # inside ``if TYPE_CHECKING:``: only the type checker follows it
    DYNAMIC = "dynamic"  # importlib.import_module / __import__ with a literal name


@dataclass(frozen=True, slots=True)
class Edge:
    """``importer`` imports ``imported`` (absolute dotted name) at ``line``."""

    importer: str
    imported: str
    line: int
    how: How

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} -> {self.imported} ({self.how.value})"


@dataclass
class ModuleImports:
    """One module: its dotted name, file, and every import it makes."""

    name: str
    path: Path
    is_package: bool
    edges: list[Edge] = field(default_factory=list)
    unresolved: list[int] = field(default_factory=list)
    """Lines of ``import_module(...)`` / ``__import__(...)`` calls whose name is computed (no edge recorded)."""

    @property
    def imported(self) -> set[str]:
        """Every name this module imports, however."""
        return {e.imported for e in self.edges}

    def roots(self) -> set[str]:
        """Top-level names imported (``numpy`` for ``numpy.linalg``)."""
        return {e.imported.split(".")[0] for e in self.edges}


def under(name: str, *prefixes: str) -> bool:
    """True when ``name`` is one of ``prefixes`` or inside one of them (dotted)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path, root: Path) -> str:
    """Dotted name of ``path`` inside the package directory ``root`` (its parent is on sys.path)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _Walker(ast.NodeVisitor):
    def __init__(self, module: ModuleImports, known: set[str]) -> None:
        self.module = module
        self.known = known
        self.depth = 0  # functions entered
        self.type_checking = 0  # TYPE_CHECKING blocks entered
        # The package a relative import is relative to: the module itself for a package's __init__.
        self.package = module.name if module.is_package else module.name.rpartition(".")[0]

    def _how(self) -> How:
        if self.type_checking:
            return How.TYPE_CHECKING
        return How.LAZY if self.depth else How.TOP

    def _add(self, name: str, line: int, how: How | None = None) -> None:
        self.module.edges.append(Edge(self.module.name, name, line, how or self._how()))

    def _resolve(self, level: int, module: str | None, package: str | None = None) -> str:
        if level == 0:
            return module or ""
        base = (package or self.package).split(".")
        if level > 1:
            base = base[: len(base) - (level - 1)]
        return ".".join([*base, module] if module else base)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._nested(node)

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking += 1
            for child in node.body:
                self.visit(child)
            self.type_checking -= 1
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node.level, node.module)
        for alias in node.names:
            candidate = f"{base}.{alias.name}" if base else alias.name
            self._add(candidate if candidate in self.known else base, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if called in ("import_module", "__import__") and node.args:
            name = _literal(node.args[0])
            if name is None:
                self.module.unresolved.append(node.lineno)
            else:
                package = next((_literal(k.value) for k in node.keywords if k.arg == "package"), None)
                if called == "import_module" and name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    name = self._resolve(level, name.lstrip(".") or None, package)
                self._add(name, node.lineno, How.DYNAMIC)
        self.generic_visit(node)


def scan_files(files: Iterable[tuple[str, Path]]) -> dict[str, ModuleImports]:
    """Walk each ``(dotted name, path)``; names of the set resolve ``from pkg import module``."""
    modules = {
        name: ModuleImports(name, path, path.name == "__init__.py") for name, path in sorted(files, key=lambda f: f[0])
    }
    known = set(modules)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        _Walker(module, known).visit(tree)
    return modules


def scan_package(root: Path) -> dict[str, ModuleImports]:
    """Every module under the package directory ``root`` (``.../gateway``), keyed by dotted name."""
    return scan_files((module_name(p, root), p) for p in root.rglob("*.py"))


@functools.cache
def gateway_modules() -> dict[str, ModuleImports]:
    """The shipped package, scanned once per test process (read it, never change it)."""
    return scan_package(Path(__file__).resolve().parents[2] / "gateway")


def scan_file(path: Path, name: str = "__scanned__") -> ModuleImports:
    """One file on its own (a script or a module outside a package)."""
    return scan_files([(name, path)])[name]


def third_party_roots(module: ModuleImports, own: Iterable[str] = ()) -> set[str]:
    """Top-level names it imports that are neither the standard library nor ``own``."""
    return module.roots() - set(sys.stdlib_module_names) - set(own) - {"__future__"}


def internal_graph(modules: dict[str, ModuleImports]) -> dict[str, set[str]]:
    """Module -> modules of the same set it imports (any way, self-imports included)."""
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, module in modules.items():
        targets = set()
        for edge in module.edges:
            target = edge.imported
            # ``import gateway.store.db`` names the module; ``gateway.store.Store`` resolved to gateway.store.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(start: str) -> None:
        # Iterative, so a long import chain cannot hit the recursion limit.
        nonlocal counter
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
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
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            strongconnect(name)
    return sorted(found)
