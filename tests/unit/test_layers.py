"""runyard's layers point one way: no import cycle, and no module imports from a layer above its own.

Every module under platform/runyard is read with ``ast`` (never imported), and every
import of a runyard module counts: at module level, inside functions, and under
``if TYPE_CHECKING:``. A function-level import is still a dependency; it only
hides a cycle until the day someone moves it to the top of the file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "runyard"
ROOT = "runyard"
"""The package root (runyard/__init__.py): anything may import it; it imports no runyard module."""

LAYERS: list[set[str]] = [
    {"errors", "progress", "config", "forkserver"},
    {"data", "models", "evaluation"},
    {"tasks"},
    {"checks", "project"},
    {"tracking"},
    {"execution"},
    {"tuning", "serving"},
    {"commands", "bench", "schema"},
    {"cli", "__main__"},
]
"""Top-level subpackages and modules of runyard, bottom to top. A module may import from
its own layer and the layers below; a new subpackage gets a place here."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} imports {self.target} ({module_path(self.source)}:{self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def module_path(name: str) -> str:
    path = modules().get(name)
    return str(path.relative_to(PACKAGE.parent.parent)) if path else name


def imports_in(name: str, source: str, known: set[str]) -> list[Import]:
    """The runyard modules ``source`` (module ``name``) imports, wherever the import stands.

    ``from P import x`` imports P, and P.x too when that is a module; relative imports
    are resolved against the module's package."""
    is_package = name == ROOT or module_path(name).endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(name, a.name, node.lineno) for a in node.names if is_runyard(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not is_runyard(target):
                continue
            found.append(Import(name, target, node.lineno))
            found += [Import(name, f"{target}.{a.name}", node.lineno) for a in node.names
                      if f"{target}.{a.name}" in known]
    return [i for i in found if i.target != name]


def is_runyard(module: str) -> bool:
    return module == ROOT or module.startswith(ROOT + ".")


@cache
def graph() -> dict[str, list[Import]]:
    known = set(modules())
    return {name: imports_in(name, path.read_text(), known) for name, path in modules().items()}


def find_cycle(edges: dict[str, list[Import]]) -> list[Import] | None:
    """One import cycle of the graph (its edges, in order), or None: a depth-first search."""
    state: dict[str, str] = {}  # "open": on the current path; "done": fully explored
    path: list[Import] = []

    def visit(node: str) -> list[Import] | None:
        state[node] = "open"
        for edge in edges.get(node, []):
            if state.get(edge.target) == "open":
                start = next((i for i, e in enumerate(path) if e.source == edge.target), len(path))
                return [*path[start:], edge]
            if edge.target not in state:
                path.append(edge)
                cycle = visit(edge.target)
                if cycle:
                    return cycle
                path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def top_level(module: str) -> str:
    return module.split(".")[1] if module != ROOT else ROOT


def layer_of(module: str) -> int:
    """The layer index of ``module``; the package root is below every layer."""
    if module == ROOT:
        return -1
    top = top_level(module)
    (index,) = [i for i, layer in enumerate(LAYERS) if top in layer] or [None]
    if index is None:
        raise AssertionError(f"{module}: runyard.{top} is in no layer; add it to LAYERS in {__file__}")
    return index


def upward(edges: dict[str, list[Import]]) -> list[str]:
    """Every import from a higher layer, naming both modules and both layers."""
    def named(i: int) -> str:
        return f"layer {i} {{{', '.join(sorted(LAYERS[i]))}}}" if i >= 0 else "the package root"

    return [f"{e}: {named(layer_of(e.source))} -> {named(layer_of(e.target))}"
            for imports in edges.values() for e in imports if layer_of(e.target) > layer_of(e.source)]


# --------------------------------------------------------------------------- the walk itself


def test_the_walk_sees_module_function_and_type_checking_imports():
    """The checks below are only as good as the walk: it must see every kind of import."""
    edges = {(e.source, e.target) for imports in graph().values() for e in imports}
    assert len(modules()) > 50 and len(edges) > 200
    assert ("runyard.project", "runyard.checks") in edges  # module level: `from runyard import checks`
    assert ("runyard.checks", "runyard.tasks") in edges
    assert ("runyard.bench", "runyard.execution.lightning") in edges  # inside a function
    assert ("runyard.tracking.uri", "runyard.project") in edges  # under `if TYPE_CHECKING:`
    assert ("runyard.__main__", "runyard.cli") in edges


def test_relative_and_from_package_imports_resolve():
    known = {"runyard.a", "runyard.a.b", "runyard.a.c", "runyard.d"}
    source = ("from . import b\nfrom .c import f\nfrom .. import d\nimport runyard.d\n"
              "def g():\n    from runyard.a import b, nothing\n")
    got = {(i.target, i.line) for i in imports_in("runyard.a.x", source, known)}
    assert got == {("runyard.a", 1), ("runyard.a.b", 1), ("runyard.a.c", 2), ("runyard", 3), ("runyard.d", 3),
                   ("runyard.d", 4), ("runyard.a", 6), ("runyard.a.b", 6)}


def test_find_cycle_names_the_cycle_and_none_without_one():
    def edges(*pairs):
        out: dict[str, list[Import]] = {}
        for n, (a, b) in enumerate(pairs):
            out.setdefault(a, []).append(Import(a, b, n + 1))
        return out

    cycle = find_cycle(edges(("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")))
    assert [(e.source, e.target) for e in cycle] == [("b", "c"), ("c", "d"), ("d", "b")]
    assert find_cycle(edges(("a", "b"), ("a", "c"), ("b", "c"), ("c", "d"))) is None


def test_an_upward_import_is_named():
    imports = {"runyard.errors": [Import("runyard.errors", "runyard.cli", 3)],
               "runyard.cli": [Import("runyard.cli", "runyard.errors", 1)]}
    (message,) = upward(imports)
    assert message.startswith("runyard.errors imports runyard.cli (")
    assert message.endswith(":3): layer 0 {config, errors, forkserver, progress} -> layer 8 {__main__, cli}")


# --------------------------------------------------------------------------- the package


def test_every_top_level_module_is_in_exactly_one_layer():
    tops = {top_level(m) for m in modules()} - {ROOT}
    placed = [name for layer in LAYERS for name in layer]
    assert len(placed) == len(set(placed)), f"in two layers: {sorted({n for n in placed if placed.count(n) > 1})}"
    assert tops == set(placed), (f"in no layer: {sorted(tops - set(placed))}; "
                                 f"in LAYERS but not in runyard: {sorted(set(placed) - tops)}")


def test_the_package_root_imports_no_runyard_module():
    assert graph()[ROOT] == [], [str(e) for e in graph()[ROOT]]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join([cycle[0].source, *(e.target for e in cycle)]) + \
        "\n" + "\n".join(f"  {e}" for e in cycle)


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=lambda i: "-".join(sorted(LAYERS[i])))
def test_no_module_imports_from_a_higher_layer(layer):
    edges = {m: imports for m, imports in graph().items() if m != ROOT and layer_of(m) == layer}
    found = upward(edges)
    assert not found, "imports from a higher layer:\n" + "\n".join(f"  {v}" for v in found)
