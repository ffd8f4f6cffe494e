"""What a new user reads: --help, --about, the README and the docs pages it links to."""

from __future__ import annotations

import subprocess

from .test_metadata import CLI


def test_help_and_about_speak_of_both_api_versions() -> None:
    help_text = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True).stdout
    about = subprocess.run([CLI, "--about"], capture_output=True, text=True, check=True).stdout
    description = next(line for line in about.splitlines() if line.startswith("Description: "))

    assert "API v2 (the default): the Management API v2.0, with management_token" in help_text
    assert "API v3 (api_version v3): with client_id and client_secret" in help_text
    assert "--test  check credentials and URLs" in help_text  # not "token and api_url"
    assert "Smartcar application, from API v2 or v3." in description
    assert "with `api_version: v3`, Smartcar API v3" in description
