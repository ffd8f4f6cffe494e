"""Drift checks: catalog.json, catalog-v3.json, meltano.yml and the README match the code."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml

from tap_smartcar_connections.errors import ConfigError
from tap_smartcar_connections.tap import TapSmartcarConnections
from tap_smartcar_connections.v2 import V2ConnectionsStream

from .conftest import ROOT

CLI = str(Path(sys.executable).with_name("tap-smartcar-connections"))
SETTINGS_GROUPS = [["management_token"], ["client_id", "client_secret"]]
"""Meltano's `settings_group_validation`: the credentials of API v2, or those of API v3."""


def config_schema() -> dict[str, t.Any]:
    """The whole config schema: the tap's settings, then the SDK's built-in ones."""
    schema: dict[str, t.Any] = copy.deepcopy(TapSmartcarConnections.config_jsonschema)
    TapSmartcarConnections.append_builtin_config(schema)
    return schema


def expected_meltano_settings() -> list[dict[str, t.Any]]:
    """The Meltano setting definitions that the config schema implies, in schema order.

    Secrets are `kind: string` with `sensitive: true`, the form Meltano 4 writes (it rewrites
    the older `kind: password` into it whenever it saves `meltano.yml`). A setting with allowed
    values (`api_version`) is `kind: options` listing them, in the key order Meltano writes.
    """
    result = []
    for name, spec in config_schema()["properties"].items():
        types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
        if spec.get("format") == "date-time":
            kind = "date_iso8601"
        elif "enum" in spec:
            kind = "options"
        else:
            kind = next(k for k in types if k != "null")
        setting: dict[str, t.Any] = {
            "name": name,
            "kind": kind,
            "label": spec["title"],
            "description": spec["description"],
        }
        if "default" in spec:
            setting["value"] = spec["default"]
        if "enum" in spec:
            setting["options"] = [{"label": v, "value": v} for v in spec["enum"]]
        if spec.get("secret"):
            setting["sensitive"] = True
        result.append(setting)
    return result


def test_every_setting_and_field_has_a_description() -> None:
    assert all(s["description"] for s in expected_meltano_settings())
    assert all(p.get("description") for p in V2ConnectionsStream.schema["properties"].values())


def test_meltano_yml_settings_match_the_config_schema() -> None:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    extractor = project["plugins"]["extractors"][0]

    assert extractor["name"] == "tap-smartcar-connections"
    assert extractor["settings"] == expected_meltano_settings()
    assert extractor["settings_group_validation"] == SETTINGS_GROUPS


def test_the_settings_groups_are_what_each_api_version_requires() -> None:
    # Each alternative is a complete credential set for one api_version: the tap accepts it alone
    # (validation and discovery, no request), and refuses it with any one setting left out.
    values = {"management_token": "t", "client_id": "client_x", "client_secret": "s"}
    versions = {"management_token": "v2", "client_id": "v3"}

    for group in SETTINGS_GROUPS:
        config = {"api_version": versions[group[0]], **{n: values[n] for n in group}}
        assert TapSmartcarConnections(config=config, validate_config=True).streams
        for name in group:
            with pytest.raises(ConfigError, match=f"'{name}' is required"):
                TapSmartcarConnections(config={k: v for k, v in config.items() if k != name})


def test_meltano_yml_capabilities_match_about() -> None:
    about = json.loads(
        subprocess.run([CLI, "--about", "--format", "json"], capture_output=True, check=True).stdout
    )
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    declared = set(project["plugins"]["extractors"][0]["capabilities"])

    assert declared == set(about["capabilities"])


def test_catalog_json_is_the_discover_output() -> None:
    discovered = subprocess.run([CLI, "--discover"], capture_output=True, check=True, text=True)

    assert json.loads((ROOT / "catalog.json").read_text()) == json.loads(discovered.stdout)


def test_catalog_v3_json_is_the_discover_output_under_api_v3(tmp_path: Path) -> None:
    """`--discover` with only `{"api_version": "v3"}`: no credentials, no request."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_version": "v3"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_SMARTCAR_CONNECTIONS_")}
    discovered = subprocess.run(
        [CLI, "--config", str(config), "--discover"],
        capture_output=True,
        check=True,
        text=True,
        env=env,
    )
    catalog = json.loads((ROOT / "catalog-v3.json").read_text())
    v2 = json.loads((ROOT / "catalog.json").read_text())

    assert catalog == json.loads(discovered.stdout)
    assert [s["tap_stream_id"] for s in catalog["streams"]] == [
        "connections",
        "subscriptions",
        "webhooks",
    ]
    assert catalog["streams"][0]["schema"] == v2["streams"][0]["schema"]


def test_readme_settings_table_is_the_about_markdown_table() -> None:
    about = subprocess.run(
        [CLI, "--about", "--format", "markdown"], capture_output=True, check=True, text=True
    ).stdout
    table = about[about.index("| Setting |") :].split("\n\n")[0].strip()

    assert table in (ROOT / "README.md").read_text()


def test_meltano_yml_selects_every_stream_of_either_api_version_and_names_none() -> None:
    """Each version's streams are selected by a pattern, none by its name alone.

    Meltano warns on every run about a selected stream name the catalog lacks (under v2,
    `webhooks` and `subscriptions`); a rule with a wildcard it never warns about.
    """
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    rules = [rule.split(".", 1)[0] for rule in project["plugins"]["extractors"][0]["select"]]
    streams = {
        version: {s.name for s in TapSmartcarConnections(config=config).streams.values()}
        for version, config in {
            "v2": {"management_token": "t"},
            "v3": {"api_version": "v3", "client_id": "client_x", "client_secret": "s"},
        }.items()
    }

    assert streams["v2"] == {"connections"}
    assert streams["v3"] == {"connections", "webhooks", "subscriptions"}
    assert all("*" in rule for rule in rules), rules
    for names in streams.values():
        assert {n for n in names if any(fnmatch.fnmatchcase(n, r) for r in rules)} == names
