"""edgefleet.v1.FleetGateway on grpc.aio, in the operator's event loop.

Connect authenticates the device by the token in the Secret its EdgeDevice names,
pushes the device's desired state (from the directory) on connect and on every change,
and turns hellos, heartbeats and reports into EdgeDevice status. FetchArtifact streams
a verified artifact from the cache, from a requested offset, to devices it is assigned to.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from kubernetes import client
from pydantic import ValidationError

from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.operator.gateway.directory import DeviceDirectory, DeviceEntry
from edgefleet.operator.gateway.remote_write import RemoteWriteError, RemoteWriter
from edgefleet.operator.kubeapi import API_ERRORS
from edgefleet.operator.resources import (
    GROUP,
    VERSION,
    VersionInference,
    describe_validation_error,
)
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

logger = logging.getLogger(__name__)
SERVICE = "edgefleet.v1.FleetGateway"
HELLO_TIMEOUT_S = 30.0
CHUNK_BYTES = 256 * 1024  # large enough for ~0.5 GB/s on loopback, small enough to resume
FORWARD_QUEUE = 1024  # metrics batches of one session waiting for Prometheus
FORWARD_RETRY_S = 1.0
STATE_NAMES = {value: name.capitalize() for name, value in pb.ModelState.State.items()
               if value != pb.ModelState.STATE_UNSPECIFIED}


def models_status(models: Any) -> list[dict[str, Any]]:
    """ModelState messages as EdgeDevice status.models entries."""
    return [{"name": m.name, "version": m.version, "digest": m.digest,
             "state": STATE_NAMES.get(m.state, "Pending"), "message": m.message[:2048]}
            for m in models]


def inference_status(stats: Any, device: str) -> list[dict[str, Any]]:
    """VersionStats messages as EdgeDevice status.inference entries. What does not fit
    the schema (a buggy or hostile device) is dropped and logged, never written."""
    entries = []
    for item in list(stats)[:64]:
        entry = {"model": item.model, "version": item.version, "requests": item.requests,
                 "errors": item.errors,
                 "latencyBoundsSeconds": list(item.latency_bounds_seconds),
                 "latencyCounts": list(item.latency_counts),
                 "topClassCounts": list(item.top_class_counts)}
        try:
            VersionInference.model_validate(entry)
        except ValidationError as error:
            logger.warning("device=%s: dropped inference stats of model=%s version=%s: %s",
                           device, item.model[:64], item.version[:64],
                           describe_validation_error(error, "stats"))
            continue
        entries.append(entry)
    return entries


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeviceStatusWriter:
    """Coalesces one device's reports into status writes: a change of what it holds is
    written at once; heartbeats refresh lastSeen and the inference statistics at most
    once per interval."""

    def __init__(self, api: client.CustomObjectsApi, entry: DeviceEntry,
                 heartbeat_write_s: float) -> None:
        self._api = api
        self._entry = entry
        self._interval = heartbeat_write_s
        self._models: list[dict[str, Any]] | None = None
        self._inference: list[dict[str, Any]] | None = None
        self._written_at = 0.0

    async def hello(self, message: pb.Hello) -> None:
        caps = message.capabilities
        await self._write({"capabilities": {
            "arch": caps.arch, "cpus": caps.cpus, "memoryBytes": caps.memory_bytes,
            "executionProviders": list(caps.execution_providers)[:16]}},
            models_status(message.models))

    async def models(self, models: Any, stats: Any) -> None:
        status = models_status(models)
        if status != self._models or time.monotonic() - self._written_at >= self._interval:
            await self._write({}, status, inference_status(stats, self._entry.name))

    async def _write(self, fields: dict[str, Any], models: list[dict[str, Any]],
                     inference: list[dict[str, Any]] | None = None) -> None:
        body = {**fields, "lastSeen": timestamp()}
        if models != self._models:
            body["models"] = models
        if inference is not None and inference != self._inference:
            body["inference"] = inference
        await asyncio.to_thread(
            self._api.patch_namespaced_custom_object_status, GROUP, VERSION,
            self._entry.namespace, "edgedevices", self._entry.name, {"status": body})
        self._models, self._written_at = models, time.monotonic()
        if inference is not None:
            self._inference = inference


async def forward_metrics(remote_writer: RemoteWriter, entry: DeviceEntry,
                          batches: asyncio.Queue[pb.MetricsBatch],
                          acks: asyncio.Queue[int]) -> None:
    """Remote-writes a session's metrics batches in order and acknowledges each once
    Prometheus holds it. One that fails stays unacknowledged (the device keeps it and
    sends it in its next session) and the forwarder backs off before the next."""
    delay_s = FORWARD_RETRY_S
    while True:
        batch = await batches.get()
        try:
            await remote_writer.write(entry.namespace, entry.name, batch)
        except RemoteWriteError as error:
            logger.warning("device=%s/%s: metrics batch %d not stored (kept on the device): "
                           "%s", entry.namespace, entry.name, batch.sequence, error)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 30.0)
            continue
        delay_s = FORWARD_RETRY_S
        acks.put_nowait(batch.sequence)


def desired_message(entry: DeviceEntry) -> pb.CloudMessage:
    state = pb.DesiredState(revision=entry.revision)
    for a in entry.assignments:
        state.models.add(name=a.name, version=a.version, digest=a.digest,
                         size_bytes=a.size_bytes, weight=a.weight, runtime=pb.RuntimeSettings(
                             intra_op_threads=a.intra_op_threads,
                             inter_op_threads=a.inter_op_threads,
                             max_batch_size=a.max_batch_size,
                             max_delay_micros=a.max_delay_micros))
    return pb.CloudMessage(desired=state)


class FleetGateway:
    def __init__(self, directory: DeviceDirectory, artifacts: ArtifactCache,
                 api_client: client.ApiClient, heartbeat_write_s: float,
                 remote_writer: RemoteWriter | None = None, ping_s: float = 30.0) -> None:
        self._directory = directory
        self._artifacts = artifacts
        self._remote_writer = remote_writer
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._heartbeat_write_s = heartbeat_write_s
        self._ping_s = ping_s

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> DeviceEntry:
        metadata = dict(context.invocation_metadata() or ())
        namespace = metadata.get("edgefleet-namespace", "")
        name = metadata.get("edgefleet-device", "")
        token = metadata.get("authorization", "").removeprefix("Bearer ")
        entry = self._directory.get(namespace, name)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no EdgeDevice {namespace}/{name} is known to the operator")
            raise AssertionError("unreachable")
        try:
            secret = await asyncio.to_thread(self._core.read_namespaced_secret,
                                             entry.secret_name, namespace)
            expected = base64.b64decode((secret.data or {}).get("token", ""))
        except API_ERRORS as error:
            logger.warning("device=%s/%s: cannot read token Secret %s: %s", namespace, name,
                           entry.secret_name, error)
            expected = b""
        if not expected or not hmac.compare_digest(expected, token.encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"wrong or missing token for EdgeDevice {namespace}/{name} "
                                f"(Secret {entry.secret_name}, key token)")
        return entry

    async def Connect(self, requests: AsyncIterator[pb.DeviceMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CloudMessage]:
        entry = await self._authenticate(context)
        session = object()
        if not self._directory.claim(entry, session):
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"EdgeDevice {entry.namespace}/{entry.name} is already "
                                "connected")
        writer = DeviceStatusWriter(self._custom, entry, self._heartbeat_write_s)
        reader: asyncio.Task[None] | None = None
        forwarder: asyncio.Task[None] | None = None
        try:
            try:
                first = await asyncio.wait_for(anext(aiter(requests), None), HELLO_TIMEOUT_S)
            except TimeoutError:
                first = None
            if first is None or first.WhichOneof("kind") != "hello":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "the first message of a session must be hello, within "
                                    f"{HELLO_TIMEOUT_S:.0f} s")
            await writer.hello(first.hello)
            logger.info("device connected device=%s/%s", entry.namespace, entry.name)
            acks: asyncio.Queue[int] = asyncio.Queue()  # metrics batches now stored
            batches: asyncio.Queue[pb.MetricsBatch] = asyncio.Queue(maxsize=FORWARD_QUEUE)
            reader = asyncio.create_task(self._read(requests, writer, entry, batches))
            if self._remote_writer:
                forwarder = asyncio.create_task(
                    forward_metrics(self._remote_writer, entry, batches, acks))
            entry.changed.set()  # the desired state goes out at once on connect
            while not reader.done():
                changed = asyncio.create_task(entry.changed.wait())
                acked = asyncio.create_task(acks.get())
                try:
                    done, _ = await asyncio.wait({changed, reader, acked},
                                                 timeout=self._ping_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                except BaseException:  # the session is torn down while waiting
                    acked.cancel()
                    raise
                finally:
                    changed.cancel()
                if acked.done():
                    yield pb.CloudMessage(metrics_ack=pb.MetricsAck(sequence=acked.result()))
                else:
                    acked.cancel()
                if entry.removed:
                    await context.abort(grpc.StatusCode.NOT_FOUND,
                                        f"EdgeDevice {entry.namespace}/{entry.name} was deleted")
                if entry.changed.is_set():
                    entry.changed.clear()
                    yield desired_message(entry)
                elif not done:
                    yield pb.CloudMessage(ping=pb.Ping())
            reader.result()  # a failed status write surfaces here
        finally:
            if reader and not reader.done():
                reader.cancel()
            if forwarder:
                forwarder.cancel()
            self._directory.release(entry, session)
            logger.info("device disconnected device=%s/%s", entry.namespace, entry.name)

    async def _read(self, requests: AsyncIterator[pb.DeviceMessage],
                    writer: DeviceStatusWriter, entry: DeviceEntry,
                    batches: asyncio.Queue[pb.MetricsBatch]) -> None:
        """Turns the device's messages into status writes, and hands its metrics
        batches to the forwarder: Prometheus being slow or down never holds up what
        the device reports."""
        unforwarded_told = False
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "heartbeat":
                await writer.models(message.heartbeat.models, message.heartbeat.stats)
            elif kind == "report":
                await writer.models(message.report.models, message.report.stats)
            elif kind == "metrics":
                if self._remote_writer is None:
                    if not unforwarded_told:
                        logger.info("device=%s/%s sends metrics, but no remote-write URL is "
                                    "set: they stay on the device", entry.namespace, entry.name)
                        unforwarded_told = True
                    continue
                with contextlib.suppress(asyncio.QueueFull):  # unacknowledged: sent again
                    batches.put_nowait(message.metrics)

    async def FetchArtifact(self, request: pb.ArtifactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ArtifactChunk]:
        entry = await self._authenticate(context)
        if request.digest not in {a.digest for a in entry.assignments}:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{request.digest} is not assigned to {entry.namespace}/"
                                f"{entry.name}")
        artifact = self._artifacts.get(request.digest)
        if artifact is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{request.digest} is not in the cache yet; retry")
            raise AssertionError("unreachable")
        if request.offset > artifact.size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"offset {request.offset} is past the end ({artifact.size})")
        with open(artifact.path, "rb") as blob:
            blob.seek(request.offset)
            offset = request.offset
            while data := await asyncio.to_thread(blob.read, CHUNK_BYTES):
                yield pb.ArtifactChunk(offset=offset, data=data, total_size=artifact.size)
                offset += len(data)


def create_server(gateway: FleetGateway, address: str,
                  tls: tuple[bytes, bytes] | None) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 16 * 2**20),
        # Pings find sessions whose device vanished (power, an expired NAT mapping)
        # within half a minute, so that its next session is not refused as a second.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ])
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            gateway.Connect, request_deserializer=pb.DeviceMessage.FromString,
            response_serializer=pb.CloudMessage.SerializeToString),
        "FetchArtifact": grpc.unary_stream_rpc_method_handler(
            gateway.FetchArtifact, request_deserializer=pb.ArtifactRequest.FromString,
            response_serializer=pb.ArtifactChunk.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if tls:
        key, cert = tls
        server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        server.add_insecure_port(address)
    return server
