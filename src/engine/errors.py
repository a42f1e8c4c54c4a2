"""Engine errors, and the one place where they become gRPC status codes.

EngineError                      base; never shown to clients verbatim unless public
├── InvalidInput                 INVALID_ARGUMENT — names field, record index, reason
│   └── MalformedRequest         INVALID_ARGUMENT — the request bytes are not the method's message
├── ModelNotFound                NOT_FOUND — no such model name / version is served
├── Overloaded                   RESOURCE_EXHAUSTED — the bounded queue is full
├── DeadlineExpired              DEADLINE_EXCEEDED — dropped before inference
├── ShuttingDown                 UNAVAILABLE — the engine is draining
├── InferenceFailed              INTERNAL — the model raised; details are logged only
├── BundleError                  a model bundle failed validation (never served)
├── NoExplainer                  FAILED_PRECONDITION — reasons asked, the bundle has no model text
├── NoPairModel                  FAILED_PRECONDITION — the serving bundle has no sync-break model
├── NoFlagStore                  FAILED_PRECONDITION — feedback, and the engine keeps no flags
├── FlagNotFound                 NOT_FOUND — feedback on a flag never recorded
├── VerdictConflict              ALREADY_EXISTS — the flag already has another verdict
└── FlagStoreUnavailable         UNAVAILABLE — the flag store could not record; nothing was sent
"""

from __future__ import annotations

import grpc


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: whether str(error) may be sent to the client
    public: bool = True

    def client_message(self) -> str:
        return str(self) if self.public else "internal error"


class InvalidInput(EngineError):
    """A request field is missing, malformed or out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self, field: str, reason: str, index: int | None = None, count: int = 1, records: str = "trades"
    ) -> None:
        self.field = field
        self.reason = reason
        self.index = index
        self.count = count
        self.records = records
        where = f"{records}[{index}].{field}" if index is not None else field
        more = f" (and {count - 1} more {records[:-1]}(s) with this problem)" if count > 1 else ""
        super().__init__(f"{where}: {reason}{more}")


class MalformedRequest(InvalidInput):
    """The request's bytes do not parse as the method's message (counted in engine_malformed_requests)."""


class ModelNotFound(EngineError):
    """The request names a model or model version this engine does not serve."""

    code = grpc.StatusCode.NOT_FOUND


class Overloaded(EngineError):
    """The batch queue is full: the caller should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExpired(EngineError):
    """The call's deadline passed (or cannot be met) before inference."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ShuttingDown(EngineError):
    """The engine is draining and takes no new work."""

    code = grpc.StatusCode.UNAVAILABLE


class InferenceFailed(EngineError):
    """The model raised while scoring a batch; every call in that batch fails."""

    code = grpc.StatusCode.INTERNAL
    public = False


class BundleError(EngineError):
    """A model bundle is missing files, corrupt, or inconsistent."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NoPairModel(EngineError):
    """The serving bundle carries no sync-break model."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NoExplainer(EngineError):
    """A request asked for reasons and the serving bundle carries no LightGBM model text to explain."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NoFlagStore(EngineError):
    """Feedback needs a flag store, and this engine was started without one."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class FlagNotFound(EngineError):
    """No flag with this id was ever recorded in the flag store."""

    code = grpc.StatusCode.NOT_FOUND


class VerdictConflict(EngineError):
    """The flag already has a different verdict; the first one stands."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FlagStoreUnavailable(EngineError):
    """The flag store could not record what was asked (disk full, database gone): nothing was sent."""

    code = grpc.StatusCode.UNAVAILABLE
