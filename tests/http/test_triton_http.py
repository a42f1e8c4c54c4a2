"""Triton's HTTP client (tritonclient.http), unchanged, against the engine's /v2 REST routes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.http.conftest import HttpFactory


async def test_tritonclient_http_infers_in_binary_and_json(start_http: HttpFactory) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    engine, _ = await start_http()
    features = np.full((4, 15), np.nan, dtype=np.float32)  # NaN: missing (binary data carries it)
    features[:, 0:4] = [[0, 1, 3, 4], [3, 0, 4, 1], [1, 1, 1, 1], [2, 0, 0, 0]]
    features[:, 4] = [6.3, 7.9, 5.0, 9.1]
    expected = engine.models.current.predict(features)

    def calls() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        client = triton.InferenceServerClient(f"127.0.0.1:{engine.http_port}")
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("settlement-fail")
        assert not client.is_model_ready("another-model")
        meta = client.get_model_metadata("settlement-fail")
        assert meta["inputs"][0]["shape"] == [-1, 15]
        tensor = triton.InferInput("features", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features)  # binary by default: Triton's binary tensor extension
        binary = client.infer("settlement-fail", [tensor])
        tensor = triton.InferInput("features", [2, 15], "FP32")
        tensor.set_data_from_numpy(np.nan_to_num(features[:2]), binary_data=False)
        wanted = [triton.InferRequestedOutput("fail_probability", binary_data=False)]
        as_json = client.infer("settlement-fail", [tensor], outputs=wanted)
        try:
            client.infer("other", [tensor])
            message = ""
        except InferenceServerException as exc:
            message = f"{exc.status()} {exc.message()}"
        client.close()
        return (
            binary.as_numpy("fail_probability"),
            binary.as_numpy("risk_band"),
            as_json.as_numpy("fail_probability"),
            message,
        )

    probabilities, bands, json_probabilities, refused = await asyncio.get_running_loop().run_in_executor(
        None, calls
    )
    assert np.array_equal(probabilities, expected)
    assert np.array_equal(bands, engine.models.current.bundle.manifest.risk_bands.assign(expected))
    assert np.array_equal(json_probabilities, engine.models.current.predict(np.nan_to_num(features[:2])))
    assert refused.startswith("404") and "not served" in refused


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
