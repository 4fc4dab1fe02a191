"""The package's shape, checked from its source: the import graph has no circle and no arrow
running back up the layers, and no module grows past the size where its flow stops being readable.

Imports are read with ``ast`` (at module level and inside functions alike), so an import moved
into a function to dodge a circle still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tf_shopee"
MAX_MODULE_LINES = 900

# Layer → the layers it must never import (directly or from inside a function). Lower layers
# (data, models, neighbours) know nothing of matching; matching knows nothing of the command line,
# the catalogue, training or the demo; the catalogue is built on matching, never on predict.py.
FORBIDDEN = {
    "tf_shopee.neighbours": ("tf_shopee.matching", "tf_shopee.catalog", "tf_shopee.predict",
                             "tf_shopee.training", "tf_shopee.demo", "tf_shopee.beam"),
    "tf_shopee.data": ("tf_shopee.matching", "tf_shopee.catalog", "tf_shopee.predict",
                       "tf_shopee.training", "tf_shopee.demo", "tf_shopee.beam"),
    "tf_shopee.models": ("tf_shopee.matching", "tf_shopee.catalog", "tf_shopee.predict",
                         "tf_shopee.training", "tf_shopee.demo", "tf_shopee.beam"),
    "tf_shopee.export": ("tf_shopee.matching", "tf_shopee.catalog", "tf_shopee.predict",
                         "tf_shopee.training", "tf_shopee.demo", "tf_shopee.beam"),
    "tf_shopee.matching": ("tf_shopee.predict", "tf_shopee.catalog", "tf_shopee.training",
                           "tf_shopee.demo", "tf_shopee.beam", "tf_shopee.synthetic"),
    "tf_shopee.catalog": ("tf_shopee.predict", "tf_shopee.training", "tf_shopee.demo",
                          "tf_shopee.beam", "tf_shopee.synthetic"),
    "tf_shopee.training": ("tf_shopee.predict", "tf_shopee.catalog", "tf_shopee.demo",
                           "tf_shopee.synthetic"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The tf_shopee modules ``path`` imports: ``from a.b import c`` counts as ``a.b.c`` when that
    is a module, else as ``a.b``."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` where c is a name
                target = target.rpartition(".")[0]
            if target.startswith("tf_shopee") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph = {name: imported_modules(path, modules) for name, path in modules.items()}
    # Importing a module runs its parent packages' __init__ first; that is no arrow of the
    # design, so a package importing its own children is not a circle.
    for name, targets in graph.items():
        graph[name] = {target for target in targets if not name.startswith(target + ".")}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of modules that import each other in a circle."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_import_graph_has_no_circle():
    assert strongly_connected(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_arrow_runs_back_up_the_layers(layer):
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if any(target == forbidden or target.startswith(forbidden + ".")
               for forbidden in FORBIDDEN[layer])
    )
    assert wrong == []


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in package_modules().items()}
    assert {name: size for name, size in sizes.items() if size > MAX_MODULE_LINES} == {}
