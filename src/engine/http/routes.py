"""The routes of the HTTP front door: one table, read by the app, the metrics and the OpenAPI generator.

The /v1 routes map the unary RPCs of `tradescore.v1` the way `google.api.http` annotations would
(custom methods as `:verb`, the whole request message as the body), so a gateway that transcodes
from such annotations (Envoy, grpc-gateway) would expose the same API. The streaming RPCs have no
REST route: use gRPC for them. The /v2 routes are the Open Inference Protocol's REST API
(https://github.com/kserve/open-inference-protocol, `rest_predict_v2.yaml`), over the same model
as `inference.GRPCInferenceService`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine._proto.tradescore.v1 import tradescore_pb2 as pb


@dataclass(frozen=True, slots=True)
class Route:
    verb: str
    #: path template; `{name}` is one path segment (without "/")
    template: str
    #: the handler's name in `engine.http.app.FrontDoor`
    handler: str
    #: the gRPC method it serves ("/package.Service/Method"), if any
    rpc: str = ""
    #: a scoring call: counts toward --max-concurrent-rpcs, shed at the limit
    scoring: bool = False
    #: answered without a bearer token (health, the contract)
    open: bool = False
    summary: str = ""
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = re.split(r"\{(\w+)\}", self.template)
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+?)" for i, p in enumerate(parts))
        object.__setattr__(self, "pattern", re.compile(regex + "$"))

    @property
    def templated(self) -> bool:
        return "{" in self.template


def _rpc(service: str, method: str) -> str:
    pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]  # KeyError if the proto lost it
    return f"/{pb.DESCRIPTOR.package}.{service}/{method}"


_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/trades:score", "score", _rpc("TradeScorer", "Score"), scoring=True,
          summary="Score 1..N trades for settlement-fail risk"),
    Route("GET", "/v1/model", "model_info", _rpc("TradeScorer", "GetModelInfo"),
          summary="The model currently serving"),
    Route("POST", "/v1/pairs:score", "score_pairs", _rpc("BreakScorer", "ScorePairs"), scoring=True,
          summary="Score 1..N record pairs for sync breaks"),
    Route("POST", "/v1/flags/{flag_id}:feedback", "feedback", _rpc("BreakScorer", "SubmitFeedback"),
          summary="Record an operator's verdict on a flag"),
    Route("GET", "/v2/health/live", "live", open=True, summary="Open Inference Protocol: server live"),
    Route("GET", "/v2/health/ready", "ready", open=True, summary="Open Inference Protocol: server ready"),
    Route("GET", "/v2", "server_metadata", summary="Open Inference Protocol: server metadata"),
    Route("GET", _MODEL, "model_metadata", summary="Open Inference Protocol: model metadata"),
    Route("GET", _VERSION, "model_metadata", summary="Open Inference Protocol: model metadata"),
    Route("GET", _MODEL + "/ready", "model_ready", summary="Open Inference Protocol: model ready"),
    Route("GET", _VERSION + "/ready", "model_ready", summary="Open Inference Protocol: model ready"),
    Route("POST", _MODEL + "/infer", "infer", scoring=True, summary="Open Inference Protocol: inference"),
    Route("POST", _VERSION + "/infer", "infer", scoring=True, summary="Open Inference Protocol: inference"),
    Route("GET", "/openapi.json", "openapi", open=True, summary="This API's OpenAPI 3 document"),
)  # fmt: skip

#: the label of requests that match no route (engine metrics)
UNMATCHED = "unmatched"


class Router:
    """Finds the route of (verb, path): static paths by one dict look-up, templates by regex."""

    def __init__(self, routes: tuple[Route, ...] = ROUTES) -> None:
        self._static: dict[str, dict[str, Route]] = {}
        self._templated: list[Route] = []
        for route in routes:
            if route.templated:
                self._templated.append(route)
            else:
                self._static.setdefault(route.template, {})[route.verb] = route

    def match(self, verb: str, path: str) -> tuple[Route | None, dict[str, str], tuple[str, ...]]:
        """(route, path parameters, verbs allowed on the path): no route and some verbs is a 405."""
        by_verb = self._static.get(path)
        if by_verb is not None:
            route = by_verb.get(verb)
            return route, {}, tuple(by_verb)
        allowed: list[str] = []
        for route in self._templated:
            m = route.pattern.match(path)
            if m is not None:
                if route.verb == verb:
                    return route, m.groupdict(), ()
                allowed.append(route.verb)
        return None, {}, tuple(allowed)
