"""The committed OpenAPI document is what scripts/gen_openapi.py generates from proto/ and the routes."""

from __future__ import annotations

import importlib.util
import json

from engine.http.openapi import document_bytes
from engine.http.routes import ROUTES
from tests.conftest import ROOT


def _generator():
    spec = importlib.util.spec_from_file_location("gen_openapi", ROOT / "scripts" / "gen_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_openapi_document_matches_the_proto() -> None:
    gen = _generator()
    assert gen.OUT.read_text() == gen.build(), "stale: run python scripts/gen_openapi.py"


def test_document_covers_every_route_and_unary_rpc() -> None:
    from engine._proto.tradescore.v1 import tradescore_pb2 as pb

    doc = json.loads(document_bytes())
    assert doc["openapi"].startswith("3.")
    for route in ROUTES:
        assert route.verb.lower() in doc["paths"][route.template]
    served = {r.rpc for r in ROUTES if r.rpc}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            if not (method.client_streaming or method.server_streaming):
                assert f"/tradescore.v1.{service.name}/{method.name}" in served, method.full_name
    quantity = doc["components"]["schemas"]["Trade"]["properties"]["quantity"]
    assert quantity["type"] == "number" and "> 0" in quantity["description"]  # the proto's comment
