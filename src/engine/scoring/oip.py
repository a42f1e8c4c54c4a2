"""Open Inference Protocol (KServe v2) servicer: the model's feature matrix in, scores out.

`inference.GRPCInferenceService` (ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelInfer) is served beside
`tradescore.v1.TradeScorer`, on the same port, for the same model, so that
clients that already speak the v2 protocol (Triton's tritonclient, KServe's
and MLServer's clients) call the engine unchanged. Specification:
https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_grpc.md

The model takes one input, the feature matrix that TradeScorer computes from
trades: FP32 [n, F], named as the ONNX input (`features`), columns in the
manifest's feature order. It gives per row

    fail_probability  FP32  [n]  probability that the trade fails to settle
    risk_band         INT32 [n]  tradescore.v1.RiskBand: 1 LOW, 2 MEDIUM, 3 HIGH, 4 CRITICAL

NaN is a missing value (the model takes missing values in every feature);
infinities, and categorical codes that are not an index of the feature's
vocabulary, are refused.

Rows go through TradeScorer's micro-batcher under the same key (the current
`ServingModel`), so one ONNX Runtime call can carry rows of both services.
`raw_input_contents` is the fast path: bytes -> `np.frombuffer` -> reshape
-> submit, and back `ndarray.tobytes()`; no Python work per element. Typed
`fp32_contents` is read by numpy in one call too (upb's repeated fields
expose `__array__`). Outputs are raw when the request's inputs were raw and
typed otherwise, as Triton does for the clients that need it: tritonclient
always sends raw inputs and reads raw outputs only.

Errors: a model name or version that is not served is NOT_FOUND; a request
that does not fit the model (inputs, names, datatype, shape, byte length,
values, requested outputs) is INVALID_ARGUMENT with a message naming the
field; queue, deadline and shutdown errors are TradeScorer's. Parameters
(request, input, output) are accepted and ignored, as the protocol defines
none, except Triton's `classification` output parameter, which would change
what an output means and is refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from engine import __version__
from engine._proto.inference import grpc_predict_v2_pb2 as pb
from engine.admission import ScoringCalls
from engine.batching import MicroBatcher
from engine.errors import EngineError, InvalidInput, ModelNotFound
from engine.metrics import EngineMetrics, size_class
from engine.models.registry import ModelRegistry
from engine.scoring.servable import ServingModel

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "tradescore-engine"
#: the platform names of the specification: "<project>_<format>"
PLATFORM = "onnx_onnxv1"
PROBABILITY = "fail_probability"
BAND = "risk_band"
OUTPUTS = (PROBABILITY, BAND)
#: little-endian float32, the raw layout of every v2 client on x86-64 and ARM
_RAW_F32 = np.dtype("<f4")
#: typed contents fields other than fp32_contents: an FP32 tensor must leave them empty
_OTHER_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp64_contents",
    "bytes_contents",
)

F32 = npt.NDArray[np.float32]
Tensor = pb.ModelMetadataResponse.TensorMetadata


@dataclass(frozen=True, slots=True, eq=False)
class _ModelView:
    """What the protocol needs of one loaded model, derived once per model (hot swaps make a new one)."""

    model: ServingModel
    input_name: str
    width: int
    #: column indices of categorical features, and the size of each one's vocabulary
    categorical: npt.NDArray[np.intp]
    vocabulary: npt.NDArray[np.float32]
    feature_names: tuple[str, ...]
    metadata: pb.ModelMetadataResponse

    @staticmethod
    def of(model: ServingModel) -> _ModelView:
        spec = model.bundle.manifest.features.features
        cats = [(i, len(f.categories)) for i, f in enumerate(spec) if f.kind == "categorical"]
        width = len(spec)
        input_name = model.bundle.input_name
        metadata = pb.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform=PLATFORM,
            inputs=[Tensor(name=input_name, datatype="FP32", shape=[-1, width])],
            outputs=[
                Tensor(name=PROBABILITY, datatype="FP32", shape=[-1]),
                Tensor(name=BAND, datatype="INT32", shape=[-1]),
            ],
        )
        return _ModelView(
            model=model,
            input_name=input_name,
            width=width,
            categorical=np.asarray([i for i, _ in cats], dtype=np.intp),
            vocabulary=np.asarray([n for _, n in cats], dtype=np.float32),
            feature_names=tuple(f.name for f in spec),
            metadata=metadata,
        )

    def serves(self, name: str, version: str) -> bool:
        return name == self.model.name and version in ("", self.model.version)

    def check(self, name: str, version: str, field: str) -> None:
        """NOT_FOUND unless `name` (and `version`, when given) is this model; `field` names `name`."""
        if not name:
            raise InvalidInput(field, f"required: the model's name, {self.model.name!r}")
        if name != self.model.name:
            raise ModelNotFound(
                f"model {name!r} is not served here; this server serves {self.model.name!r} "
                f"(version {self.model.version!r})"
            )
        if version not in ("", self.model.version):
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} here; it serves version {self.model.version!r}"
            )

    def features(self, request: pb.ModelInferRequest, max_rows: int) -> tuple[F32, bool]:
        """The request's feature matrix, checked; and whether it came as raw bytes."""
        inputs = request.inputs
        width = self.width
        if len(inputs) != 1:
            raise InvalidInput(
                "inputs",
                f"this model takes one input, {self.input_name!r} (FP32 [n, {width}]); got {len(inputs)}",
            )
        tensor = inputs[0]
        if tensor.name != self.input_name:
            raise InvalidInput("inputs[0].name", f"must be {self.input_name!r}, got {tensor.name!r}")
        if tensor.datatype != "FP32":
            raise InvalidInput("inputs[0].datatype", f"must be FP32, got {tensor.datatype!r}")
        shape = tensor.shape
        if len(shape) != 2 or shape[1] != width or not 1 <= shape[0] <= max_rows:
            raise InvalidInput(
                "inputs[0].shape",
                f"must be [n, {width}] with 1 <= n <= {max_rows} (rows, features); got {list(shape)}",
            )
        rows = shape[0]
        raw = request.raw_input_contents
        if raw:
            if len(raw) != 1:
                raise InvalidInput("raw_input_contents", f"must hold 1 entry (one per input); got {len(raw)}")
            if tensor.HasField("contents"):
                raise InvalidInput("inputs[0].contents", "must not be set when raw_input_contents is used")
            data = raw[0]
            if len(data) != rows * width * 4:
                raise InvalidInput(
                    "raw_input_contents[0]",
                    f"holds {len(data)} bytes; FP32 [{rows}, {width}] takes {rows * width * 4}",
                )
            matrix = np.frombuffer(data, dtype=_RAW_F32).reshape(rows, width)
            if not (matrix.flags.aligned and matrix.dtype.isnative):
                matrix = matrix.astype(np.float32)  # a copy only where the buffer needs one
        else:
            contents = tensor.contents
            for other in _OTHER_CONTENTS:
                if len(getattr(contents, other)):
                    raise InvalidInput(
                        f"inputs[0].contents.{other}", "must be empty: FP32 values go in fp32_contents"
                    )
            values = contents.fp32_contents
            if not values:
                raise InvalidInput(
                    "inputs[0]", "no data: set inputs[0].contents.fp32_contents or raw_input_contents"
                )
            if len(values) != rows * width:
                raise InvalidInput(
                    "inputs[0].contents.fp32_contents",
                    f"holds {len(values)} values; FP32 [{rows}, {width}] takes {rows * width}",
                )
            matrix = np.array(values, dtype=np.float32).reshape(rows, width)
        self._check_values(matrix)
        return matrix, bool(raw)

    def _check_values(self, matrix: F32) -> None:
        infinite = np.isinf(matrix)
        if infinite.any():
            row, col = divmod(int(np.argmax(infinite)), self.width)
            raise InvalidInput(
                "inputs[0]",
                f"row {row}, column {col} ({self.feature_names[col]}): infinity is not a valid value "
                f"(NaN means missing){_more(int(infinite.any(axis=1).sum()))}",
            )
        if self.categorical.size:
            codes = matrix[:, self.categorical]
            valid = np.isnan(codes) | ((codes >= 0) & (codes < self.vocabulary) & (np.floor(codes) == codes))
            if not valid.all():
                row, k = divmod(int(np.argmin(valid)), self.categorical.size)
                col = int(self.categorical[k])
                raise InvalidInput(
                    "inputs[0]",
                    f"row {row}, column {col} ({self.feature_names[col]}): {float(codes[row, k])!r} is not "
                    f"a category code (0..{int(self.vocabulary[k]) - 1}, or NaN for missing)"
                    f"{_more(int((~valid).any(axis=1).sum()))}",
                )


def _more(rows: int) -> str:
    return f" (and {rows - 1} more row(s) with this problem)" if rows > 1 else ""


def _requested(request: pb.ModelInferRequest) -> tuple[str, ...]:
    """Names of the outputs to return, in the order asked (all of them when none is asked)."""
    if not request.outputs:
        return OUTPUTS
    names: list[str] = []
    for i, out in enumerate(request.outputs):
        if out.name not in OUTPUTS:
            raise InvalidInput(
                f"outputs[{i}].name",
                f"unknown output {out.name!r}; this model's outputs are {', '.join(OUTPUTS)}",
            )
        if out.name in names:
            raise InvalidInput(f"outputs[{i}].name", f"output {out.name!r} is requested twice")
        if "classification" in out.parameters:
            raise InvalidInput(
                f"outputs[{i}].parameters", "classification is not supported: the outputs are the scores"
            )
        names.append(out.name)
    return tuple(names)


class InferenceService:
    """The v2 endpoints over the engine's model registry and micro-batcher."""

    def __init__(
        self,
        registry: ModelRegistry[ServingModel],
        batcher: MicroBatcher[ServingModel, F32],
        metrics: EngineMetrics,
        calls: ScoringCalls,
        *,
        max_rows_per_request: int,
    ) -> None:
        self._registry = registry
        self._batcher = batcher
        self._metrics = metrics
        self._call_time = metrics.call_time["ModelInfer"]
        self._calls = calls
        self._max_rows = max_rows_per_request
        self._view: _ModelView | None = None

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The service's method handlers, with the generated (de)serializers."""

        def unary(method: Any, name: str) -> grpc.RpcMethodHandler[Any, Any]:
            request, response = getattr(pb, f"{name}Request"), getattr(pb, f"{name}Response")
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        methods = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: unary(getattr(self, name), name) for name in methods}
        )

    def _current(self) -> _ModelView:
        model = self._registry.current
        view = self._view
        if view is None or view.model is not model:
            view = self._view = _ModelView.of(model)
        return view

    # -- RPCs ----------------------------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        # the service is registered only once a model is loaded; a draining server refuses new calls
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._current().serves(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        view = self._current()
        try:
            view.check(request.name, request.version, "name")
        except EngineError as exc:
            await context.abort(exc.code, exc.client_message())
        return view.metadata

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        return await self._calls.unary(context, lambda deadline: self.infer(request, deadline))

    # -- other front doors (engine.http) ------------------------------------------------------

    def model_view(self, name: str, version: str) -> pb.ModelMetadataResponse:
        """ModelMetadata for `name` (`version`); EngineError when that model is not served."""
        view = self._current()
        view.check(name, version, "name")
        return view.metadata

    def model_ready(self, name: str, version: str) -> bool:
        return self._current().serves(name, version)

    async def infer(self, request: pb.ModelInferRequest, deadline: float | None) -> pb.ModelInferResponse:
        """`ModelInfer` without gRPC: the same checks, batcher and metrics; EngineError (counted in
        engine_rejected_calls_total) when refused. Admission (`ScoringCalls`) is the caller's."""
        started = time.perf_counter()
        rows = 0
        try:
            view = self._current()
            view.check(request.model_name, request.model_version, "model_name")
            matrix, raw = view.features(request, self._max_rows)
            rows = len(matrix)
            outputs = _requested(request)
            probabilities = await self._batcher.submit(view.model, matrix, deadline)
            return _response(request, view.model, outputs, probabilities, raw)
        except EngineError as exc:
            self._metrics.count_rejection(exc.code)
            raise
        finally:
            if rows:  # its rows were read (calls refused before are in engine_rejected_calls_total)
                self._call_time[size_class(rows)](time.perf_counter() - started)


def _response(
    request: pb.ModelInferRequest,
    model: ServingModel,
    outputs: tuple[str, ...],
    probabilities: F32,
    raw: bool,
) -> pb.ModelInferResponse:
    rows = len(probabilities)
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    for name in outputs:
        if name == PROBABILITY:
            tensor = response.outputs.add(name=name, datatype="FP32", shape=[rows])
            if raw:
                response.raw_output_contents.append(probabilities.astype(_RAW_F32, copy=False).tobytes())
            else:
                tensor.contents.fp32_contents.extend(probabilities.tolist())
        else:
            bands = model.bundle.manifest.risk_bands.assign(probabilities)
            tensor = response.outputs.add(name=name, datatype="INT32", shape=[rows])
            if raw:
                response.raw_output_contents.append(bands.astype("<i4", copy=False).tobytes())
            else:
                tensor.contents.int_contents.extend(bands.tolist())
    return response


def reflection_pool(services: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding the files that define `services` and every file they import.

    Server reflection reads one pool, and the OIP descriptors live in a pool of
    their own (scripts/gen_proto.py says why): this one gathers both.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for name in services:
        # the engine's own OIP file first: with tritonclient imported, the default pool has Triton's
        for source in (pb.DESCRIPTOR.pool, descriptor_pool.Default()):
            try:
                service = source.FindServiceByName(name)
            except KeyError:
                continue
            add(service.file)
            break
        else:
            raise KeyError(f"service {name!r} is in no descriptor pool")
    return pool
