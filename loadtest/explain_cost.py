#!/usr/bin/env python
"""CPU per explained trade: the engine's TreeSHAP kernel against LightGBM's `pred_contrib`, same rows.

Both run single-threaded in this process on rows drawn from the engine's
synthetic trade generator, interleaved round by round so drift on the host hits
both alike; prints microseconds per row and the ratio for each batch size (the
engine's kernel changes at `engine.models.treeshap.BLOCK_MIN_ROWS` rows).

    .venv/bin/python loadtest/explain_cost.py [--bundle DIR] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from statistics import median

import numpy as np

from engine.features.compute import FeaturePlan
from engine.models.bundle import DEFAULT_BUNDLE, ModelBundle
from engine.models.treeshap import TreeExplainer
from engine.training.synthetic import generate_trades


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import lightgbm as lgb

    bundle = ModelBundle.load(args.bundle)
    plan = FeaturePlan(bundle.manifest.features, bundle.references)
    features = plan.compute(generate_trades(2048, seed=7).trades)
    text = (args.bundle / "model.lgb.txt").read_text()
    explainer = TreeExplainer.from_text(text)
    booster = lgb.Booster(model_str=text)
    for n in (1, 4, 12, 64, 256):
        x = np.ascontiguousarray(features[:n])
        x64 = x.astype(np.float64)
        explainer.contributions(x)
        booster.predict(x64, pred_contrib=True, num_threads=1)
        ours, theirs = [], []
        reps = max(2, 256 // n)
        for _ in range(args.rounds):
            t = time.process_time()
            for _ in range(reps):
                explainer.contributions(x)
            ours.append((time.process_time() - t) / reps / n * 1e6)
            t = time.process_time()
            for _ in range(reps):
                booster.predict(x64, pred_contrib=True, num_threads=1)
            theirs.append((time.process_time() - t) / reps / n * 1e6)
        a, b = median(ours), median(theirs)
        print(
            f"{n:4d} rows/call: engine {a:6.0f} us/row   "
            f"lightgbm pred_contrib {b:6.0f} us/row   ratio {b / a:.2f}x"
        )


if __name__ == "__main__":
    main()
