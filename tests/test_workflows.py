"""The GitHub workflows pass actionlint and zizmor here, so a broken one fails before GitHub.

Both tools run offline from the dev dependencies. Each check is also shown to catch a broken
copy, so a check that silently stopped looking would fail too.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import typing as t
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
PROJECT: dict[str, t.Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def workflow(name: str) -> dict[t.Any, t.Any]:
    loaded: dict[t.Any, t.Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return loaded


def triggers(loaded: dict[t.Any, t.Any]) -> dict[str, t.Any]:
    """The `on:` mapping (PyYAML reads the bare key `on` as the boolean True)."""
    on: dict[str, t.Any] = loaded[True]
    return on


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "actionlint", "-no-color", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def zizmor(path: Path) -> subprocess.CompletedProcess[str]:
    """zizmor with every audit that needs no network, at its most pedantic.

    `--strict-collection`: a file that is not a valid workflow fails instead of being skipped.
    """
    options = ["--offline", "--no-config", "--persona=pedantic", "--strict-collection"]
    return subprocess.run(
        [BIN / "zizmor", *options, "--color=never", "--no-progress", path],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of a workflow, in a repository layout, with one change."""
    text = (WORKFLOWS / name).read_text()
    assert old in text
    path = tmp_path / ".github" / "workflows" / name
    path.parent.mkdir(parents=True)
    path.write_text(text.replace(old, new, 1))
    return path


def test_the_workflows_pass_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    result = actionlint(*files)

    assert [f.name for f in files] == ["ci.yml", "release.yml"]
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    path = broken_copy(tmp_path, "ci.yml", "matrix.python-version }}", "matrix.python }}")

    result = actionlint(path)

    assert result.returncode == 1
    assert 'property "python" is not defined' in result.stdout


def test_the_workflows_and_dependabot_pass_zizmor() -> None:
    result = zizmor(ROOT / ".github")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout


@pytest.mark.parametrize(
    ("old", "new", "audit"),
    [
        (
            "run: bash scripts/test.sh",
            'run: echo "${{ github.event.pull_request.title }}"',
            "template-injection",
        ),
        ("persist-credentials: false", "fetch-depth: 1", "artipacked"),
    ],
    ids=["template-injection", "credentials-persisted"],
)
def test_zizmor_catches_an_unsafe_workflow(tmp_path: Path, old: str, new: str, audit: str) -> None:
    path = broken_copy(tmp_path, "ci.yml", old, new)

    result = zizmor(path)

    assert result.returncode != 0
    assert audit in result.stdout


def test_ci_runs_the_readmes_test_command_on_every_supported_python() -> None:
    ci = workflow("ci.yml")
    (job,) = ci["jobs"].values()
    runs = [step["run"] for step in job["steps"] if "run" in step]
    supported = [
        c.rsplit(" ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]

    assert set(triggers(ci)) == {"push", "pull_request"}
    assert job["strategy"]["matrix"]["python-version"] == supported == ["3.11", "3.12", "3.13"]
    assert runs == ["bash scripts/test.sh"]
    assert "bash scripts/test.sh   #" in (ROOT / "README.md").read_text()
    assert ci["permissions"] == {}
    assert job["permissions"] == {"contents": "read"}


def test_the_release_builds_both_distributions_and_publishes_with_trusted_publishing() -> None:
    release = workflow("release.yml")
    build, publish = release["jobs"]["build"], release["jobs"]["publish"]
    build_runs = "\n".join(step.get("run", "") for step in build["steps"])
    (publisher,) = [s for s in publish["steps"] if "gh-action-pypi-publish" in s.get("uses", "")]

    assert triggers(release) == {"release": {"types": ["published"]}}
    assert "python -m build\n" in build_runs  # both the sdist and the wheel
    assert publish["needs"] == "build"
    assert publish["permissions"] == {"id-token": "write"}
    assert publish["environment"]["name"] == "pypi"
    assert not publisher.get("with", {}).keys() & {"password", "user"}  # no stored token
    assert release["permissions"] == {}
    every_use = [s["uses"] for job in release["jobs"].values() for s in job["steps"] if "uses" in s]
    assert all(re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", use) for use in every_use)
