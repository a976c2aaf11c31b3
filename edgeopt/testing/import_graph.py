"""The import graph of edgeopt, read from the source with ``ast``: the house's floors, kept true by a test.

``python -m edgeopt.testing.import_graph`` prints the rooms floor by floor and any
cycle or import that points up.

Every import counts: module level, inside functions (lazy), and
``importlib.import_module("...")`` with a literal name. Importing
``edgeopt.a.b.c`` also runs ``edgeopt.a/__init__`` and ``edgeopt.a.b/__init__``
first, so the importer gets an edge to each of those packages too, as Python
executes it; except to its own enclosing packages, which have already started
(that is why ``edgeopt/__init__`` may re-export from its subpackages).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

PACKAGES = ("edgeopt", "edgeopt.passes", "edgeopt.targets")
"""passes/ and targets/ sit at the top of the repository but install as these."""

FLOORS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("data",),
    ("calibration",),
    ("channels", "blocks", "training"),
    ("passes",),
    ("pipeline",),
    ("quantization", "pruning", "sharing", "exporting"),
    ("layers",),
    ("targets",),
    ("deploy",),
    ("search",),
    ("workflow",),
    ("cli", "testing"),
)
"""The house, bottom floor first: a room imports only rooms on floors below its own.
``edgeopt/__init__`` (the top-level API) and ``__main__`` stand above every floor."""


def package_dir(package: str) -> Path:
    """Where ``package``'s files are, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(next(iter(spec.submodule_search_locations)))


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for edgeopt and the passes/targets it installs."""
    found: dict[str, Path] = {}
    nested = {package_dir(p) for p in PACKAGES[1:]}
    for package in PACKAGES:
        root = package_dir(package)
        for path in sorted(root.rglob("*.py")):
            if package == "edgeopt" and any(d in path.parents for d in nested):
                continue  # listed under its own package (an installed copy nests them)
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imported_names(module: str, path: Path, tree: ast.AST) -> Iterable[str]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.args[0].value


def import_graph() -> dict[str, set[str]]:
    """Module -> the edgeopt modules it imports (its parent packages included)."""
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        running = _ancestors(module) | {module}
        for name in _imported_names(module, path, tree):
            while name and name not in files:  # `from pkg import name` names an attribute
                name = name.rpartition(".")[0]
            if name:
                graph[module].update((_ancestors(name) | {name}) - running)
    return graph


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:  # iterative: deep graphs must not hit the recursion limit
        work = [(start, iter(sorted(graph.get(start, ()))))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room_of(module: str) -> str:
    """``edgeopt.quantization.quantize`` -> ``quantization``; ``edgeopt`` -> ``edgeopt``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to rooms (edgeopt's subpackages, passes, targets)."""
    rooms: dict[str, set[str]] = {}
    for module, imports in graph.items():
        edges = rooms.setdefault(room_of(module), set())
        edges.update(room_of(m) for m in imports if room_of(m) != room_of(module))
    return rooms


def floor_violations(rooms: dict[str, set[str]], floors: Sequence[Sequence[str]] = FLOORS) -> list[str]:
    """Every room import that does not point to a lower floor, as ``'a -> b'``."""
    level = {room: i for i, floor in enumerate(floors) for room in floor}
    top = len(floors)
    found = []
    for room, imports in sorted(rooms.items()):
        mine = level.get(room, top if room in ("edgeopt", "__main__") else -1)
        for other in sorted(imports):
            if level.get(other, top) >= mine:
                found.append(f"{room} -> {other}")
    return found


def main() -> int:
    """Print the room graph floor by floor, then any cycle or import pointing up."""
    graph = import_graph()
    rooms = room_graph(graph)
    for floor in reversed(FLOORS):
        for room in floor:
            print(f"{room:>13} -> {', '.join(sorted(rooms.get(room, ()))) or '(nothing)'}")
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    problems += [f"points up: {v}" for v in floor_violations(rooms)]
    print(f"{len(rooms)} rooms, {sum(len(v) for v in rooms.values())} arrows, {len(graph)} modules")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
