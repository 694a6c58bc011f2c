"""Dependencies point one way: the service's runtime modules never import the deployment or
benchmark tools or the tests (those import the runtime, never the reverse); the deployment tools
never import the benchmark tools (measuring uses preparing, never the reverse); inside the
facematch package the floors import downwards only (base -> engine -> decision -> gallery ->
observability -> api, as facematch/__init__.py documents), with no circle between them; the
base, engine, decision and gallery floors do without Flask (the base's JSON parser needs only the
standard library); the root holds only the front doors."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("deployment_utils", "benchmarking_utils")
NOT_FOR_THE_RUNTIME = (*TOOLS, "tests")
DEPLOYMENT_TOOLS = sorted((REPO / "deployment_utils").glob("**/*.py"))
PACKAGE = REPO / "facematch"
# The runtime: the facematch package and the front doors at the root.
RUNTIME = sorted([*REPO.glob("*.py"), *PACKAGE.glob("**/*.py")])
FRONT_DOORS = (
    "gunicorn.conf.py",
    "photo_inferencing.py",
    "score_service.py",
    "server.py",
    "wsgi.py",
)
WITHOUT_FLASK = ("base", "engine", "decision", "gallery")
WEB_FRAMEWORKS = ("flask", "werkzeug")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (functions included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def imported_names(path: Path) -> set[str]:
    """``imported_modules`` plus ``module.name`` for each ``from module import name`` (so
    ``from facematch.api import security`` names ``facematch.api.security``)."""
    names = imported_modules(path)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def documented_floors() -> list[str]:
    """The floors in the order facematch/__init__.py lists them (``1. the base``, ...)."""
    floors = []
    for line in ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())).splitlines():
        match = re.match(r"^\d+\. (?:the (base)|``(\w+)``)", line)
        if match:
            floors.append(match.group(1) or match.group(2))
    return floors


def floor_of(module: str) -> str | None:
    """The floor of a facematch module (``base`` for the package's own top-level modules)."""
    parts = module.split(".")
    if parts[0] != "facematch":
        return None
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "base"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def floor_graph() -> dict[str, dict[str, set[str]]]:
    """floor -> {imported floor: the modules of the first that import the second}."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(PACKAGE.glob("**/*.py")):
        source = floor_of(module_name(path))
        graph.setdefault(source, {})
        for name in imported_names(path):
            target = floor_of(name)
            if target is not None and target != source:
                graph[source].setdefault(target, set()).add(module_name(path))
    return graph


def find_cycle(graph: dict[str, set[str]] | dict[str, dict]) -> list[str]:
    """A circle of ``graph`` (node -> the nodes it points at) as [a, b, ..., a]; [] if none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_runtime_modules_are_found_and_their_imports_read():
    names = {path.relative_to(REPO).as_posix() for path in RUNTIME}
    assert {"facematch/engine/engine.py", "facematch/engine/weights.py", "wsgi.py"} <= names
    assert {"facematch/api/app.py", "facematch/engine/backends/__init__.py"} <= names
    assert "facematch.engine.options" in imported_modules(REPO / "facematch/engine/engine.py")
    assert "deployment_utils.casia_convert" in imported_modules(
        REPO / "deployment_utils" / "weights.py"
    )  # an import inside a function is seen too


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_runtime_module_imports_the_deployment_or_benchmark_tools(path):
    tools = sorted(m for m in imported_modules(path) if m.split(".")[0] in NOT_FOR_THE_RUNTIME)
    assert not tools, f"{path.name} imports {tools}"


def test_the_deployment_tools_are_found_and_their_imports_read():
    names = {path.relative_to(REPO).as_posix() for path in DEPLOYMENT_TOOLS}
    assert {"deployment_utils/calibration.py", "deployment_utils/lfw.py"} <= names
    assert "deployment_utils.lfw" in imported_modules(REPO / "deployment_utils" / "calibration.py")


@pytest.mark.parametrize("path", DEPLOYMENT_TOOLS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_deployment_tool_imports_the_benchmark_tools(path):
    """Preparing and operating (``deployment_utils``) never needs measuring; what both use (LFW,
    named settings) lives in ``deployment_utils`` and the benchmarks import it from there."""
    found = sorted(m for m in imported_modules(path) if m.split(".")[0] == "benchmarking_utils")
    assert not found, f"{path.name} imports {found}"


def test_the_floor_graph_is_read():
    assert documented_floors() == [
        *("base", "engine", "decision", "gallery", "observability", "api", "watch")
    ]
    graph = floor_graph()
    assert (
        "facematch.api.app" in graph["api"]["observability"]
    )  # from facematch.observability import ...
    assert "facematch.engine.options" in graph["engine"]["base"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_every_subpackage_is_a_documented_floor():
    subpackages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert sorted(set(documented_floors()) - {"base"}) == subpackages


def test_no_import_circle_between_the_floors():
    assert find_cycle(floor_graph()) == []


def test_each_floor_imports_only_the_floors_below_it():
    order = documented_floors()
    upward = {
        f"{source} -> {target}": sorted(modules)
        for source, targets in floor_graph().items()
        for target, modules in targets.items()
        if order.index(target) > order.index(source)
    }
    assert upward == {}


def floor_modules(floor: str) -> list[Path]:
    """The modules of a floor: the package's own top-level ones for the base."""
    return sorted(PACKAGE.glob("*.py") if floor == "base" else (PACKAGE / floor).glob("**/*.py"))


@pytest.mark.parametrize("floor", WITHOUT_FLASK)
def test_the_base_engine_decision_and_gallery_do_not_import_flask(floor):
    paths = floor_modules(floor)
    assert paths, f"the {floor} floor has no modules"
    found = {
        path.relative_to(REPO).as_posix(): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in WEB_FRAMEWORKS
        )
        for path in paths
    }
    assert {path: modules for path, modules in found.items() if modules} == {}


def test_bounded_json_is_pure_the_standard_library_and_the_errors_only():
    """The base floor's JSON parser (the API's and a gallery import's) needs nothing else."""
    path = PACKAGE / "bounded_json.py"
    assert path in floor_modules("base")
    assert imported_modules(path) - sys.stdlib_module_names == {"facematch.errors"}


def test_only_the_front_doors_are_python_files_at_the_root():
    assert sorted(p.name for p in REPO.glob("*.py")) == sorted(FRONT_DOORS)


def test_the_front_doors_hand_out_the_package_objects():
    import photo_inferencing
    import score_service
    import server
    from facematch.api import app
    from facematch.decision import scores
    from facematch.engine import engine

    assert server.create_app is app.create_app
    for name in photo_inferencing.__all__:
        assert getattr(photo_inferencing, name) is getattr(engine, name)
    assert {"FaceEngine", "DetectedFace", "PhotoFaces", "EngineOptions"} <= set(
        photo_inferencing.__all__
    )
    for name in score_service.__all__:
        assert getattr(score_service, name) is getattr(scores, name)
    assert {"distance", "decide", "MatchResult"} <= set(score_service.__all__)
