"""The contract as a product: buf lint, and buf breaking against the last released tradescore.v1.

buf comes from the npm package @bufbuild/buf (scripts/install-buf, which scripts/test runs).
proto/released/tradescore-v1.binpb is the buf image of the contract as released (0.1.0); a
release replaces it (docs/contract.md: versioning).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

BUF = ROOT / ".tools" / "buf" / "node_modules" / ".bin" / "buf"
RELEASED = ROOT / "proto" / "released" / "tradescore-v1.binpb"


def _buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail("buf is not installed: run scripts/install-buf")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_buf_lint_passes() -> None:
    run = _buf("lint")
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_no_breaking_change_against_the_released_contract() -> None:
    run = _buf("breaking", "--against", str(RELEASED))
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_buf_breaking_catches_a_breaking_change(tmp_path: Path) -> None:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    proto = tmp_path / "proto" / "tradescore" / "v1" / "tradescore.proto"
    text = proto.read_text()
    assert "  double quantity = 7;" in text
    proto.write_text(text.replace("  double quantity = 7;", "  string quantity = 7;"))
    run = _buf("breaking", "--against", str(RELEASED), cwd=tmp_path)
    assert run.returncode != 0 and "quantity" in run.stdout
