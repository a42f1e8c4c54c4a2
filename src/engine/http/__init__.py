"""The HTTP/JSON front door: the engine's gRPC services over REST, on a port of their own.

    client ──HTTP/1.1 JSON──▶ uvicorn (httptools) on the engine's event loop ──▶ app.FrontDoor
                                                                                   │ route (routes)
                                   JSON ──▶ the same protobuf request (jsonmap) ◀──┘
                                                   │ TradeScorerService.score_bytes / BreakScorerService /
                                                   │ InferenceService.infer: the gRPC services' own path,
                                                   ▼ micro-batcher, limits, admission and metrics
    client ◀──HTTP status + JSON (status: the gRPC code mapped) ◀── the same protobuf response

Modules, one job each:

- `routes`: the route table, in the style of `google.api.http` (POST /v1/trades:score, ...) and
  the Open Inference Protocol's REST paths (/v2/...);
- `jsonmap`: proto3 JSON <-> protobuf, with a fast path for `ScoreRequest` / `ScoreResponse`
  checked against `google.protobuf.json_format` (the reference) in tests/http/test_jsonmap.py;
- `status`: gRPC code -> HTTP status (Google's API design guide) and the `google.rpc.Status` body;
- `oip`: the Open Inference Protocol's JSON (and Triton's binary tensor extension) <-> ModelInfer;
- `app`: the ASGI application (body limits, content type, bearer tokens, deadlines, admission,
  metrics, drain);
- `server`: uvicorn embedded in the engine's loop (TLS as the gRPC port's, SO_REUSEPORT workers);
- `openapi`: the OpenAPI 3 document generated from the proto descriptors and the route table.
"""
