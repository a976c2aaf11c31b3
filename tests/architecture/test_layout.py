"""The house by road: subpackages with one job each, imports pointing down, no circle.

The import graph comes from the source (:mod:`edgeopt.testing.import_graph`):
module-level and lazy imports, ``importlib.import_module`` with a literal name,
and the parent packages Python runs on the way.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from edgeopt.testing.import_graph import (
    FLOORS,
    cycles,
    floor_violations,
    import_graph,
    module_files,
    package_dir,
    room_graph,
)

REPO = Path(__file__).resolve().parents[2]
ROOMS = [room for floor in FLOORS for room in floor if room not in ("passes", "targets")]
GRAPH = import_graph()


def test_the_graph_is_read_from_the_source() -> None:
    """A checker that finds no edge would pass anything: check edges we know exist."""
    assert len(GRAPH) > 100
    assert "edgeopt.channels.groups" in GRAPH["edgeopt.passes.prune_channels"]
    assert "edgeopt.passes" in GRAPH["edgeopt.pipeline.registry"]  # a module-level import
    assert "edgeopt.exporting.torch_export" in GRAPH["edgeopt"]  # a lazy one, inside __getattr__
    # importing edgeopt.passes.x runs edgeopt/passes/__init__ first
    assert "edgeopt.passes" in GRAPH["edgeopt.targets.ort_gpu"]


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere() -> None:
    assert cycles(GRAPH) == []


def test_every_room_imports_only_rooms_on_lower_floors() -> None:
    rooms = room_graph(GRAPH)
    assert floor_violations(rooms) == []
    assert set(rooms) - {"edgeopt", "__main__"} == {room for floor in FLOORS for room in floor}


def test_floor_violations_are_reported() -> None:
    assert floor_violations({"core": {"cli"}, "cli": {"core"}}) == ["core -> cli"]
    assert floor_violations({"passes": {"pipeline"}}) == ["passes -> pipeline"]


def test_passes_and_targets_never_import_the_cli() -> None:
    for module, imports in GRAPH.items():
        if module.startswith(("edgeopt.passes", "edgeopt.targets")):
            assert not any(m.startswith("edgeopt.cli") for m in imports), module


def test_no_module_left_directly_in_edgeopt() -> None:
    top = sorted(p.name for p in package_dir("edgeopt").glob("*.py"))
    assert top == ["__init__.py", "__main__.py"]
    assert set(ROOMS) <= {p.name for p in package_dir("edgeopt").iterdir() if (p / "__init__.py").exists()}


@pytest.mark.parametrize("room", ROOMS)
def test_each_subpackage_states_its_job_and_exports_its_names(room: str) -> None:
    init = package_dir(f"edgeopt.{room}") / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and "\n" not in doc, f"edgeopt/{room}/__init__.py: state the job in one docstring line"
    package = importlib.import_module(f"edgeopt.{room}")
    exported = getattr(package, "__all__", None)
    assert exported, f"edgeopt/{room}/__init__.py lists no public names"
    for name in exported:
        assert not isinstance(getattr(package, name), type(package)), f"{room}.{name} is a module, not a name"


def test_top_level_api_keeps_working() -> None:
    import edgeopt

    for name in ("load_model", "save_model", "run_passes", "Pipeline", "PipelineResult", "EdgeoptError", "export"):
        assert callable(getattr(edgeopt, name)), name
    assert edgeopt.export.__module__ == "edgeopt.exporting.torch_export"


def test_tests_mirror_the_layout() -> None:
    """Test files live in a folder named after what they test: a room, passes/, targets/, docs/ or the
    architecture itself; none directly in tests/."""
    allowed = {*ROOMS, "passes", "targets", "docs", "architecture"}
    for path in (REPO / "tests").rglob("test_*.py"):
        parts = path.relative_to(REPO / "tests").parts
        assert len(parts) > 1 and parts[0] in allowed, f"{path.relative_to(REPO)}: move it under tests/<room>/"


def test_architecture_page_names_every_room() -> None:
    page = (REPO / "docs" / "architecture.md").read_text()
    for room in [*ROOMS, "passes", "targets"]:
        assert f"`{room}/`" in page, f"docs/architecture.md does not describe {room}/"


def test_module_files_cover_passes_and_targets() -> None:
    files = module_files()
    assert files["edgeopt.passes.fold_constants"] == REPO / "passes" / "fold_constants.py"
    assert files["edgeopt.targets.ort"] == REPO / "targets" / "ort.py"
