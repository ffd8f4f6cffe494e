"""What a new user reads: --help, --about, the README and the docs pages it links to."""

from __future__ import annotations

import re
import subprocess
import tomllib

from .conftest import ROOT
from .test_metadata import CLI


def test_help_and_about_speak_of_both_api_versions() -> None:
    help_text = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True).stdout
    about = subprocess.run([CLI, "--about"], capture_output=True, text=True, check=True).stdout
    description = next(line for line in about.splitlines() if line.startswith("Description: "))

    assert "API v2 (the default): the Management API v2.0, with management_token" in help_text
    assert "API v3 (api_version v3): with client_id and client_secret" in help_text
    assert "--test  check credentials and URLs" in help_text  # not "token and api_url"
    assert description.endswith("Smartcar application, from API v2 or v3.")


README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return text.replace(" ", "-")


def test_the_readme_reads_in_five_minutes() -> None:
    text = README.read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)

    assert len(text.splitlines()) <= 300
    assert sections == [
        "Quick start with your Smartcar application",
        "Settings",
        "The streams",
        "Loading into your warehouse",
        "Troubleshooting",
        "Development",
        "More",
    ]


def test_every_docs_page_is_linked_from_the_readme_and_every_link_resolves() -> None:
    linked = set()
    for page in [README, *DOCS]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.is_file(), f"{page.name}: {target}"
            if anchor:
                headings = re.findall(r"^#+ .+$", resolved.read_text(), flags=re.M)
                assert anchor in {slug(h) for h in headings}, f"{page.name}: {target}"
            if page == README:
                linked.add(resolved)

    assert {p.name for p in DOCS} == {
        "api-v3.md",
        "development.md",
        "incremental-and-resume.md",
        "performance.md",
        "reliability.md",
    }
    assert set(DOCS) <= linked


def test_the_readme_names_the_supported_pythons() -> None:
    classifiers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    versions = [
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    named = f"Python {', '.join(versions[:-1])} and {versions[-1]}"

    assert named == "Python 3.11, 3.12 and 3.13"
    assert f"Supported: {named}" in README.read_text()
