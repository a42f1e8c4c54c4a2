"""The rule files in k8s/monitoring/rules: valid for promtool, and every alert unit-tested firing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.prom import ROOT, RULES_DIR, promtool

#: promtool checks and unit tests (slow: not in scripts/test --fast)
pytestmark = pytest.mark.slow

TESTS_DIR = Path(__file__).parent / "rules"


def rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.yaml"))
    assert files, f"no rule files in {RULES_DIR}"
    return files


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *map(str, rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests() -> None:
    tests = sorted(TESTS_DIR.glob("*.test.yaml"))
    assert tests
    result = promtool("test", "rules", *map(str, tests), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    # every rule file is loaded by the unit tests, so none goes untested
    loaded = {
        (test.parent / f).resolve() for test in tests for f in yaml.safe_load(test.read_text())["rule_files"]
    }
    assert loaded == {f.resolve() for f in rule_files()}


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {
        rule["alert"]
        for f in rule_files()
        for group in yaml.safe_load(f.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in TESTS_DIR.glob("*.test.yaml"):
        groups = yaml.safe_load(test.read_text())["tests"]
        cases: list[dict[str, Any]] = [case for group in groups for case in group.get("alert_rule_test", [])]
        for case in cases:
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fires == set(), "alerts never tested firing"
    # an alert that can only be seen firing might fire always: each also has a case where it stays quiet,
    # except TradeScoreAbsent, whose quiet case is every other test (their `up` series exist)
    assert alerts - quiet - {"TradeScoreAbsent"} == set(), "alerts never tested quiet"
