"""The documentation: the reference pages match their sources, the site builds strictly, the README is short.

- docs/reference/flags.md and docs/reference/metrics.md are what scripts/gen_docs.py generates from
  `engine.config.Settings` and `engine.metrics.EngineMetrics` (as tests/http/test_openapi.py does
  for the OpenAPI document): a flag or metric added, renamed or re-documented without a
  regeneration fails here;
- `mkdocs build --strict` (the Material theme) builds the site without a warning: no broken link
  or anchor, no page left out of the navigation;
- the README stays a short tour: under 15 KB, opening with the two set-up commands, and its table
  of key flags gives the defaults `Settings` has.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import ModuleType

import pytest

from engine.config import Settings
from tests.conftest import ROOT

README_LIMIT = 15_000
SETUP = (
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/engine serve",
    "scripts/test",
)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_generated_from_their_sources() -> None:
    pages = _generator().build()
    assert set(pages) == {
        ROOT / "docs" / "reference" / "flags.md",
        ROOT / "docs" / "reference" / "metrics.md",
    }
    for path, text in pages.items():
        assert path.read_text() == text, f"{path.name} is stale: run python scripts/gen_docs.py"


def test_flag_reference_lists_every_setting() -> None:
    text = (ROOT / "docs" / "reference" / "flags.md").read_text()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        assert f"| `{flag}" in text and f"<br>`ENGINE_{f.name.upper()}` |" in text, flag


def test_metric_reference_lists_every_metric() -> None:
    from prometheus_client import CollectorRegistry

    from engine.metrics import EngineMetrics

    registry = CollectorRegistry()
    EngineMetrics(registry)
    text = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    names = {family.name for family in registry.collect()}
    assert len(names) > 20
    for name in names:
        assert re.search(rf"\| `{re.escape(name)}(_total)?` \|", text), name


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "WARNING" not in run.stderr, run.stderr
    for page in (
        "index.html",
        "reference/flags/index.html",
        "reference/metrics/index.html",
        "batch/index.html",
    ):
        assert (tmp_path / page).is_file(), page
    assert "--max-queue-rows" in (tmp_path / "reference" / "flags" / "index.html").read_text()
    # the images under docs/ are part of the site and linked from a page
    assert (tmp_path / "images" / "discovery-report.png").is_file()
    assert "images/discovery-report.png" in (tmp_path / "batch" / "index.html").read_text()


def test_every_docs_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages and all(f": {page}" in nav for page in pages), sorted(
        p for p in pages if f": {p}" not in nav
    )


def test_readme_is_short_and_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) < README_LIMIT, f"README.md is {len(readme):,} bytes"
    text = readme.decode()
    block = re.match(r"# TradeScore engine\n\n```bash\n(.*?)\n```\n", text, re.S)
    assert block is not None, "the README must open with its set-up commands"
    commands = [line.split("  #")[0].rstrip() for line in block.group(1).splitlines()]
    assert commands == list(SETUP)


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((?!https?://)([^)#]+)(?:#[^)]*)?\)", text)
    assert targets
    for target in targets:
        assert (ROOT / target).exists(), target


def test_readme_key_flags_give_the_settings_defaults() -> None:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Key flags") :].split("\n## ")[0]
    rows = re.findall(r"^\| `(--[a-z-]+)`[^|]* \| ([^|]+) \|", table, re.M)
    assert len(rows) >= 10
    defaults = {"--" + f.name.replace("_", "-"): f.default for f in fields(Settings)}
    for flag, shown in rows:
        default = defaults[flag]
        shown = shown.strip()
        if flag == "--bundle":
            assert shown == "the shipped bundle"
        elif isinstance(default, bool):
            assert shown == ("on" if default else "off"), flag
        elif default == "":
            assert shown.startswith("empty"), flag
        elif default == 0:
            assert shown == "0 (off)", flag
        else:
            assert shown == f"{default:g}" if isinstance(default, float) else shown == str(default), flag
