"""The kernel cache (`engine.jit`): a start on a prepared cache compiles nothing; a change anywhere in
the engine's sources is a new, empty cache.

The image's side (compiled in the builder for NUMBA_CPU_NAME=generic, copied at start) is proven by
tests/deploy/test_image.py, which replays the Dockerfile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

import engine.jit as jit
from engine._proto.tradescore.v1 import tradescore_pb2 as pb
from engine._proto.tradescore.v1 import tradescore_pb2_grpc as pb_grpc
from tests.conftest import ROOT, EngineProcess, free_port, sample_request

pytestmark = pytest.mark.slow


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_start_on_a_compiled_cache_compiles_nothing(tmp_path: Path) -> None:
    base = tmp_path / "kernels"
    # seeded with what this test run compiled so far (a cold `engine compile` costs tens of seconds,
    # and the image test pays it once); whatever is missing, `engine compile` compiles now
    if jit.has_kernels(jit.CACHE_DIR):
        shutil.copytree(jit.CACHE_DIR, base / jit.CACHE_DIR.name)
    env = {**os.environ, "ENGINE_KERNEL_CACHE": str(base)}
    env.pop("NUMBA_CACHE_DIR", None)
    compiled = subprocess.run(
        [sys.executable, "-m", "engine.cli", "compile"], capture_output=True, text=True, env=env, timeout=600
    )
    assert compiled.returncode == 0, compiled.stderr
    assert re.search(r"\d+ kernels, \d+ signatures: \d+ compiled", compiled.stdout), compiled.stdout

    metrics_port = free_port()
    server = EngineProcess("--metrics-port", str(metrics_port), env=env)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.TradeScorerStub(channel)
            # every path of the server: a lone trade (event loop), a bulk call (inference thread) with
            # reasons for its risky trades, reasons for all (TreeSHAP row by row and in blocks), a
            # stream, and a refused request
            assert len(stub.Score(sample_request(1, seed=1), timeout=30).scores) == 1
            assert len(stub.Score(sample_request(300, seed=2), timeout=30).scores) == 300
            for n in (1, 3, 40):
                request = sample_request(n, seed=3)
                request.explain = pb.EXPLAIN_ALL
                assert len(stub.Score(request, timeout=30).reasons) == n
            streamed = list(stub.ScoreStream(iter([sample_request(2, seed=4)] * 3), timeout=30))
            assert [len(r.scores) for r in streamed] == [2, 2, 2]
            with pytest.raises(grpc.RpcError) as refused:
                stub.Score(pb.ScoreRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.signal(15)
        code, log = server.wait(timeout=60)
    assert code == 0, log
    assert re.search(r"^engine_kernels_compiled 0\.0$", text, re.M), [
        line for line in text.splitlines() if "kernels" in line
    ]
    loaded = re.search(r"^engine_kernels_loaded (\d+)\.0$", text, re.M)
    assert loaded is not None and int(loaded.group(1)) > 0
    assert re.search(r"kernels: \d+ from the cache, 0 compiled \(kernel cache \S+ \(cached;", log), log
    assert "compiling the engine's kernels" not in log


def test_a_changed_source_anywhere_is_a_new_cache(tmp_path: Path) -> None:
    """numba alone notices a change in a kernel's own file only; the key covers every source file, so a
    changed constant in a module a kernel imports (here engine/features/rows.py, whose column numbers
    the validation and feature kernels read) can never meet machine code compiled before it."""
    probe = "import engine.jit as j; print(j.CACHE_DIR.name, j.CACHE_STATE)"
    env = {**os.environ}
    env.pop("NUMBA_CACHE_DIR", None)
    env["ENGINE_KERNEL_CACHE"] = str(jit.CACHE_DIR.parent)  # where this run's kernels are
    original, _ = _python(probe, {**env, "PYTHONPATH": str(ROOT / "src")}).split()

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "engine", copy / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    same, _ = _python(probe, {**env, "PYTHONPATH": str(copy)}).split()
    assert same == original  # the key is the sources' content, not where they are

    rows = copy / "engine" / "features" / "rows.py"
    rows.write_text(rows.read_text() + "\n#: a constant a kernel might read\nEXTRA_COLUMN = 99\n")
    changed, state = _python(probe, {**env, "PYTHONPATH": str(copy)}).split()
    assert changed != original and state == "empty"
