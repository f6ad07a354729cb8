"""The documentation: every relative link in the README, config/README.md and docs/*.md points to a file (and
heading) of this repository, the README stays short, and config/README.md documents every config key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 220

# [text](target) and [text](target "title"); images too. Code spans and fenced blocks are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def links(page: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", page.read_text()))
    return LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    text = FENCE.sub("", page.read_text())
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-") for heading in headings}


def test_the_pages_exist():
    assert (REPO / "docs").is_dir() and len(PAGES) > 2
    for page in PAGES:
        assert page.is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_point_into_the_repository(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if REPO not in (resolved, *resolved.parents) or not resolved.exists():
            broken.append(f"{target} (no such file in the repository)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading '{anchor}' in {resolved.relative_to(REPO)})")
    assert broken == [], f"{page.relative_to(REPO)}: broken links: {broken}"


def test_the_link_check_finds_broken_links(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](missing.md) [b](#title) [c](#nowhere) `[d](ignored.md)` [e](https://example.org)\n")
    assert links(page) == ["missing.md", "#title", "#nowhere", "https://example.org"]
    assert anchors(page) == {"title"}


def test_the_readme_stays_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def schema_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        nested = schema_keys(sub, f"{key}.")
        keys.extend(nested or [key])
    return keys


def test_config_readme_documents_every_config_key_and_sheet_column():
    text = (REPO / "config" / "README.md").read_text()
    config = yaml.safe_load((REPO / "bacflow" / "schemas" / "config.schema.yaml").read_text())
    sheet = yaml.safe_load((REPO / "bacflow" / "schemas" / "samples.schema.yaml").read_text())
    keys = schema_keys(config) + list(sheet["properties"])
    assert len(keys) > 80
    missing = [key for key in keys if f"`{key}`" not in text]
    assert missing == [], f"config/README.md does not document: {missing}"
