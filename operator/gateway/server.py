"""edgefleet.v1.FleetGateway on grpc.aio, in the operator's event loop.

Connect authenticates the device by the sha256 of the token in the Secret its
EdgeDevice names (from a watch-backed cache: credentials.py), pushes the device's
desired state (from the directory) on connect and on every change, and turns hellos,
heartbeats and reports into EdgeDevice status. FetchArtifact streams a verified
artifact of the device's namespace, from a requested offset, to devices it is assigned
to. What a device may send and cost is decided in policy.py; this module translates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from edgefleet.operator import metrics
from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.operator.credentials import CredentialStore
from edgefleet.operator.gateway.directory import DeviceDirectory, DeviceEntry
from edgefleet.operator.gateway.policy import (
    ByteBudget,
    GatewayLimits,
    PeerThrottle,
    Refusal,
    SessionBudget,
    StatsBaseline,
    Throttle,
    TokenBucket,
    check_hello,
    check_metrics_batch,
    check_models,
    check_stats,
    peer_address,
    with_assigned_digests,
)
from edgefleet.operator.gateway.remote_write import RemoteWriteError, RemoteWriter, screen_batch
from edgefleet.operator.kubeapi import API_ERRORS
from edgefleet.operator.resources import GROUP, VERSION
from edgefleet.protocol.digests import InvalidDigestError, is_digest
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

logger = logging.getLogger(__name__)
SERVICE = "edgefleet.v1.FleetGateway"
HELLO_TIMEOUT_S = 30.0
CHUNK_BYTES = 256 * 1024  # large enough for ~0.5 GB/s on loopback, small enough to resume
OUTBOX = 256  # messages to the device waiting to be sent; the reader waits beyond
FORWARD_RETRY_S = 1.0
UNAUTHENTICATED = "unknown device or wrong token"  # one answer: it names nothing
STATE_NAMES = {value: name.capitalize() for name, value in pb.ModelState.State.items()
               if value != pb.ModelState.STATE_UNSPECIFIED}


def models_status(models: Any) -> list[dict[str, Any]]:
    """ModelState messages (checked by policy.check_models) as status.models entries."""
    return [{"name": m.name, "version": m.version, "digest": m.digest,
             "state": STATE_NAMES[m.state], "message": m.message} for m in models]


def inference_status(stats: Any) -> list[dict[str, Any]]:
    """VersionStats messages (checked by policy.check_stats) as status.inference."""
    return [{"model": item.model, "version": item.version, "requests": item.requests,
             "errors": item.errors, "latencyBoundsSeconds": list(item.latency_bounds_seconds),
             "latencyCounts": list(item.latency_counts),
             "topClassCounts": list(item.top_class_counts)} for item in stats]


@contextlib.contextmanager
def schema_refusal(kind: str) -> Iterator[None]:
    """A status write the API server refuses as invalid (422) is the device's message
    refused, not the session's end: the policy missed a rule of the schema."""
    try:
        yield
    except ApiException as error:
        if error.status != 422:
            raise
        try:
            detail = str(json.loads(error.body or "{}").get("message", ""))
        except ValueError:
            detail = str(error.reason)
        raise Refusal(kind, kind, "Malformed",
                      f"the API server refused the status it makes: {detail[:512]}") from error


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeviceStatusWriter:
    """Coalesces one device's reports into status writes: a change of what it holds is
    written at once, within the device's allowance of writes (`writes`; past it, the
    session's reading waits, so a device changing state in a loop is written at a
    bounded rate and read more slowly); heartbeats refresh lastSeen and the inference
    statistics at most once per `heartbeat_write_s`."""

    def __init__(self, api: client.CustomObjectsApi, entry: DeviceEntry,
                 heartbeat_write_s: float, writes: TokenBucket | None = None) -> None:
        self._api = api
        self._entry = entry
        self._interval = heartbeat_write_s
        self._writes = writes
        self._models: list[dict[str, Any]] | None = None
        self._inference: list[dict[str, Any]] | None = None

    async def hello(self, caps: pb.Capabilities, models: Any) -> None:
        await self._write({"capabilities": {
            "arch": caps.arch, "cpus": caps.cpus, "memoryBytes": caps.memory_bytes,
            "executionProviders": list(caps.execution_providers)}},
            models_status(models))

    async def models(self, models: Any, stats: Any) -> None:
        status = models_status(models)
        since = time.monotonic() - self._entry.status_written_at
        if status != self._models or since >= self._interval:
            await self._write({}, status, inference_status(stats))

    async def _write(self, fields: dict[str, Any], models: list[dict[str, Any]],
                     inference: list[dict[str, Any]] | None = None) -> None:
        if self._writes is not None:
            await asyncio.sleep(self._writes.reserve(1))
        body = {**fields, "lastSeen": timestamp()}
        if models != self._models:
            body["models"] = models
        if inference is not None and inference != self._inference:
            body["inference"] = inference
        written = await asyncio.to_thread(
            self._api.patch_namespaced_custom_object_status, GROUP, VERSION,
            self._entry.namespace, "edgedevices", self._entry.name, {"status": body})
        if isinstance(written, dict):
            self._entry.uid = written.get("metadata", {}).get("uid", self._entry.uid)
        self._models, self._entry.status_written_at = models, time.monotonic()
        if inference is not None:
            self._inference = inference


async def forward_metrics(remote_writer: RemoteWriter, entry: DeviceEntry,
                          batches: asyncio.Queue[tuple[pb.MetricsBatch, int]],
                          budget: SessionBudget, outbox: asyncio.Queue[pb.CloudMessage]) -> None:
    """Remote-writes a session's screened metrics batches in order and acknowledges
    each once Prometheus holds it (or refused it for good). One that fails is tried
    again, with backoff, before any later one: an acknowledgement covers every batch
    up to its sequence, so none may overtake a batch not yet stored."""
    while True:
        batch, size = await batches.get()
        delay_s = FORWARD_RETRY_S
        while True:
            try:
                await remote_writer.write(entry.namespace, entry.name, batch)
                break
            except RemoteWriteError as error:
                logger.warning("device=%s/%s: metrics batch %d not stored yet (kept on the "
                               "device): %s", entry.namespace, entry.name, batch.sequence, error)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
        budget.dequeue(size)
        await outbox.put(pb.CloudMessage(metrics_ack=pb.MetricsAck(sequence=batch.sequence)))


def assigned_digests(entry: DeviceEntry) -> dict[tuple[str, str], str]:
    return {(a.name, a.version): a.digest for a in entry.assignments}


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


class Session:
    """One device's Connect stream: what it has been allowed, what it reported last,
    and what goes back to it besides the desired state."""

    def __init__(self, entry: DeviceEntry, writer: DeviceStatusWriter, limits: GatewayLimits,
                 queue_budget: ByteBudget) -> None:
        self.entry, self.writer = entry, writer
        self.budget = SessionBudget(limits, queue_budget)
        self.baseline = StatsBaseline(limits)
        self.outbox: asyncio.Queue[pb.CloudMessage] = asyncio.Queue(maxsize=OUTBOX)
        self.batches: asyncio.Queue[tuple[pb.MetricsBatch, int]] = asyncio.Queue()
        # Once one batch is not taken, no later one is: an acknowledgement would cover it.
        self.metrics_gap = False
        self.unforwarded_told = False


class FleetGateway:
    def __init__(self, directory: DeviceDirectory, artifacts: ArtifactCache,
                 api_client: client.ApiClient, heartbeat_write_s: float, *,
                 credentials: CredentialStore, remote_writer: RemoteWriter | None = None,
                 ping_s: float = 30.0, limits: GatewayLimits | None = None) -> None:
        self._directory = directory
        self._artifacts = artifacts
        self._credentials = credentials
        self._remote_writer = remote_writer
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._heartbeat_write_s = heartbeat_write_s
        self._ping_s = ping_s
        self.limits = limits or GatewayLimits()
        self._peers = PeerThrottle(self.limits)
        self._queue_budget = ByteBudget(self.limits.gateway_queue_bytes)
        metrics.GATEWAY_QUEUED_BYTES.set_function(lambda: self._queue_budget.held)
        self._told = Throttle(self.limits.event_interval_seconds)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> DeviceEntry:
        """The device the call's metadata names, if its token is right. Unknown devices
        and wrong tokens get the same answer, and an address that failed too often is
        refused without a look; neither touches the API server."""
        peer = peer_address(context.peer() or "")
        if not self._peers.allows(peer):
            metrics.GATEWAY_AUTH_FAILURES.labels("RateLimited").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many failed authentications from this address; "
                                "retry later")
        metadata = dict(context.invocation_metadata() or ())
        namespace = str(metadata.get("edgefleet-namespace", ""))
        name = str(metadata.get("edgefleet-device", ""))
        authorization = str(metadata.get("authorization", ""))
        token = authorization.removeprefix("Bearer ") if authorization.startswith(
            "Bearer ") else ""
        entry = self._directory.get(namespace, name)
        verified = self._credentials.verify(namespace, entry.secret_name if entry else "",
                                            token)
        if entry is None or not verified:
            self._peers.failed(peer)
            metrics.GATEWAY_AUTH_FAILURES.labels("Unauthenticated").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            raise AssertionError("unreachable")
        return entry

    async def Connect(self, requests: AsyncIterator[pb.DeviceMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CloudMessage]:
        entry = await self._authenticate(context)
        holder = object()  # this call, as the directory's one session of the device
        if not self._directory.claim(entry, holder):
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"EdgeDevice {entry.namespace}/{entry.name} is already "
                                "connected")
        if entry.status_writes is None:
            entry.status_writes = TokenBucket(self.limits.status_writes_per_second,
                                              self.limits.status_write_burst)
        session = Session(entry, DeviceStatusWriter(
            self._custom, entry, self._heartbeat_write_s, entry.status_writes),
            self.limits, self._queue_budget)
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
            models = with_assigned_digests(first.hello.models, assigned_digests(entry))
            session.budget.read(first.ByteSize())
            try:
                check_hello(first.hello, self.limits)
                check_models("hello", models, self.limits)
                with schema_refusal("hello"):
                    await session.writer.hello(first.hello.capabilities, models)
            except Refusal as refusal:
                await self._refused(entry, refusal)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refusal))
            logger.info("device connected device=%s/%s", entry.namespace, entry.name)
            reader = asyncio.create_task(self._read(requests, session))
            if self._remote_writer:
                forwarder = asyncio.create_task(forward_metrics(
                    self._remote_writer, entry, session.batches, session.budget,
                    session.outbox))
            entry.changed.set()  # the desired state goes out at once on connect
            while not reader.done():
                changed = asyncio.create_task(entry.changed.wait())
                outgoing = asyncio.create_task(session.outbox.get())
                try:
                    done, _ = await asyncio.wait({changed, reader, outgoing},
                                                 timeout=self._ping_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                except BaseException:  # the session is torn down while waiting
                    outgoing.cancel()
                    raise
                finally:
                    changed.cancel()
                if outgoing.done():
                    yield outgoing.result()
                else:
                    outgoing.cancel()
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
            session.budget.close()
            self._directory.release(entry, holder)
            logger.info("device disconnected device=%s/%s", entry.namespace, entry.name)

    async def _read(self, requests: AsyncIterator[pb.DeviceMessage], session: Session) -> None:
        """Takes the device's messages one by one, each within the session's budget
        (past it, reading waits: gRPC flow control holds the device back). A message
        the policy refuses is answered with a Refused message, and the session goes on."""
        async for message in requests:
            await asyncio.sleep(session.budget.read(message.ByteSize()))
            try:
                await self._take(message, session)
            except Refusal as refusal:
                await self._refused(session.entry, refusal)
                await session.outbox.put(refusal.to_message())

    async def _take(self, message: pb.DeviceMessage, session: Session) -> None:
        kind = message.WhichOneof("kind")
        if kind in ("heartbeat", "report"):
            report = message.heartbeat if kind == "heartbeat" else message.report
            models = with_assigned_digests(report.models, assigned_digests(session.entry))
            check_models(kind, models, self.limits)
            check_stats(kind, report.stats, self.limits)
            session.baseline.check(kind, report.stats, time.monotonic())
            with schema_refusal(kind):
                await session.writer.models(models, report.stats)
        elif kind == "metrics":
            await self._metrics(message.metrics, session)
        elif kind == "hello":
            raise Refusal("hello", "hello", "NotAllowed", "hello comes once, first in a session")
        else:
            raise Refusal("unknown", "kind", "Malformed",
                          "the message has no kind this gateway knows")

    async def _metrics(self, batch: pb.MetricsBatch, session: Session) -> None:
        """Screens a batch and queues what may go to Prometheus. A batch refused for
        good is queued empty, so that it is acknowledged in order; one the gateway has
        no room for is not taken, nor is any later one of the session (the device sends
        them again in its next session)."""
        entry = session.entry
        if self._remote_writer is None:
            if not session.unforwarded_told:
                logger.info("device=%s/%s sends metrics, but no remote-write URL is set: "
                            "they stay on the device", entry.namespace, entry.name)
                session.unforwarded_told = True
            return
        try:
            check_metrics_batch(batch, self.limits, time.time() * 1000)
        except Refusal as refusal:
            metrics.GATEWAY_REFUSED_SAMPLES.labels(refusal.reason).inc(len(batch.samples))
            self._queue(session, pb.MetricsBatch(sequence=batch.sequence,
                                                 timestamp_ms=batch.timestamp_ms))
            raise
        screened = screen_batch(batch, self.limits)
        self._queue(session, screened.batch)
        for reason, count in screened.refused.items():
            metrics.GATEWAY_REFUSED_SAMPLES.labels(reason).inc(count)
        if screened.first_refusal:
            refusal = screened.first_refusal
            total = sum(screened.refused.values())
            raise Refusal("metrics", refusal.field, refusal.reason,
                          f"{total} of {len(batch.samples)} samples refused; the first: "
                          f"{refusal.detail}", batch.sequence)

    def _queue(self, session: Session, batch: pb.MetricsBatch) -> None:
        size = batch.ByteSize() + self.limits.queue_entry_bytes
        if not session.metrics_gap and session.budget.try_queue(size):
            session.batches.put_nowait((batch, size))
            return
        session.metrics_gap = True
        raise Refusal("metrics", "metrics", "Busy",
                      f"not taken: {session.budget.queued} bytes of this session's metrics "
                      f"wait for Prometheus (at most {self.limits.session_queue_bytes}; "
                      f"{self.limits.gateway_queue_bytes} for the gateway), or an earlier "
                      "batch was not taken; the device sends it again in its next session",
                      batch.sequence)

    async def _refused(self, entry: DeviceEntry, refusal: Refusal) -> None:
        """Counts a refusal, and logs it (and posts an Event for counts that cannot be
        true) at most once per interval per device, kind and reason."""
        metrics.GATEWAY_REFUSED_MESSAGES.labels(refusal.kind, refusal.reason).inc()
        key = f"{entry.namespace}/{entry.name}/{refusal.kind}/{refusal.reason}"
        held = self._told.due(key)
        if held is None:
            return
        more = f" ({held} more since the last)" if held else ""
        logger.warning("device=%s/%s: refused %s message: %s%s", entry.namespace, entry.name,
                       refusal.kind, refusal, more)
        if refusal.reason == "Implausible":
            await self._post_event(entry, "ImplausibleReport",
                                   f"Refused a {refusal.kind} from device {entry.name}: "
                                   f"{refusal}{more}")

    async def _post_event(self, entry: DeviceEntry, reason: str, message: str) -> None:
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{entry.name}."),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="EdgeDevice", name=entry.name,
                namespace=entry.namespace, uid=entry.uid or None),
            reason=reason, message=message[:1024], type="Warning", count=1,
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="edgefleet-gateway"))
        try:
            await asyncio.to_thread(self._core.create_namespaced_event, entry.namespace, event)
        except API_ERRORS as error:
            logger.warning("device=%s/%s: cannot post Event %s: %s", entry.namespace,
                           entry.name, reason, error)

    async def FetchArtifact(self, request: pb.ArtifactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ArtifactChunk]:
        entry = await self._authenticate(context)
        if not is_digest(request.digest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"digest: {InvalidDigestError(request.digest)}")
        if request.digest not in {a.digest for a in entry.assignments}:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{request.digest} is not assigned to {entry.namespace}/"
                                f"{entry.name}")
        artifact = self._artifacts.get(entry.namespace, request.digest)
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
        # What a device legitimately sends fits well within it (GatewayLimits); a larger
        # message ends the call with RESOURCE_EXHAUSTED before it is read into memory.
        ("grpc.max_receive_message_length", gateway.limits.max_message_bytes),
        # A device needs a session and a download or two at a time on one connection.
        ("grpc.max_concurrent_streams", 16),
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
