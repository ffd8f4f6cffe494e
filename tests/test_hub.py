"""The Meltano Hub definition passes the Hub's own checks and says what the tap says."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
import typing as t
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT7

from tap_smartcar_connections.tap import TapSmartcarConnections

from .conftest import ROOT
from .test_metadata import CLI, SETTINGS_GROUPS, expected_meltano_settings

HUB_DATA = ROOT / "tests" / "data" / "meltano-hub"
SCHEMAS = HUB_DATA / "schemas"
HUB_FILES = sorted((ROOT / "hub" / "extractors").glob("*/*.yml"))


def _load_schema(path: Path) -> dict[str, t.Any]:
    """Load a Hub schema with its file URI as `$id`, so relative `$ref`s resolve from its folder.

    The Hub's own `$id`s are bare relative names that would resolve against each other.
    """
    schema: dict[str, t.Any] = json.loads(path.read_text(encoding="utf-8"))
    schema["$id"] = path.resolve().as_uri()
    return schema


def hub_errors(definition: dict[str, t.Any]) -> list[str]:
    """Validate an extractor definition the way the Hub does; return the error messages."""
    schemas = {path: _load_schema(path) for path in sorted(SCHEMAS.glob("*/*.schema.json"))}
    registry: Registry[t.Any] = Registry().with_resources(
        (schema["$id"], DRAFT7.create_resource(schema)) for schema in schemas.values()
    )
    root = schemas[SCHEMAS / "plugin_definitions" / "extractors.schema.json"]
    validator = jsonschema.Draft7Validator(root, registry=registry)
    return [error.message for error in validator.iter_errors(definition)]


def yamllint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "-f",
            "parsable",
            "-c",
            HUB_DATA / "yamllint.yaml",
            path,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def definition() -> dict[str, t.Any]:
    assert len(HUB_FILES) == 1, HUB_FILES
    loaded: dict[str, t.Any] = yaml.safe_load(HUB_FILES[0].read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def about() -> dict[str, t.Any]:
    result: dict[str, t.Any] = json.loads(
        subprocess.run([CLI, "--about", "--format", "json"], capture_output=True, check=True).stdout
    )
    return result


def test_the_hub_definition_is_valid_for_the_hub(definition: dict[str, t.Any]) -> None:
    assert hub_errors(definition) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d["settings"][0].update(required=True), "a setting may not be required"),
        (lambda d: d["settings"][1].update(kind="number"), "kind number is not allowed"),
        (lambda d: d.pop("quality"), "quality is required"),
        (lambda d: d.update(homepage="https://example.com"), "unknown top-level key"),
        (lambda d: d.update(capabilities=["about", "magic"]), "unknown capability"),
    ],
)
def test_the_hub_schema_rejects_what_the_hub_rejects(
    definition: dict[str, t.Any], change: t.Callable[[dict[str, t.Any]], None], reason: str
) -> None:
    broken = copy.deepcopy(definition)
    change(broken)

    assert hub_errors(broken), reason


def test_the_hub_definition_passes_the_hubs_yamllint() -> None:
    result = yamllint(HUB_FILES[0])

    assert (result.returncode, result.stdout) == (0, "")


def test_yamllint_catches_keys_out_of_alphabetical_order(
    definition: dict[str, t.Any], tmp_path: Path
) -> None:
    unordered = tmp_path / "unordered.yml"
    reordered = {"name": definition["name"], **definition}
    unordered.write_text(yaml.safe_dump(reordered, sort_keys=False))

    result = yamllint(unordered)

    assert result.returncode == 1
    assert "(key-ordering)" in result.stdout


def test_the_hub_definition_says_what_the_tap_says(
    definition: dict[str, t.Any], about: dict[str, t.Any]
) -> None:
    extractor = yaml.safe_load((ROOT / "meltano.yml").read_text())["plugins"]["extractors"][0]
    settings = {s["name"]: s for s in definition["settings"]}

    assert definition["name"] == about["name"] == extractor["name"] == HUB_FILES[0].parent.name
    assert definition["variant"] == HUB_FILES[0].stem
    assert definition["namespace"] == extractor["namespace"]
    assert definition["executable"] == extractor["executable"] == about["name"]
    assert definition["settings"] == expected_meltano_settings() == extractor["settings"]
    assert settings["management_token"]["kind"] == "string"
    assert settings["management_token"]["sensitive"] is True
    assert definition["settings_group_validation"] == extractor["settings_group_validation"]
    assert definition["settings_group_validation"] == SETTINGS_GROUPS
    secrets = [n for n, s in about["settings"]["properties"].items() if s.get("secret")]
    assert secrets == ["management_token", "client_secret"]
    assert all(any(name in group for group in SETTINGS_GROUPS) for name in secrets)
    assert all(settings[name]["sensitive"] is True for name in secrets)
    assert [o["value"] for o in settings["api_version"]["options"]] == ["v2", "v3"]
    assert set(definition["capabilities"]) == set(about["capabilities"])
    assert set(definition["capabilities"]) == set(extractor["capabilities"])


def test_the_hub_definition_names_the_streams_of_either_api_version(
    definition: dict[str, t.Any],
) -> None:
    config = {"api_version": "v3", "client_id": "client_x", "client_secret": "s"}
    streams = TapSmartcarConnections(config=config).streams
    text = " ".join(definition[k] for k in ("description", "definition", "usage"))

    assert set(streams) == {"connections", "webhooks", "subscriptions"}
    for name in streams:
        assert name in definition["description"]
        assert f"`{name}`" in text
    for field in set(streams["connections"].schema["properties"]) - {
        "userId",
        "vehicleId",
        "connectedAt",
        "mode",
    }:
        assert f"`{field}`" in definition["usage"], field


def test_the_hub_definition_installs_the_published_package(
    definition: dict[str, t.Any], about: dict[str, t.Any]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tested = [
        c.rsplit(" ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]

    assert definition["pip_url"] == project["name"]
    assert definition["repo"] == project["urls"]["Repository"]
    assert definition["docs"].startswith(definition["repo"])
    assert definition["supported_python_versions"] == tested == about["supported_python_versions"]
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in tested
