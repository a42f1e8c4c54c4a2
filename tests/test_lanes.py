"""The two test lanes: `scripts/test` runs everything (the README's command, and CI's), `scripts/test
--fast` the tests not marked slow; both are documented where a developer looks."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT


def test_ci_runs_the_whole_suite_and_the_readme_shows_both_lanes() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec scripts/test(?: -q)?$", ci, re.M), ci
    assert "--fast" not in ci
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    # the opening block holds exactly the two set-up commands; the fast lane is named right after
    assert "scripts/test" in commands and "scripts/test --fast" not in commands, first_block
    assert "`scripts/test --fast`" in readme.split("```")[2], "the README must name the fast lane"


def test_scripts_test_help_explains_the_fast_lane() -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "test"), "--help"], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    assert "usage: scripts/test [--fast]" in run.stdout
    assert '-m "not slow"' in run.stdout and ".ci/run" in run.stdout
