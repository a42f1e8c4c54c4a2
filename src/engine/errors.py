"""Engine errors, and the one place where they become gRPC status codes.

EngineError                      base; never shown to clients verbatim unless public
├── InvalidInput                 INVALID_ARGUMENT — names field, record index, reason
├── ModelNotFound                NOT_FOUND — no such model name / version is served
├── Overloaded                   RESOURCE_EXHAUSTED — the bounded queue is full
├── DeadlineExpired              DEADLINE_EXCEEDED — dropped before inference
├── ShuttingDown                 UNAVAILABLE — the engine is draining
├── InferenceFailed              INTERNAL — the model raised; details are logged only
└── BundleError                  a model bundle failed validation (never served)
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
        where = f"{records}[{index}].{field}" if index is not None else field
        more = f" (and {count - 1} more {records[:-1]}(s) with this problem)" if count > 1 else ""
        super().__init__(f"{where}: {reason}{more}")


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
