#!/usr/bin/env python
"""The compiled request path of two source trees, timed call by call in one process.

    python loadtest/path_ab.py /path/to/other/checkout      # e.g. a `git worktree` of HEAD~1

Loads `engine.scoring.wire` from this checkout and from the other one (as a
second module), then times `prepare_request` (decode + validate + features)
and `response_bytes` of both on the same 256-trade requests, alternating call
by call on one pinned core: the VM's drift hits both alike, so differences of
a few percent are visible, where separate runs differ by tens of percent.
Each pair is timed in turn in both orders (the second call of a pair finds the
request in cache). Prints the median microseconds per call of each and
this/other. Not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (this folder's benchmark: the requests it sends)

from engine.models.bundle import DEFAULT_BUNDLE  # noqa: E402
from engine.scoring import wire  # noqa: E402
from engine.scoring.servable import load_serving_model  # noqa: E402


def _other_wire(checkout: Path) -> ModuleType:
    path = checkout / "src" / "engine" / "scoring" / "wire.py"
    spec = importlib.util.spec_from_file_location("other_wire", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_wire"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _prepare(module: ModuleType, tables: Any, plan: Any, raw: bytes) -> object:
    return module.prepare_request(raw, tables, plan, 1000)


def _respond(
    module: ModuleType, decoded: dict[bytes, Any], probabilities: Any, model: Any, raw: bytes
) -> object:
    return module.response_bytes(
        decoded[raw], probabilities, model.band_edges, model.name_bytes, model.version_bytes
    )


def main() -> int:
    p = argparse.ArgumentParser(
        prog="loadtest/path_ab.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("other", type=Path, help="the other checkout (its src/engine/scoring/wire.py is loaded)")
    p.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    p.add_argument("--rounds", type=int, default=60, help="passes over the 32 requests")
    args = p.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    other = _other_wire(args.other)
    model = load_serving_model(DEFAULT_BUNDLE)
    tables = {"this": model.wire, "other": other.WireTables.build(model.plan)}
    modules = {"this": wire, "other": other}
    raws = bench.build_requests(64, 32, 256, 7, DEFAULT_BUNDLE).batches
    probabilities = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    steps: dict[str, dict[str, Callable[[bytes], object]]] = {"prepare_request": {}, "response_bytes": {}}
    for name, module in modules.items():
        t = tables[name]
        decoded = {raw: module.decode_request(raw, t, 1000) for raw in raws}
        steps["prepare_request"][name] = partial(_prepare, module, t, model.plan)
        steps["response_bytes"][name] = partial(_respond, module, decoded, probabilities, model)
    for step, fns in steps.items():
        times: dict[str, list[int]] = {name: [] for name in fns}
        for fn in fns.values():
            for raw in raws:
                fn(raw)  # compile and warm up
        order = list(fns.items())
        for k in range(args.rounds):
            for raw in raws:
                # the second call of a pair finds the request bytes in cache: swap who goes first
                for name, fn in order if k % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter_ns()
                    fn(raw)
                    times[name].append(time.perf_counter_ns() - t0)
        this, that = (float(np.median(times[name])) / 1e3 for name in ("this", "other"))
        print(f"{step:16s} this {this:7.1f} us, other {that:7.1f} us per call; this/other {this / that:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
