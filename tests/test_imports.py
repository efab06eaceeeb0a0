"""No import circles in ``src/scdoloris``: no module imports, directly or through others, a
module that imports it back.

The import graph is read from the source with :mod:`ast`, not by importing: imports at module
level and inside functions (lazy ones) both count, relative imports are resolved, and
``from package import name`` is an edge to the package's ``__init__`` (and to
``package.name`` when that is a module).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "scdoloris"


def _modules(src: Path, package: str) -> dict[str, Path]:
    """The modules of ``package`` under ``src`` (as in :func:`import_graph`), each dotted name
    (a package by its own name) and its file."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """The dotted names one import statement of module ``name`` may refer to.

    Parameters
    ----------
    node
        The import statement.
    name
        The importing module's dotted name.
    is_package
        Whether the importing module is a package's ``__init__`` (relative imports then start
        from the package itself, not from its parent).

    Returns
    -------
    The imported module and, for ``from ... import``, each imported name as a submodule of it.
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        here = name.split(".") if is_package else name.split(".")[:-1]
        anchor = here[: len(here) - node.level + 1]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    """Which modules of ``package`` each of its modules imports, anywhere in its source.

    Parameters
    ----------
    src
        The folder that holds the package.
    package
        The package's name.

    Returns
    -------
    Each module's dotted name and the set of the package's modules it imports (itself left
    out).
    """
    modules = _modules(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(m for m in _imported(node, name, is_package) if m in modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``, as the modules along it (the first again at the end), or None.

    Parameters
    ----------
    graph
        Each node and the nodes it points to.

    Returns
    -------
    The nodes of a cycle in order, closed, or ``None`` when the graph has none.
    """
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path = [root]
        on_path = {root}
        stack = [iter(sorted(graph[root]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_finds_a_cycle_and_none_where_there_is_none():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_resolves_relative_and_lazy_imports_and_package_inits(tmp_path: Path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\nimport pkg.sub\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub", "pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg", "pkg.a", "pkg.sub"},
    }
    assert find_cycle(graph) == ["pkg", "pkg.a", "pkg.sub.b", "pkg"]


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 10, f"no modules found under {SRC / PACKAGE}"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
