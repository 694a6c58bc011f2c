"""Dependencies point one way: the service's runtime modules never import the deployment or
benchmark tools (those import the runtime, never the reverse)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("deployment_utils", "benchmarking_utils")
# The runtime: the facematch package and the front doors at the root.
RUNTIME = sorted([*REPO.glob("*.py"), *REPO.glob("facematch/**/*.py")])


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (functions included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


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
    tools = sorted(m for m in imported_modules(path) if m.split(".")[0] in TOOLS)
    assert not tools, f"{path.name} imports {tools}"
