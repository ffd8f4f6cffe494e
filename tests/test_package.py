"""The package builds with complete metadata, and its wheel works in a fresh virtualenv."""

from __future__ import annotations

import email.message
import email.parser
import json
import os
import subprocess
import sys
import tarfile
import tomllib
import typing as t
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.e2e

T = t.TypeVar("T")
PROJECT: dict[str, t.Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` output: one sdist and one wheel (built from that sdist)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        check=True,
        timeout=600,
    )
    return out


def only(items: t.Iterable[T]) -> T:
    found = list(items)
    assert len(found) == 1, found
    return found[0]


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = only(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_the_wheel_has_complete_metadata(dist: Path) -> None:
    wheel = only(dist.glob("*.whl"))
    meta = wheel_metadata(wheel)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL", []))
    with zipfile.ZipFile(wheel) as archive:
        licenses = [n for n in archive.namelist() if "/licenses/" in n]
        license_text = archive.read(only(licenses)).decode()

    assert (meta["Name"], meta["Version"]) == (PROJECT["name"], PROJECT["version"])
    assert meta["Summary"] == PROJECT["description"]
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# tap-smartcar-connections")  # type: ignore[union-attr]
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["License-File"] == "LICENSE"
    assert "Apache License" in license_text
    assert "Version 2.0" in license_text
    assert meta["Requires-Python"] == ">=3.11"
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in meta.get_all("Classifier", [])
    assert {"singer", "meltano", "smartcar"} <= set(meta["Keywords"].split(","))
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues"}
    assert all(u.startswith(urls["Repository"]) for u in urls.values())
    assert any(r.startswith("singer-sdk") for r in meta.get_all("Requires-Dist", []))


def test_the_wheel_ships_the_tap_only(dist: Path) -> None:
    with zipfile.ZipFile(only(dist.glob("*.whl"))) as archive:
        names = archive.namelist()
    packages = {
        name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")
    }

    assert packages == {"tap_smartcar_connections"}
    assert "tap_smartcar_connections/tap.py" in names
    assert not [name for name in names if "simulator" in name]


def test_the_sdist_holds_what_a_rebuild_and_the_tests_need(dist: Path) -> None:
    with tarfile.open(only(dist.glob("*.tar.gz"))) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}

    assert {
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "meltano.yml",
        "catalog.json",
        "catalog-v3.json",
        "tap_smartcar_connections/tap.py",
        "smartcar_simulator/server.py",
        "tests/conftest.py",
        "hub/extractors/tap-smartcar-connections/smartcar-connections.yml",
        "CHANGELOG.md",
        "docs/incremental-and-resume.md",
        ".github/workflows/ci.yml",
        ".github/workflows/release.yml",
    } <= names


def test_the_wheel_runs_from_a_fresh_virtualenv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", only(dist.glob("*.whl"))],
        capture_output=True,
        check=True,
        env=env,
        timeout=600,
    )

    about = subprocess.run(
        [venv / "bin" / "tap-smartcar-connections", "--about", "--format", "json"],
        capture_output=True,
        check=True,
        cwd=tmp_path,
        env=env,
        text=True,
    )
    location = subprocess.run(
        [venv / "bin" / "python", "-c", "import tap_smartcar_connections as m; print(m.__file__)"],
        capture_output=True,
        check=True,
        cwd=tmp_path,
        env=env,
        text=True,
    ).stdout.strip()
    info = json.loads(about.stdout)

    assert Path(location).is_relative_to(venv)
    assert (info["name"], info["version"]) == (PROJECT["name"], PROJECT["version"])
    # Credentials are required per api_version (checked by the tap), not by the schema.
    assert "required" not in info["settings"]
    assert {
        "api_version",
        "management_token",
        "api_url",
        "client_id",
        "client_secret",
        "modes",
        "page_size",
        "stream_maps",
    } <= set(info["settings"]["properties"])
