"""The engine under test: `engine serve ARGS...`, pinned to CPUS before anything else is imported.

    python loadtest/tradescore_bench/engine_server.py CPUS ARGS...

Pinning first means every thread gRPC and ONNX Runtime start later inherits the CPU set.
`BENCH_STUB_MODEL=1` in the environment replaces the model call by a constant (the golden-row
check at load still runs ONNX Runtime): what the engine costs without its model, e.g.
`ab.py --b-env BENCH_STUB_MODEL=1`. Prints "bench-launcher: engine.cli serve" before the engine's
own log, whose "serving tradescore.v1.TradeScorer on HOST:PORT" line gives the port.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    os.sched_setaffinity(0, {int(c) for c in argv[0].split(",")})
    # run as a script, this folder is sys.path[0]: its modules must not shadow anyone's imports
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if os.environ.get("BENCH_STUB_MODEL"):
        import numpy as np
        import numpy.typing as npt

        from engine.scoring.servable import ServingModel

        def constant(self: ServingModel, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            return np.full(features.shape[0], 0.01, dtype=np.float32)

        ServingModel.predict = constant  # type: ignore[method-assign]
        print("bench-stub-model: every score is 0.01, no ONNX Runtime call", file=sys.stderr, flush=True)
    from engine.cli import main as engine_main

    print("bench-launcher: engine.cli serve", file=sys.stderr, flush=True)
    return engine_main(["serve", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
