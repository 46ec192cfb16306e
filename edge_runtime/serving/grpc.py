"""`inference.GRPCInferenceService` on grpc.aio, and `edgefleet.v1.InferenceFeedback`
beside it: each method converts, calls the data plane and converts back;
InferenceError becomes the matching gRPC status.

The methods are registered by hand under the service's wire name (see the .proto for
why the messages live in the protobuf package edgefleet.inference). Every method but the
liveness and readiness checks is authenticated (serving/admission.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.serving import converters
from edgefleet.edge_runtime.serving.admission import Admission
from edgefleet.edge_runtime.serving.dataplane import DataPlane
from edgefleet.protocol.edgefleet.v1 import feedback_pb2
from edgefleet.protocol.inference import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
FEEDBACK_SERVICE = "edgefleet.v1.InferenceFeedback"
# Probes may ask these without credentials; they say nothing about models or data.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
logger = logging.getLogger(__name__)


class InferenceServicer:
    def __init__(self, dataplane: DataPlane, admission: Admission) -> None:
        self.dataplane = dataplane
        self.admission = admission

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version or None))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        metadata = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=metadata.name, version=metadata.version,
                                         extensions=metadata.extensions)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        metadata = self.dataplane.model_metadata(request.name, request.version or None)
        return converters.metadata_to_grpc(metadata)

    async def ModelInfer(self, requests: AsyncIterator[bytes],
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        """Registered as a stream of one request (on the wire the same as a unary
        call), so that a slot is taken before the request is read: one refused for
        load is never received, and at most --max-concurrent-requests are held."""
        with self.admission.slot():
            raw = await anext(requests, None)
            started = time.perf_counter()
            if raw is None:
                raise InferenceError.invalid("the call carried no ModelInferRequest")
            try:
                request = pb.ModelInferRequest.FromString(raw)
            except DecodeError as error:
                raise InferenceError.invalid(f"the request is not a ModelInferRequest: "
                                             f"{error}") from None
            try:
                decoded = await self.admission.decode(
                    len(raw), converters.infer_request_from_grpc, request)
            except InferenceError as error:
                self.dataplane.count_failure(request.model_name, request.model_version, error)
                raise
            response = await self.dataplane.infer(decoded, started)
        return converters.infer_response_to_grpc(response)

    async def Feedback(self, request: feedback_pb2.FeedbackRequest,
                       context: grpc.aio.ServicerContext) -> feedback_pb2.FeedbackResponse:
        result = self.dataplane.feedback(request.model_name, request.id, list(request.labels))
        return feedback_pb2.FeedbackResponse(
            model_name=result.model, model_version=result.version, id=result.id,
            labelled=result.labelled, correct=result.correct)


def _with_status(method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
                 admission: Admission) -> Callable[[Any, grpc.aio.ServicerContext],
                                                   Awaitable[Any]]:
    """The one place where InferenceError becomes a gRPC status, and where calls are
    authenticated."""
    check_token = method.__name__ not in OPEN_METHODS

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if check_token:
                admission.authenticate(dict(context.invocation_metadata() or ()).get(
                    "authorization"))
            return await method(request, context)
        except InferenceError as error:
            await context.abort(getattr(grpc.StatusCode, error.code.grpc_status_name),
                                error.message)
        except Exception:  # a bug: say so, keep serving
            logger.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the runtime log")
    return handle


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    messages = {
        "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _with_status(getattr(servicer, name), servicer.admission),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in messages.items()
    }
    # Raw bytes in: ModelInfer decodes them itself, after admission.
    handlers["ModelInfer"] = grpc.stream_unary_rpc_method_handler(
        _with_status(servicer.ModelInfer, servicer.admission),
        response_serializer=pb.ModelInferResponse.SerializeToString)
    feedback = grpc.unary_unary_rpc_method_handler(
        _with_status(servicer.Feedback, servicer.admission),
        request_deserializer=feedback_pb2.FeedbackRequest.FromString,
        response_serializer=feedback_pb2.FeedbackResponse.SerializeToString)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, handlers),
        grpc.method_handlers_generic_handler(FEEDBACK_SERVICE, {"Feedback": feedback})))


def create_server(dataplane: DataPlane, admission: Admission, address: str,
                  credentials: grpc.ServerCredentials | None) -> grpc.aio.Server:
    # Messages above the limit are refused by gRPC itself (RESOURCE_EXHAUSTED) before
    # anything decodes them; gRPC does not tell the runtime, so they are not counted in
    # edgefleet_edge_requests_rejected_total.
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", admission.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        # A second runtime on the port must fail to bind, not share it (gRPC's default).
        ("grpc.so_reuseport", 0),
    ])
    add_to_server(InferenceServicer(dataplane, admission), server)
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    return server
