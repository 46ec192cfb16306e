"""`inference.GRPCInferenceService` on grpc.aio, and `edgefleet.v1.InferenceFeedback`
beside it: each method converts, calls the data plane and converts back;
InferenceError becomes the matching gRPC status. The standard health checking and
reflection services run beside them.

The methods are registered by hand under the service's wire name (see the .proto for
why the messages live in the protobuf package edgefleet.inference). Every method but the
liveness and readiness checks is authenticated (serving/admission.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from edgefleet.edge_runtime.engine import PLATFORM
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.serving import converters
from edgefleet.edge_runtime.serving.admission import Admission
from edgefleet.edge_runtime.serving.dataplane import DataPlane
from edgefleet.protocol.edgefleet.v1 import feedback_pb2
from edgefleet.protocol.inference import grpc_service_pb2 as pb
from edgefleet.protocol.inference import model_config_pb2

SERVICE = "inference.GRPCInferenceService"
CODE_PACKAGE, WIRE_PACKAGE = "edgefleet.inference", "inference"
HEALTH_SERVICE = "grpc.health.v1.Health"
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

    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        config = self.dataplane.model_configuration(request.name, request.version or None)
        return converters.config_to_grpc(config, PLATFORM)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        versions = self.dataplane.model_statistics(request.name, request.version or None)
        return converters.statistics_to_grpc(versions)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        _one_repository(request.repository_name)
        return converters.index_to_grpc(await self.dataplane.repository_index(request.ready))

    async def RepositoryModelLoad(
            self, request: pb.RepositoryModelLoadRequest,
            context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        _one_repository(request.repository_name)
        await self.dataplane.load_model(
            request.model_name, converters.repository_parameters_from_grpc(request.parameters))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
            self, request: pb.RepositoryModelUnloadRequest,
            context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        _one_repository(request.repository_name)
        await self.dataplane.unload_model(
            request.model_name, converters.repository_parameters_from_grpc(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    async def Feedback(self, request: feedback_pb2.FeedbackRequest,
                       context: grpc.aio.ServicerContext) -> feedback_pb2.FeedbackResponse:
        result = self.dataplane.feedback(request.model_name, request.id, list(request.labels))
        return feedback_pb2.FeedbackResponse(
            model_name=result.model, model_version=result.version, id=result.id,
            labelled=result.labelled, correct=result.correct)


def _one_repository(name: str) -> None:
    """The runtime has one repository, which has no name: only that one may be named."""
    if name:
        raise InferenceError.not_found(f"repository {name!r}: this runtime has one "
                                       "repository; leave the name empty")


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
        "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
        "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest,
                                  pb.RepositoryModelUnloadResponse),
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


class InferenceServer:
    """The runtime's gRPC server: the inference protocol and feedback, with the standard
    health checking (`grpc.health.v1`, open like ServerLive, for probes) and reflection
    (so that grpcurl and other clients without the .proto files can call it)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [SERVICE, FEEDBACK_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server,
            pool=reflection_pool())

    async def start(self) -> None:
        """Serving from the start: it starts once the runtime's models have loaded."""
        await self.server.start()
        for service in ("", SERVICE, FEEDBACK_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, so that health checks turn away before calls are refused."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The services as clients see them on the wire. The inference messages live in
    the protobuf package edgefleet.inference in this process (see grpc_service.proto
    for why); reflection describes them under `inference`, their package on the wire."""
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, pb):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        proto.package = WIRE_PACKAGE
        _rename_types(proto.message_type, proto.service)
        pool.Add(proto)
    for module in (feedback_pb2, health_pb2, reflection_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    return pool


def _rename_types(messages: Iterable[descriptor_pb2.DescriptorProto],
                  services: Iterable[descriptor_pb2.ServiceDescriptorProto] = ()) -> None:
    def wire(name: str) -> str:
        return name.replace(f".{CODE_PACKAGE}.", f".{WIRE_PACKAGE}.", 1)

    for message in messages:
        for field in message.field:
            if field.HasField("type_name"):  # a message or enum field
                field.type_name = wire(field.type_name)
        _rename_types(message.nested_type)
    for service in services:
        for method in service.method:
            method.input_type, method.output_type = wire(method.input_type), wire(
                method.output_type)


def create_server(dataplane: DataPlane, admission: Admission, address: str,
                  credentials: grpc.ServerCredentials | None) -> InferenceServer:
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
    return InferenceServer(server)
