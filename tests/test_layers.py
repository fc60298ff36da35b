"""The import structure: no circles, and each package imports only its own layer or below.

The layers are read from the README's "Architecture" section (the block after "Layers"),
top layer first; every ``import`` and ``from ... import`` of every module is read with
:mod:`ast`, those inside functions too, so a circle cannot hide in a function-level import.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = "qesmon"


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement of a project module, resolved to a project module."""

    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} imports {self.target}"


def readme_layers() -> list[list[str]]:
    """The packages of each layer, top first, from the README's architecture section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("Layers", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.splitlines():
        words = line.split()
        packages = []
        for word in words:
            if not word.endswith("/"):
                break
            packages.append(word.rstrip("/"))
        if packages:
            layers.append(packages)
    return layers


def top_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name.split(".")[0] for name in config["tool"]["setuptools"]["packages"]}


def project_modules(packages: set[str]) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """The project modules ``name`` imports anywhere in its body, with the line of each."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [resolve(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # ``from api import store`` imports the module api.store, not just api
            targets = [resolve(f"{base}.{alias.name}") or resolve(base) for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [resolve(node.args[0].value)]
        for target in targets:
            if target is not None and target != name:
                yield Import(name, target, path, getattr(node, "lineno", 0))


LAYERS = readme_layers()
LAYER_OF = {package: depth for depth, layer in enumerate(LAYERS) for package in layer}
MODULES = project_modules(set(LAYER_OF))
IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path, MODULES)]


def top(module: str) -> str:
    return module.partition(".")[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
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
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_readme_places_every_package_in_one_layer_with_the_core_alone_at_the_bottom() -> None:
    placed = [package for layer in LAYERS for package in layer]
    assert len(placed) == len(set(placed)), f"a package in two layers: {LAYERS}"
    assert set(placed) == top_packages(), "README layers and pyproject packages differ"
    assert LAYERS[-1] == [CORE]


def test_the_import_walk_sees_function_level_imports() -> None:
    # cli.main imports each subcommand's package inside a function, to start fast
    assert any(imp.source == "cli.main" and top(imp.target) == "pipeline" for imp in IMPORTS)


def test_the_circle_finder_finds_a_circle_through_three_modules_and_nothing_else() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_module_imports_another_that_imports_it_back_directly_or_in_a_circle() -> None:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        edges[imp.source].add(imp.target)
    circles = cycles(edges)
    inside = [str(imp) for c in circles for imp in IMPORTS if {imp.source, imp.target} <= set(c)]
    assert circles == [], "import circles:\n" + "\n".join(inside)


def test_no_two_packages_import_each_other() -> None:
    edges: dict[str, set[str]] = {package: set() for package in LAYER_OF}
    for imp in IMPORTS:
        if top(imp.source) != top(imp.target):
            edges[top(imp.source)].add(top(imp.target))
    assert cycles(edges) == []


def test_every_module_imports_only_from_its_own_layer_or_below() -> None:
    upward = [str(imp) for imp in IMPORTS if LAYER_OF[top(imp.target)] < LAYER_OF[top(imp.source)]]
    assert upward == [], "imports from a higher layer:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", sorted(set(LAYER_OF) - {CORE}))
def test_nothing_in_the_core_imports(package: str) -> None:
    found = [str(imp) for imp in IMPORTS if top(imp.source) == CORE and top(imp.target) == package]
    assert found == []
