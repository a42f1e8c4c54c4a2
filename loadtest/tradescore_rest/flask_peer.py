"""The Flask peer of rest_bench.py: the first settlement-risk service's way, `POST /predict` with JSON
trades, one request at a time per thread (Flask's own server, threaded): pandas DataFrame from the
JSON, the engine's plain feature path, LightGBM's Booster on the bundle's own model text.

    python flask_peer.py CPUS PORT BUNDLE
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
    port, bundle = int(sys.argv[2]), sys.argv[3]
    import lightgbm as lgb
    import pandas as pd
    from flask import Flask, jsonify, request

    from engine.features.columns import from_table
    from engine.scoring.servable import load_serving_model

    model = load_serving_model(Path(bundle), 1)
    booster = lgb.Booster(model_file=os.path.join(bundle, "model.lgb.txt"))
    app = Flask("predict")

    @app.post("/predict")
    def predict():  # type: ignore[no-untyped-def]
        frame = pd.DataFrame(request.get_json()["trades"])
        cols = from_table({k: frame[k].to_numpy() for k in frame.columns})
        features = model.plan.compute(cols)
        probabilities = booster.predict(features)
        rows = zip(frame["trade_id"], probabilities, strict=True)
        return jsonify({"predictions": [{"trade_id": t, "fail_probability": float(p)} for t, p in rows]})

    print("ready", flush=True)
    app.run(host="127.0.0.1", port=port, threaded=True)


if __name__ == "__main__":
    main()
