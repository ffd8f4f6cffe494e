"""Every module the tap imports is a declared dependency, not one that happens to come along."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "tap_smartcar_connections"
SIMULATOR = ROOT / "smartcar_simulator"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Map each top-level module imported by a package's files to the files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = set()
    for requirement in project["dependencies"]:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, requirement
        names.add(normalise(match.group()))
    return names


def test_every_third_party_import_is_a_declared_dependency() -> None:
    imports = imported_top_level_modules()
    owners = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    third_party = {
        module
        for module in imports
        if module not in sys.stdlib_module_names
        and module not in {"__future__", "tap_smartcar_connections"}
    }

    assert {"singer_sdk", "jsonschema", "typing_extensions", "msgspec"} <= third_party
    missing = {
        module: sorted(imports[module])
        for module in third_party
        if not {normalise(d) for d in owners.get(module, [module])} & declared
    }
    assert missing == {}, f"imported but not in [project].dependencies: {missing}"


def test_the_tap_does_not_import_the_simulator() -> None:
    # The wheel ships the tap only: an import of the simulator would fail once installed.
    assert "smartcar_simulator" not in imported_top_level_modules()


def test_the_simulator_needs_only_the_standard_library() -> None:
    # It is not installed with the tap: it runs from the checkout as `python -m
    # smartcar_simulator` with nothing but the interpreter's own modules.
    imports = imported_top_level_modules(SIMULATOR)

    assert len({file for files in imports.values() for file in files}) >= 5
    assert imports.keys() - set(sys.stdlib_module_names) <= {"__future__"}
