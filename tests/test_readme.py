"""The README's Python example runs as written against a real server."""

from __future__ import annotations

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
