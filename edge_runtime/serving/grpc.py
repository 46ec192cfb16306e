"""`inference.GRPCInferenceService` on grpc.aio: each method converts, calls the data
plane and converts back; InferenceError becomes the matching gRPC status.

The methods are registered by hand under the service's wire name (see the .proto for
why the messages live in the protobuf package edgefleet.inference)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.serving import converters
from edgefleet.edge_runtime.serving.dataplane import DataPlane
from edgefleet.protocol.inference import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
logger = logging.getLogger(__name__)


class InferenceServicer:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

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

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.perf_counter()
        try:
            decoded = converters.infer_request_from_grpc(request)
        except InferenceError as error:
            self.dataplane.count_failure(request.model_name, request.model_version, error)
            raise
        response = await self.dataplane.infer(decoded, started)
        return converters.infer_response_to_grpc(response)


def _with_status(method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
                 ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """The one place where InferenceError becomes a gRPC status."""
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
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
        "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _with_status(getattr(servicer, name)),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in messages.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def create_server(dataplane: DataPlane, address: str, max_request_bytes: int) -> grpc.aio.Server:
    # Messages above the limit are refused by gRPC itself (RESOURCE_EXHAUSTED) before
    # anything decodes them.
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", -1),
    ])
    add_to_server(InferenceServicer(dataplane), server)
    server.add_insecure_port(address)
    return server
