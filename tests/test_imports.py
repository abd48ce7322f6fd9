"""The package's import graph has no circles, counting imports inside functions.

Every ``import`` / ``from ... import`` statement anywhere in a module (top level, functions, classes) is
an arrow from that module to the module it names: ``from exemplar_vae.data import x`` points to the
submodule ``exemplar_vae.data.x`` when there is one, else to the package ``exemplar_vae.data`` (its
``__init__``). A circle is a strongly connected set of two or more modules, or a module importing itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "exemplar_vae"


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of the package's modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
                # ``from pkg import sub`` names the submodule; ``from pkg import func`` names pkg itself
                targets = [t for t in targets[:-1] if t in modules] or [source]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None:
                    graph[module].add(resolved)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, and self-imports (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circles() -> None:
    graph = import_graph(PACKAGE_ROOT)
    assert len(graph) > 40  # the whole package was read
    assert circles(graph) == []


def test_the_model_does_not_import_the_objectives_and_the_ground_floor_imports_nothing_above() -> None:
    graph = import_graph(PACKAGE_ROOT)
    assert not any(m.startswith("exemplar_vae.objectives") for m in graph["exemplar_vae.models.vae"])
    for low in ("exemplar_vae.io", "exemplar_vae.functional", "exemplar_vae.errors", "exemplar_vae.config"):
        above = {m for m in graph[low] if m not in ("exemplar_vae.errors", "exemplar_vae.io")}
        assert not above, (low, above)
    for module, targets in graph.items():
        if module.startswith(("exemplar_vae.data", "exemplar_vae.viz")):
            assert not any(t.startswith("exemplar_vae.training") for t in targets), module


@pytest.mark.parametrize("where", ["top", "function"])
def test_the_circle_finder_sees_circles_through_functions_and_packages(tmp_path: Path, where: str) -> None:
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from toy.sub.b import g\n")
    (pkg / "a.py").write_text("from toy.sub import g\n")
    body = "from toy import a\n" if where == "top" else "def g():\n    from toy.a import x\n    return x\n"
    (pkg / "sub" / "b.py").write_text(body)
    found = circles(import_graph(pkg))
    assert found == [["toy.a", "toy.sub", "toy.sub.b"]]
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert circles(import_graph(pkg)) == []
