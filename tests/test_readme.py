"""The Python examples of the README and of docs/breaks.md run as written against a real server."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import ROOT, EngineProcess

pytestmark = pytest.mark.slow


def test_readme_python_example_scores_a_trade(engine_process: Callable[..., EngineProcess]) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None, "the README lost its Python example"
    server = engine_process()
    code = example.group(1).replace("127.0.0.1:50051", server.target)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()
    trade_id, probability, band = first.split()
    assert trade_id == "T-1001" and 0.0 <= float(probability) <= 1.0 and band.startswith("RISK_BAND_")
    assert second == "settlement-fail 1.0.0"


def test_breaks_page_pairs_example_finds_the_status_break(
    engine_process: Callable[..., EngineProcess],
) -> None:
    page = (ROOT / "docs" / "breaks.md").read_text()
    examples = re.findall(r"```python\n(.*?)```", page, re.S)
    pairs = [e for e in examples if "score_pairs" in e]
    assert pairs, "docs/breaks.md lost its BreakScorer example"
    server = engine_process()
    code = pairs[0].replace("127.0.0.1:50051", server.target)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    first, *rest = run.stdout.splitlines()
    score, is_break, break_class = first.split()
    assert 0.0 <= float(score) <= 1.0 and is_break == "True" and break_class == "BREAK_CLASS_STATUS"
    text = "\n".join(rest)
    assert 'field: "status"' in text and 'value: "settled"' in text and 'source: "trading"' in text
    # both unusual (the status differs, A changed 15 minutes after B); their order is the model's
    assert sorted(ast.literal_eval(rest[-1])) == ["STATUS_MISMATCH", "UPDATE_LAG"]


def test_readme_reasons_example_explains_the_trade(engine_process: Callable[..., EngineProcess]) -> None:
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"```python\n(.*?)```", readme, re.S)
    reasons = [e for e in examples if "EXPLAIN_ALL" in e]
    assert reasons, "the README lost its reasons example"
    server = engine_process()
    # the snippet continues the first example, inside its `with` block
    code = examples[0].replace("127.0.0.1:50051", server.target) + reasons[0]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()[-1]
    said = re.search(r"# (T-1001 \[.*\])", reasons[0])
    assert said is not None, "the snippet shows what it prints"
    assert printed == said.group(1)
