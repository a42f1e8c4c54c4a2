"""The committed stubs in src/engine/_proto are exactly what proto/ generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import ROOT


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_match_proto_sources(tmp_path: Path) -> None:
    gen = _load_generator()
    written = gen.generate(tmp_path)
    committed_dir = ROOT / "src" / "engine" / "_proto"
    assert written, "nothing generated"
    for fresh in written:
        rel = fresh.relative_to(tmp_path)
        committed = committed_dir / rel
        assert committed.exists(), f"{rel} is generated but not committed: run scripts/gen_proto.py"
        assert committed.read_text() == fresh.read_text(), f"{rel} is stale: run scripts/gen_proto.py"
    fresh_names = {p.relative_to(tmp_path) for p in written}
    stale = [
        p.relative_to(committed_dir)
        for p in committed_dir.rglob("*_pb2*.py*")
        if p.relative_to(committed_dir) not in fresh_names
    ]
    assert not stale, f"committed stubs with no .proto behind them: {stale}"
