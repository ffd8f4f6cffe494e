"""Every module the tap imports is a declared dependency, not one that happens to come along."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from .conftest import ROOT

PACKAGE = ROOT / "tap_smartcar_connections"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> dict[str, set[str]]:
    """Map each top-level module imported by the package's files to the files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
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


def test_the_simulator_needs_only_the_standard_library() -> None:
    # It ships in the wheel and runs as `python -m tap_smartcar_connections.simulator`.
    imports = {
        module for module, files in imported_top_level_modules().items() if "simulator.py" in files
    }

    assert imports - set(sys.stdlib_module_names) <= {"__future__"}
