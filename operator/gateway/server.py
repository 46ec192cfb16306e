"""edgefleet.v1.FleetGateway on grpc.aio, in the operator's event loop.

Enroll exchanges a device's bootstrap token (checked against the sha256 of the token
in the Secret its EdgeDevice names, from a watch-backed cache: credentials.py) or a
fleet enrolment token, once, and a CSR for a client certificate from the gateway's CA
(keystore.py, pki.py). Connect and FetchArtifact then come over mutual TLS: the
certificate names the device, and its serial must be the one status.identity records.
Connect pushes the device's desired state (from the directory), each assignment signed,
on connect and on every change, renews the certificate when asked, ends when the device
is revoked or deleted, and turns hellos, heartbeats and reports into EdgeDevice status
(DeviceStatusWriter: a few coalesced writes per session, status.connection naming the
replica that holds it, Offline at its end).
FetchArtifact streams a verified artifact of the device's namespace, from a requested
offset, to devices it is assigned to. With --insecure-plaintext there is no TLS and
every call carries the bearer token instead. What a device may send and cost is decided
in policy.py; this module translates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from edgefleet.operator import device_health, kubeapi, metrics, pki
from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.operator.credentials import CredentialStore, FleetPolicy
from edgefleet.operator.dataset import DatasetError, DatasetWriter, DeviceMarker, Record
from edgefleet.operator.device_health import HealthThresholds, Transition
from edgefleet.operator.gateway.directory import DeviceAccess, DeviceDirectory, DeviceEntry
from edgefleet.operator.gateway.policy import (
    ByteBudget,
    GatewayLimits,
    PeerThrottle,
    Refusal,
    SessionBudget,
    StatsBaseline,
    StatusSchedule,
    Throttle,
    TokenBucket,
    check_data_batch,
    check_health,
    check_hello,
    check_metrics_batch,
    check_models,
    check_stats,
    enrolment_labels,
    peer_address,
    with_assigned_digests,
)
from edgefleet.operator.gateway.remote_write import RemoteWriteError, RemoteWriter, screen_batch
from edgefleet.operator.keystore import Keystore
from edgefleet.operator.kubeapi import API_ERRORS, api_status
from edgefleet.operator.resources import (
    DEVICE_APPROVED_ANNOTATION,
    GROUP,
    VERSION,
    Capabilities,
)
from edgefleet.protocol import identity, signing
from edgefleet.protocol.digests import InvalidDigestError, is_digest
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

logger = logging.getLogger(__name__)
SERVICE = "edgefleet.v1.FleetGateway"
HELLO_TIMEOUT_S = 30.0
# How long a new session waits for its desired state to follow the capabilities it reported.
DERIVATION_WAIT_S = 2.0
CHUNK_BYTES = 256 * 1024  # large enough for ~0.5 GB/s on loopback, small enough to resume
OUTBOX = 256  # messages to the device waiting to be sent; the reader waits beyond
FORWARD_RETRY_S = 1.0
UNAUTHENTICATED = "unknown device or wrong token"  # one answer: it names nothing
NOT_CURRENT = ("the certificate is not the device's current one (superseded, or it names "
               "no device): enrol again")
ENROLLED_BY_ANNOTATION = f"{GROUP}/enrolled-by"
STATE_NAMES = {value: name.capitalize() for name, value in pb.ModelState.State.items()
               if value != pb.ModelState.STATE_UNSPECIFIED}
# States a model passes through on its way to Ready, Failed or gone.
PASSING_STATES = frozenset(STATE_NAMES[state] for state in (
    pb.ModelState.PENDING, pb.ModelState.DOWNLOADING, pb.ModelState.VERIFYING,
    pb.ModelState.LOADING, pb.ModelState.REMOVING))


def models_status(models: Any) -> list[dict[str, Any]]:
    """ModelState messages (checked by policy.check_models) as status.models entries,
    with a download's progress while it runs."""
    return [{"name": m.name, "version": m.version, "digest": m.digest,
             "state": STATE_NAMES[m.state], "message": m.message,
             **({"bytesDone": m.bytes_done, "bytesTotal": m.bytes_total}
                if m.state == pb.ModelState.DOWNLOADING and m.bytes_total else {}),
             **({"variant": m.variant} if m.variant else {}),
             **({"executionProviders": list(m.execution_providers)}
                if m.execution_providers else {})}
            for m in models]


# status.health: what Health's optional figures are called there, and how many decimals
# a float keeps (finer figures are noise, and each change is a status change).
HEALTH_FIGURES = {"cpu_percent": ("cpuPercent", 1),
                  "cpu_throttled_percent": ("cpuThrottledPercent", 1),
                  "memory_available_bytes": ("memoryAvailableBytes", None),
                  "memory_total_bytes": ("memoryTotalBytes", None),
                  "disk_free_bytes": ("diskFreeBytes", None),
                  "disk_total_bytes": ("diskTotalBytes", None),
                  "temperature_celsius": ("temperatureCelsius", 1),
                  "uptime_seconds": ("uptimeSeconds", 0)}


def health_status(health: pb.Health | None, runtime_version: str,
                  now_s: float) -> dict[str, Any] | None:
    """A Health message (checked by policy.check_health) as status.health, with the
    device's clock offset from this gateway's (`now_s`, when the message came); None
    for a runtime that sends none."""
    if health is None:
        return None
    status: dict[str, Any] = {}
    for descriptor, value in health.ListFields():  # the figures set, in one call
        if figure := HEALTH_FIGURES.get(descriptor.name):
            key, decimals = figure
            status[key] = value if decimals is None else (
                int(value) if decimals == 0 else round(value, decimals))
    if health.time_ms:
        status["clockOffsetSeconds"] = round(health.time_ms / 1000 - now_s, 1)
    status.update({"restarts": health.restarts, "runtimeVersion": runtime_version,
                   "os": health.os, "kernel": health.kernel})
    return status


def inference_status(stats: Any) -> list[dict[str, Any]]:
    """VersionStats messages (checked by policy.check_stats) as status.inference."""
    return [{"model": item.model, "version": item.version, "requests": item.requests,
             "errors": item.errors, "latencyBoundsSeconds": list(item.latency_bounds_seconds),
             "latencyCounts": list(item.latency_counts),
             "topClassCounts": list(item.top_class_counts), "labelled": item.labelled,
             "correct": item.correct} for item in stats]


def patch_not_applied(error: ApiException) -> bool:
    """A JSON patch that did not apply (its `test` failed): 422 naming no cause, unlike
    an object the schema refuses, whose 422 names each field."""
    return error.status == 422 and not (api_status(error).get("details") or {}).get("causes")


def schema_refused(kind: str, error: ApiException) -> Refusal:
    """A status write the API server refuses as invalid (422) is the device's message
    refused, not the session's end: the policy missed a rule of the schema."""
    detail = str(api_status(error).get("message", "")) or str(error.reason)
    return Refusal(kind, kind, "Malformed",
                   f"the API server refused the status it makes: {detail[:512]}")


@contextlib.contextmanager
def schema_refusal(kind: str) -> Iterator[None]:
    try:
        yield
    except ApiException as error:
        if error.status != 422:
            raise
        raise schema_refused(kind, error) from error


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Status fields the device's word fills; the first three are written once settled, the
# others ride along (or wait for the next lastSeen).
REPORTED = ("capabilities", "models", "conditions", "healthSummary", "inference", "health",
            "data")
SETTLED = ("models", "conditions", "healthSummary")
CONNECTED = ("Connected", "in a session with the fleet gateway")
DISCONNECTED = ("Disconnected", "its session with the fleet gateway ended")
Standing = Literal["held", "superseded", "gone"]


class DeviceStatusWriter:
    """One session's EdgeDevice status, written by a task of its own (`start`), each
    write one patch of everything due, with `phase: Online`, lastSeen (when the device
    was last heard) and modelCount:

    - hello at once, with `connection` (this replica, a random session id, since when):
      a merge patch, so that a session takes the device over from any earlier one;
    - a change of what the device holds, or of its conditions (device_health.py: the
      health figures against `thresholds`, and Ready), once it has settled (GatewayLimits
      status_settle_seconds, never later than status_max_delay_seconds after the first
      change not yet written; a model on its way every status_progress_seconds), within
      the device's allowance of writes (`writes`);
    - inference statistics that changed at most every `heartbeat_write_s`, and lastSeen
      alone at most every `last_seen_write_s` (the replica's Lease says meanwhile that
      the session is alive); the health figures go with any write.

    A condition that turns bad or good again is told to `transitions` (for an Event).

    Every later write is a JSON patch whose first op tests that `connection` is still
    this session's: a session that another (on any replica) took over writes nothing
    more and ends (`standing`). An API error is retried with backoff, keeping what is
    due; a status the API server refuses (422) is a Refusal for the device (`refused`),
    and what it reported there is not written again. `end` writes the session's end.
    """

    def __init__(self, api: client.CustomObjectsApi, entry: DeviceEntry,
                 heartbeat_write_s: float, writes: TokenBucket | None = None, *,
                 last_seen_write_s: float | None = None, gateway: str = "",
                 limits: GatewayLimits | None = None,
                 refused: Callable[[Refusal], Awaitable[None]] | None = None,
                 thresholds: HealthThresholds | None = None,
                 transitions: Callable[[list[Transition], Mapping[str, Any] | None], None]
                 | None = None) -> None:
        self._api = api
        self._entry = entry
        self._writes = writes
        self._limits = limits or GatewayLimits()
        self._schedule = StatusSchedule(self._limits, heartbeat_write_s, last_seen_write_s)
        self._on_refused = refused
        self._thresholds = thresholds or HealthThresholds()
        self._on_transitions = transitions
        # The conditions as this session makes them, from the last the watch brought.
        self._conditions: list[dict[str, Any]] = list(entry.conditions)
        self._health: dict[str, Any] | None = None
        self._runtime_version = ""
        self.connection = {"gateway": gateway or default_replica(),
                           "session": secrets.token_hex(4), "since": timestamp()}
        self._latest: dict[str, Any] = {}  # what the device reported last, as status fields
        self._written: dict[str, Any] = {}  # what this session wrote
        self._refused: dict[str, Any] = {}  # what the API server refused: not sent again
        self._kind = "hello"  # the message that brought what is due (a refusal names it)
        self._last_seen = timestamp()
        self.established = False  # this session's connection is in the status
        self.standing: Standing = "held"
        self._wake = asyncio.Event()
        self._closing = False
        self._in_flight = False
        self._task: asyncio.Task[None] | None = None

    @property
    def _device(self) -> str:
        return f"{self._entry.namespace}/{self._entry.name}"

    def _heard(self) -> None:
        self._schedule.heard(time.monotonic())
        self._last_seen = timestamp()

    def _due(self, key: str) -> bool:
        value = self._latest.get(key)
        return value is not None and value != self._written.get(key) and (
            value != self._refused.get(key))

    def _settled_due(self) -> bool:
        return any(self._due(key) for key in SETTLED)

    def _judge(self, health: pb.Health | None, ready: tuple[str, str] | None = None) -> bool:
        """status.health and the conditions from the device's figures (and Ready, when
        the session begins); True when the conditions changed. Transitions are told at
        once."""
        self._health = health_status(health, self._runtime_version, time.time())
        self._latest["health"] = self._health or {"runtimeVersion": self._runtime_version}
        verdicts = device_health.health_conditions(self._health, self._conditions,
                                                   self._thresholds)
        if ready is not None:
            verdicts.insert(0, device_health.ready_condition("Online", *ready))
        changed, transitions = self._decide(verdicts)
        self._tell(transitions)
        return changed

    def _decide(self, verdicts: list[dict[str, Any]]) -> tuple[bool, list[Transition]]:
        """The conditions with these verdicts: whether they changed, and the transitions."""
        if "conditions" in self._latest and device_health.unchanged(self._conditions,
                                                                    verdicts):
            return False, []  # most heartbeats
        conditions, transitions = device_health.merge_conditions(
            self._conditions, verdicts, timestamp())
        if conditions == self._conditions and "conditions" in self._latest:
            return False, transitions
        self._conditions = conditions
        self._latest["conditions"] = conditions
        self._latest["healthSummary"] = device_health.summary(conditions)
        return True, transitions

    def _tell(self, transitions: list[Transition]) -> None:
        if transitions and self._on_transitions is not None:
            self._on_transitions(transitions, self._health)

    async def hello(self, hello: pb.Hello, models: Any) -> None:
        """The session began: written at once. Raises Refusal when the API server refuses
        the status; one it cannot take now is written by `run`, with backoff."""
        caps = hello.capabilities
        self._latest["capabilities"] = {
            "arch": caps.arch, "cpus": caps.cpus, "memoryBytes": caps.memory_bytes,
            "executionProviders": list(caps.execution_providers)}
        self._latest["models"] = models_status(models)
        self._runtime_version = hello.runtime_version
        self._judge(hello.health if hello.HasField("health") else None, CONNECTED)
        self._heard()
        self._schedule.at_once()
        await self._write()

    def report(self, kind: str, models: Any, stats: Any,
               health: pb.Health | None = None, *, health_refused: bool = False) -> None:
        """A heartbeat or report the policy took: what the device holds, how its versions
        answered (None: the policy refused the counts; the last stand), and (heartbeats)
        its health, unless the policy refused that (the last figures stand); written when
        due."""
        due = self._schedule.due()
        self._heard()
        status = models_status(models)
        changed = False
        if status != self._latest.get("models"):
            self._latest["models"], self._kind = status, kind
            changed = True
        if kind == "heartbeat" and not health_refused and self._judge(health):
            self._kind, changed = kind, True
        if changed:
            if self._settled_due():
                self._schedule.changed(time.monotonic(), passing=any(
                    model["state"] in PASSING_STATES for model in status))
            else:
                self._schedule.settled()
        inference = None if stats is None else inference_status(stats)
        if inference is not None and inference != self._latest.get("inference"):
            self._latest["inference"], self._kind = inference, kind
            if self._due("inference"):
                self._schedule.news()
        if self._schedule.due() != due:  # most heartbeats move nothing: the writer sleeps on
            self._wake.set()

    def uploaded(self, model: str, marker: DeviceMarker) -> None:
        """The dataset holds more of the device's records for the model: written with
        the statistics (at most every heartbeat_write_s)."""
        entries = {entry.get("model"): entry
                   for entry in self._latest.get("data", self._entry.data)}
        entries[model] = {"model": model, "samples": marker.samples,
                          "labelled": marker.labels, "bytes": marker.bytes,
                          "lastUpload": marker.last_upload}
        self._latest["data"] = sorted(entries.values(), key=lambda e: str(e.get("model")))
        self._kind = "data"
        if self._due("data"):
            self._schedule.news()
            self._wake.set()

    def write_now(self) -> None:
        """Writes everything again at once (the controller may have turned the device
        Offline meanwhile)."""
        self._written.clear()
        self._schedule.at_once()
        self._wake.set()

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"status of {self._device}")
        return self._task

    async def run(self) -> None:
        """Writes what falls due until the session ends (`stop`), or another session
        holds the device, or it is gone."""
        while not self._closing and self.standing == "held":
            due = self._schedule.due()
            delay = None if due is None else due - time.monotonic()
            if delay is None or delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            try:
                await self._write()
            except Refusal as refusal:
                if self._on_refused is not None:
                    await self._on_refused(refusal)

    async def stop(self) -> None:
        """Ends `run`. A write on its way is let finish first (within the longest retry
        delay), so that none lands after the session's last."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None or task.done():
            return
        if self._in_flight:
            await asyncio.wait({task}, timeout=self._limits.status_max_retry_seconds)
        task.cancel()
        await asyncio.wait({task})

    async def _patch(self, patch: Any, content_type: str) -> Any:
        written = await kubeapi.call(
            self._api.patch_namespaced_custom_object_status, GROUP, VERSION,
            self._entry.namespace, "edgedevices", self._entry.name, patch,
            _content_type=content_type)
        if isinstance(written, dict):
            self._entry.uid = written.get("metadata", {}).get("uid", self._entry.uid)
        return written

    def _guarded(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        """JSON patch ops that set `status` fields only while this session holds the
        device (its connection is the status's)."""
        return [{"op": "test", "path": "/status/connection", "value": self.connection},
                *({"op": "add", "path": f"/status/{key}", "value": value}
                  for key, value in status.items())]

    def _fields(self, *keys: str) -> tuple[dict[str, Any], int]:
        """The reported fields due among `keys`, and the modelCount they make."""
        fields = {key: self._latest[key] for key in keys if self._due(key)}
        return fields, len(fields.get("models", self._written.get("models", [])))

    async def _write(self) -> None:
        if self._writes is not None:
            await asyncio.sleep(self._writes.reserve(1))
        started = time.monotonic()
        fields, model_count = self._fields(*REPORTED)
        status = {"phase": "Online", "lastSeen": self._last_seen, **fields,
                  "modelCount": model_count}
        established = self.established
        self._in_flight = True
        try:
            if established:
                await self._patch(self._guarded(status), JSON_PATCH)
            else:
                await self._patch({"status": {**status, "connection": self.connection}},
                                  MERGE_PATCH)
            metrics.GATEWAY_STATUS_WRITES.labels(
                "Models" if established and "models" in fields
                else "Liveness" if established else "Connect").inc()
        except ApiException as error:
            if error.status == 404:
                self.standing = "gone"
            elif established and patch_not_applied(error):
                self.standing = "superseded"
                logger.info("device=%s: another session holds the device now; this one "
                            "(%s) writes no more", self._device, self.connection["session"])
            elif error.status == 422:
                self._refused.update(fields)  # not sent again as it is
                self._schedule.failed(time.monotonic())
                if not self._settled_due():
                    self._schedule.settled()
                raise schema_refused(self._kind, error) from error
            else:
                self._retry(error)
            return
        except HTTPError as error:
            self._retry(error)
            return
        finally:
            self._in_flight = False
        self.established = True
        self._written.update(fields)
        self._schedule.written(started)
        if not self._settled_due():
            self._schedule.settled()

    def _retry(self, error: Exception) -> None:
        self._schedule.failed(time.monotonic())
        logger.warning("device=%s: status not written (tried again with backoff): %s",
                       self._device, getattr(error, "reason", None) or error)

    async def end(self) -> None:
        """The session is over: phase Offline, its last lastSeen and what is still due,
        and its connection removed, in one patch that applies only while the connection
        is this session's (another session may hold the device by now). API errors are
        tried again for a while; past that the controller turns the device Offline once
        its lastSeen is old enough."""
        if not self.established or self.standing != "held":
            return
        _, transitions = self._decide([device_health.ready_condition("Offline", *DISCONNECTED)])
        delay = self._limits.status_retry_seconds
        while True:
            fields, model_count = self._fields("models", "inference", "conditions",
                                               "healthSummary")
            ops = [*self._guarded({"phase": "Offline", "lastSeen": self._last_seen, **fields,
                                   "modelCount": model_count}),
                   {"op": "remove", "path": "/status/connection"}]
            try:
                await self._patch(ops, JSON_PATCH)
                metrics.GATEWAY_STATUS_WRITES.labels("Disconnect").inc()
                self._tell(transitions)  # only once it is so: another session may hold it
                return
            except ApiException as error:
                if error.status == 404 or patch_not_applied(error):
                    return  # gone, or another session holds the device
                if error.status == 422 and fields:
                    self._refused.update(fields)
                    continue
                failure: Exception = error
            except HTTPError as error:
                failure = error
            if delay > self._limits.status_max_retry_seconds:
                logger.warning("device=%s: the session's end is not written: %s",
                               self._device, failure)
                return
            await asyncio.sleep(delay)
            delay *= 2


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


async def store_data(writer: DatasetWriter, session: Session) -> None:
    """Stores a session's checked data batches in order and acknowledges each once the
    dataset holds it durably; a batch refused for good is acknowledged in its turn, so
    that no acknowledgement covers a batch before it that is not stored yet. One that
    fails is tried again, with backoff, before any later one of the session."""
    entry = session.entry
    while True:
        model, records, size, refused_up_to = await session.data.get()
        if refused_up_to is not None:
            await session.outbox.put(pb.CloudMessage(data_ack=pb.DataAck(
                model=model, sequence=refused_up_to)))
            continue
        delay_s = FORWARD_RETRY_S
        while True:
            try:
                marker = await writer.write(entry.namespace, entry.name, model, records)
                break
            except (OSError, DatasetError) as error:
                logger.warning("device=%s/%s model=%s: %d records not stored yet (kept on "
                               "the device): %s", entry.namespace, entry.name, model,
                               len(records), error)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
        session.budget.dequeue(size)
        metrics.GATEWAY_DATA_RECORDS.labels("Stored").inc(len(records))
        session.writer.uploaded(model, marker)
        await session.outbox.put(pb.CloudMessage(data_ack=pb.DataAck(model=model,
                                                                     sequence=marker.stored)))


def _log_failure(task: asyncio.Task[None]) -> None:
    """A session's background task that failed unexpectedly is logged, never silent."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("a session task failed", exc_info=task.exception())


def assigned_digests(entry: DeviceEntry) -> dict[tuple[str, str], str]:
    return {(a.name, a.version): a.digest for a in entry.assignments}


def desired_message(entry: DeviceEntry, key: Ed25519PrivateKey | None) -> pb.CloudMessage:
    """The device's desired state, each assignment signed for it (unsigned only in
    plaintext mode, where there is no key)."""
    state = pb.DesiredState(revision=entry.revision)
    for a in entry.assignments:
        model = state.models.add(
            name=a.name, version=a.version, digest=a.digest, size_bytes=a.size_bytes,
            weight=a.weight, variant=a.variant, runtime=pb.RuntimeSettings(
                intra_op_threads=a.intra_op_threads, inter_op_threads=a.inter_op_threads,
                max_batch_size=a.max_batch_size, max_delay_micros=a.max_delay_micros,
                execution_providers=a.execution_providers))
        if a.capture is not None:
            model.data_collection.CopyFrom(pb.DataCollection(**dataclasses.asdict(a.capture)))
        if key is not None:
            model.signature = signing.sign(key, entry.namespace, entry.name, entry.revision,
                                           model)
    return pb.CloudMessage(desired=state)


def peer_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    """The client certificate TLS verified for this call, if any."""
    pem = (context.auth_context() or {}).get("x509_pem_cert")
    try:
        return x509.load_pem_x509_certificate(pem[0]) if pem else None
    except ValueError:
        return None


def certificate_device(certificate: x509.Certificate) -> tuple[str, str] | None:
    """(namespace, name) of the one device URI a certificate names; None otherwise."""
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return None
    return identity.parse_device_uri(names[0]) if len(names) == 1 else None


def identity_status(issued: pki.IssuedCertificate, **fields: Any) -> dict[str, Any]:
    return {"state": "Enrolled", "serial": issued.serial,
            "notBefore": issued.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "notAfter": issued.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), **fields}


def certificate_message(issued: pki.IssuedCertificate | None, bundle: bytes) -> pb.CloudMessage:
    return pb.CloudMessage(certificate=pb.IssuedCertificate(
        certificate=issued.pem if issued else b"", trust_bundle=bundle))


class Session:
    """One device's Connect stream: what it has been allowed, what it reported last,
    and what goes back to it besides the desired state."""

    def __init__(self, entry: DeviceEntry, writer: DeviceStatusWriter, limits: GatewayLimits,
                 queue_budget: ByteBudget, serial: str, peer: str) -> None:
        self.entry, self.writer = entry, writer
        # The certificate the session's connection presented (renewals move it on).
        self.serial, self.peer = serial, peer
        self.renewed_at = float("-inf")
        self.bundle_sent = b""
        self.budget = SessionBudget(limits, queue_budget)
        self.baseline = StatsBaseline(limits)
        self.outbox: asyncio.Queue[pb.CloudMessage] = asyncio.Queue(maxsize=OUTBOX)
        self.batches: asyncio.Queue[tuple[pb.MetricsBatch, int]] = asyncio.Queue()
        # Batches to store, or (no records) the last sequence of one refused for good.
        self.data: asyncio.Queue[tuple[str, list[Record], int, int | None]] = asyncio.Queue()
        self.data_task: asyncio.Task[None] | None = None
        self.no_dataset_told = False
        # Once one batch is not taken, no later one is: an acknowledgement would cover it.
        self.metrics_gap = False
        self.unforwarded_told = False


class FleetGateway:
    def __init__(self, directory: DeviceDirectory, artifacts: ArtifactCache,
                 api_client: client.ApiClient, heartbeat_write_s: float, *,
                 credentials: CredentialStore, keystore: Keystore | None,
                 device_cert_validity: timedelta = timedelta(days=30),
                 remote_writer: RemoteWriter | None = None, ping_s: float = 30.0,
                 limits: GatewayLimits | None = None, replica: str = "",
                 last_seen_write_s: float | None = None,
                 thresholds: HealthThresholds | None = None,
                 dataset: DatasetWriter | None = None) -> None:
        """`keystore` None: plaintext, devices authenticated by bearer token alone.
        `replica`: this gateway's name in status.connection (the process's identity;
        host and pid by default). `last_seen_write_s`: how often a lastSeen alone is
        written (as often as statistics when None). `thresholds`: where the devices'
        health figures make conditions. `dataset`: where devices' kept samples go (None:
        they stay on the devices)."""
        self.replica = replica or default_replica()
        # Set while the server shuts down: its sessions end without writing Offline (the
        # devices reconnect to another replica at once; for those that do not, the
        # controller sees this replica's Lease expire).
        self.stopping = False
        self._endings: set[asyncio.Task[None]] = set()
        self._directory = directory
        self._artifacts = artifacts
        self._credentials = credentials
        self._keystore = keystore
        self._validity = device_cert_validity
        self._remote_writer = remote_writer
        self._dataset = dataset
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._heartbeat_write_s = heartbeat_write_s
        self._last_seen_write_s = last_seen_write_s
        self._thresholds = thresholds or HealthThresholds()
        self._posting: set[asyncio.Task[None]] = set()  # Events on their way
        self._ping_s = ping_s
        self.limits = limits or GatewayLimits()
        self._peers = PeerThrottle(self.limits)
        self._queue_budget = ByteBudget(self.limits.gateway_queue_bytes)
        metrics.GATEWAY_QUEUED_BYTES.set_function(lambda: self._queue_budget.held)
        self._told = Throttle(self.limits.event_interval_seconds)
        self._events = TokenBucket(self.limits.events_per_second, self.limits.event_burst)
        self._enrolments = TokenBucket(self.limits.enrolments_per_second,
                                       self.limits.enrolment_burst)
        self._enrolling: dict[tuple[str, str], asyncio.Lock] = {}

    def write_every_session(self) -> None:
        """Every open session's status is written again at once: this replica's Lease
        lapsed, and the controller may have turned its devices Offline meanwhile."""
        for session in self._directory.sessions():
            if isinstance(session, Session):
                session.writer.write_now()

    def trust_changed(self) -> None:
        """Sends every open session the new CA bundle (CA rotation); a session whose
        outbox is full gets it on its next turn."""
        assert self._keystore is not None
        bundle = self._keystore.ca.bundle_pem
        for session in self._directory.sessions():
            if isinstance(session, Session) and session.bundle_sent != bundle:
                with contextlib.suppress(asyncio.QueueFull):
                    session.outbox.put_nowait(certificate_message(None, bundle))
                    session.bundle_sent = bundle

    @property
    def _signing_key(self) -> Ed25519PrivateKey | None:
        return self._keystore.signing_key if self._keystore else None

    async def _refuse(self, context: grpc.aio.ServicerContext, peer: str, reason: str,
                      code: grpc.StatusCode, message: str) -> None:
        """Ends the call; a failure counts against the peer's address."""
        self._peers.failed(peer)
        metrics.GATEWAY_AUTH_FAILURES.labels(reason).inc()
        await context.abort(code, message)
        raise AssertionError("unreachable")

    def _bearer(self, context: grpc.aio.ServicerContext) -> dict[str, str]:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        authorization = metadata.get("authorization", "")
        metadata["token"] = authorization.removeprefix("Bearer ") if authorization.startswith(
            "Bearer ") else ""
        return metadata

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> tuple[DeviceEntry, str]:
        """The device the call comes from, and its certificate's serial ("" in plaintext).
        With TLS the certificate names the device; its serial must be the one recorded
        (or the one just renewed, on the connection that renewed it). In plaintext the
        call's metadata names it and the token proves it. Failures never touch the API
        server, and an address that failed too often is refused without a look."""
        peer = peer_address(context.peer() or "")
        if not self._peers.allows(peer):
            metrics.GATEWAY_AUTH_FAILURES.labels("RateLimited").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many failed authentications from this address; "
                                "retry later")
        if self._keystore is None:
            metadata = self._bearer(context)
            entry = self._directory.get(metadata.get("edgefleet-namespace", ""),
                                        metadata.get("edgefleet-device", ""))
            verified = self._credentials.verify(entry.namespace if entry else "",
                                                entry.secret_name if entry else "",
                                                metadata["token"])
            if entry is None or not verified:
                await self._refuse(context, peer, "Unauthenticated",
                                   grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            assert entry is not None
            return entry, ""
        certificate = peer_certificate(context)
        names = certificate_device(certificate) if certificate else None
        if certificate is None or names is None:
            await self._refuse(context, peer, "Unauthenticated",
                               grpc.StatusCode.UNAUTHENTICATED, NOT_CURRENT)
            raise AssertionError("unreachable")
        entry = self._directory.get(*names)
        if entry is None:
            # A certificate this CA issued, for a device the gateway does not know: one
            # deleted, or one the operator has not listed yet after a start. Not a
            # reason to enrol again (that would spend a token on a restart): retry.
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"EdgeDevice {names[0]}/{names[1]} is not known to the gateway "
                                "(deleted, or not listed yet); retry later")
            raise AssertionError("unreachable")
        if entry.access.refused:
            metrics.GATEWAY_AUTH_FAILURES.labels("Revoked").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, self._revoked(entry))
        serial = pki.serial_hex(certificate)
        if serial != entry.access.serial and entry.renewed_from != (serial, context.peer()):
            if entry.access.issued_later(certificate.not_valid_before_utc):
                # Issued after the one this replica knows: by another replica, whose
                # record of it has not come through the watch yet. Enrolling again would
                # spend the device's token for nothing: retry.
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"the certificate of EdgeDevice {names[0]}/{names[1]} is "
                                    "newer than this gateway knows yet; retry")
            await self._refuse(context, peer, "Unauthenticated",
                               grpc.StatusCode.UNAUTHENTICATED, NOT_CURRENT)
        return entry, serial

    @staticmethod
    def _revoked(entry: DeviceEntry) -> str:
        return (f"EdgeDevice {entry.namespace}/{entry.name} is revoked: its certificate is "
                "refused; enrolling again needs spec.revoked false and a new bootstrap token")

    async def Connect(self, requests: AsyncIterator[pb.DeviceMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CloudMessage]:
        entry, serial = await self._authenticate(context)
        if entry.status_writes is None:
            entry.status_writes = TokenBucket(self.limits.status_writes_per_second,
                                              self.limits.status_write_burst)

        async def refused(refusal: Refusal) -> None:
            await self._refused(entry, refusal)
            await session.outbox.put(refusal.to_message())

        session = Session(entry, DeviceStatusWriter(
            self._custom, entry, self._heartbeat_write_s, entry.status_writes,
            last_seen_write_s=self._last_seen_write_s, gateway=self.replica,
            limits=self.limits, refused=refused, thresholds=self._thresholds,
            transitions=lambda moved, health: self._transitions(entry, moved, health)),
            self.limits, self._queue_budget, serial, context.peer())
        if not self._directory.claim(entry, session):  # the device's one session
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"EdgeDevice {entry.namespace}/{entry.name} is already "
                                "connected")
        reader: asyncio.Task[None] | None = None
        forwarder: asyncio.Task[None] | None = None
        writer: asyncio.Task[None] | None = None
        derivation: asyncio.Task[None] | None = None
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
            hello = first.hello
            if hello.HasField("health") and (refusal := self._health_refusal("hello", hello)):
                await self._refused(entry, refusal)  # its figures are left out, not it
                await session.outbox.put(refusal.to_message())
                hello.ClearField("health")
            try:
                check_hello(hello, self.limits)
                check_models("hello", models, self.limits)
                await session.writer.hello(hello, models)
            except Refusal as refusal:
                await self._refused(entry, refusal)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refusal))
            logger.info("device connected device=%s/%s session=%s", entry.namespace,
                        entry.name, session.writer.connection["session"])
            writer = session.writer.start()
            reader = asyncio.create_task(self._read(requests, session))
            if self._remote_writer:
                forwarder = asyncio.create_task(forward_metrics(
                    self._remote_writer, entry, session.batches, session.budget,
                    session.outbox))
            reported = Capabilities(
                arch=hello.capabilities.arch, cpus=hello.capabilities.cpus,
                memory_bytes=hello.capabilities.memory_bytes,
                execution_providers=list(hello.capabilities.execution_providers))
            if entry.capabilities == reported:
                entry.changed.set()  # the desired state goes out at once on connect
            else:
                # Derived for other capabilities than the device reports (a device new to
                # the fleet, or changed): it goes out once derived anew, so that the
                # device fetches its variants and not the source first.
                derivation = asyncio.create_task(self._await_derivation(entry, reported))
                derivation.add_done_callback(lambda _: entry.changed.set())
            while not reader.done() and not writer.done():
                if self._keystore and session.bundle_sent != self._keystore.ca.bundle_pem:
                    # The CA devices trust for the gateway: at the start, and whenever
                    # it changes (CA rotation).
                    session.bundle_sent = self._keystore.ca.bundle_pem
                    yield certificate_message(None, session.bundle_sent)
                changed = asyncio.create_task(entry.changed.wait())
                outgoing = asyncio.create_task(session.outbox.get())
                try:
                    done, _ = await asyncio.wait({changed, reader, outgoing, writer},
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
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                        f"EdgeDevice {entry.namespace}/{entry.name} was deleted")
                if entry.access.refused:
                    metrics.GATEWAY_AUTH_FAILURES.labels("Revoked").inc()
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, self._revoked(entry))
                if self._keystore and entry.access.serial != session.serial:
                    # Enrolled again elsewhere: this connection's certificate is not current.
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, NOT_CURRENT)
                if entry.changed.is_set():
                    entry.changed.clear()
                    yield desired_message(entry, self._signing_key)
                elif not done:
                    yield pb.CloudMessage(ping=pb.Ping())
            if writer.done():
                writer.result()  # a failure of the writer surfaces here
                await self._writer_ended(context, session)
            reader.result()
        finally:
            if reader and not reader.done():
                reader.cancel()
            if forwarder:
                forwarder.cancel()
            if session.data_task:
                session.data_task.cancel()
            if derivation:
                derivation.cancel()
            session.budget.close()
            self._directory.release(entry, session)
            ending = asyncio.create_task(self._end(session))
            self._endings.add(ending)
            ending.add_done_callback(self._ended)
            logger.info("device disconnected device=%s/%s", entry.namespace, entry.name)

    async def _writer_ended(self, context: grpc.aio.ServicerContext, session: Session) -> None:
        entry = session.entry
        if session.writer.standing == "superseded":
            await context.abort(grpc.StatusCode.ABORTED,
                                f"another session of EdgeDevice {entry.namespace}/{entry.name} "
                                "began (at this gateway or another replica); this one ends")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"EdgeDevice {entry.namespace}/{entry.name} was deleted")

    async def _end(self, session: Session) -> None:
        """A session's end: its status writes stop, then the device turns Offline, unless
        the gateway is stopping."""
        await session.writer.stop()
        if not self.stopping:
            await session.writer.end()

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._endings.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a session's end failed", exc_info=task.exception())

    @staticmethod
    async def _await_derivation(entry: DeviceEntry, capabilities: Capabilities) -> None:
        """Waits, briefly, until the desired state is derived for the capabilities the
        device just reported (written with its hello, back through the watch). After
        DERIVATION_WAIT_S the device gets what is derived, and any change later."""
        deadline = time.monotonic() + DERIVATION_WAIT_S
        while entry.capabilities != capabilities:
            entry.rederived.clear()
            try:
                await asyncio.wait_for(entry.rederived.wait(), deadline - time.monotonic())
            except TimeoutError:
                return

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
            stats: Any = report.stats
            refusal: Refusal | None = None
            try:
                check_stats(kind, stats, self.limits)
                session.baseline.check(kind, stats, time.monotonic())
            except Refusal as refused:  # what the device holds is still taken
                stats, refusal = None, refused
            heartbeat = message.heartbeat
            health = heartbeat.health if kind == "heartbeat" and heartbeat.HasField(
                "health") else None
            health_refusal = (self._health_refusal(kind, heartbeat) if health is not None
                              else None)
            session.writer.report(kind, models, stats, health,
                                  health_refused=health_refusal is not None)
            if refusal or health_refusal:  # the rest of the message was taken
                raise refusal or health_refusal
        elif kind == "metrics":
            await self._metrics(message.metrics, session)
        elif kind == "data":
            await self._data(message.data, session)
        elif kind == "renew":
            await self._renew(message.renew, session)
        elif kind == "hello":
            raise Refusal("hello", "hello", "NotAllowed", "hello comes once, first in a session")
        else:
            raise Refusal("unknown", "kind", "Malformed",
                          "the message has no kind this gateway knows")

    def _health_refusal(self, kind: str, message: pb.Hello | pb.Heartbeat) -> Refusal | None:
        try:
            check_health(kind, message.health, self.limits)
        except Refusal as refusal:
            return refusal
        return None

    async def _renew(self, request: pb.CertificateRequest, session: Session) -> None:
        """A new certificate for the session's device, for the key of its CSR. The
        session goes on; the old certificate stays good on this connection only."""
        if self._keystore is None:
            raise Refusal("renew", "renew", "NotAllowed", "the gateway serves plaintext: "
                          "there are no certificates to renew")
        now = time.monotonic()
        if now - session.renewed_at < self.limits.renewal_interval_seconds:
            raise Refusal("renew", "renew", "Busy", "one renewal at most every "
                          f"{self.limits.renewal_interval_seconds:g} s")
        session.renewed_at = now
        try:
            csr = pki.parse_csr(request.csr)
        except pki.CsrError as error:
            raise Refusal("renew", "renew.csr", "Malformed", str(error)) from None
        entry = session.entry
        issued = self._keystore.ca.issue_device(csr, entry.namespace, entry.name,
                                                self._validity)
        with schema_refusal("renew"):
            await self._write_identity(entry, identity_status(issued, renewedAt=timestamp()))
        entry.renewed_from = (session.serial, session.peer)
        self._directory.issued(entry, issued.serial, entry.access.token_fingerprint,
                               issued.not_before)
        session.serial = issued.serial
        metrics.GATEWAY_CERTIFICATES.labels("Renewal").inc()
        logger.info("certificate renewed device=%s/%s serial=%s not_after=%s", entry.namespace,
                    entry.name, issued.serial, issued.not_after.isoformat())
        await session.outbox.put(certificate_message(issued, self._keystore.ca.bundle_pem))

    async def _write_identity(self, entry: DeviceEntry, fields: dict[str, Any]) -> None:
        await kubeapi.call(
            self._custom.patch_namespaced_custom_object_status, GROUP, VERSION,
            entry.namespace, "edgedevices", entry.name, {"status": {"identity": fields}})

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

    async def _data(self, batch: pb.DataBatch, session: Session) -> None:
        """Checks a batch of kept records and queues it for the dataset. Records of a
        model the device does not collect for, or that are not what a runtime writes,
        are refused for good: acknowledged, so that the device forgets them. With no
        dataset configured, nothing is taken and the device keeps its records."""
        entry = session.entry
        if self._dataset is None:
            if not session.no_dataset_told:
                logger.info("device=%s/%s uploads samples, but no dataset is set "
                            "(--dataset-uri): they stay on the device", entry.namespace,
                            entry.name)
                session.no_dataset_told = True
            return
        if session.data_task is None:
            session.data_task = asyncio.create_task(store_data(self._dataset, session))
            session.data_task.add_done_callback(_log_failure)
        try:
            records = check_data_batch(batch, entry.assignments, self.limits)
        except Refusal:
            metrics.GATEWAY_DATA_RECORDS.labels("Refused").inc(len(batch.records))
            if batch.records:
                session.data.put_nowait((batch.model, [], 0,
                                         max(r.sequence for r in batch.records)))
            raise
        size = batch.ByteSize() + self.limits.queue_entry_bytes
        if not session.budget.try_queue(size):
            raise Refusal("data", "data", "Busy",
                          f"not taken: {session.budget.queued} bytes of this session wait to "
                          "be stored; the device sends them again")
        session.data.put_nowait((batch.model, records, size, None))

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

    def _transitions(self, entry: DeviceEntry, transitions: list[Transition],
                     health: Mapping[str, Any] | None) -> None:
        """An Event for each condition of the device that turned bad or good again (at
        most one per device and reason per interval, and within the fleet's rate),
        posted apart from the session."""
        for transition in transitions:
            reason = device_health.event_reason(transition)
            held = self._told.due(f"{entry.namespace}/{entry.name}/event/{reason}")
            if held is None:
                continue
            if not self._events.available():
                metrics.EVENTS_DROPPED.labels("gateway").inc()
                continue
            self._events.take()
            message = device_health.event_message(entry.name, transition, health)
            if held:
                message += f" ({held} more since the last)"
            posting = asyncio.create_task(self._post_event(
                entry, reason, message, "Warning" if transition.bad else "Normal"))
            self._posting.add(posting)
            posting.add_done_callback(self._posting.discard)

    async def _post_event(self, entry: DeviceEntry, reason: str, message: str,
                          kind: Literal["Normal", "Warning"] = "Warning") -> None:
        await kubeapi.post_device_event(
            self._core, namespace=entry.namespace, name=entry.name, uid=entry.uid,
            reason=reason, message=message, kind=kind, component="edgefleet-gateway")

    async def Enroll(self, request: pb.EnrollRequest,
                     context: grpc.aio.ServicerContext) -> pb.EnrollResponse:
        """A client certificate for a device that proves itself with its bootstrap token
        (once per token), or for a new device that brings a fleet enrolment token (its
        EdgeDevice is created, waiting for approval unless the policy approves it)."""
        peer = peer_address(context.peer() or "")
        if self._keystore is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "the gateway serves plaintext (--insecure-plaintext): devices "
                                "authenticate by token on every call and do not enrol")
            raise AssertionError("unreachable")
        if not self._peers.allows(peer):
            metrics.GATEWAY_AUTH_FAILURES.labels("RateLimited").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many failed authentications from this address; "
                                "retry later")
        wait_s = self._enrolments.reserve(1)
        if wait_s > self.limits.max_enrolment_wait_seconds:
            self._enrolments.take(-1)  # not taken after all
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "the gateway is enrolling many devices; retry later")
        await asyncio.sleep(wait_s)
        namespace, name = request.namespace, request.device
        if not identity.is_namespace(namespace) or not identity.is_device_name(name):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"namespace {namespace[:80]!r} and device {name[:80]!r} must "
                                "be a namespace and an object name")
        try:
            csr = pki.parse_csr(request.csr)
        except pki.CsrError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise AssertionError("unreachable") from None
        token = self._bearer(context)["token"]
        lock = self._enrolling.setdefault((namespace, name), asyncio.Lock())
        try:
            async with lock:  # one enrolment of a device at a time: one serial wins
                return await self._enroll(context, peer, namespace, name, token, csr,
                                          dict(request.labels))
        finally:
            if not lock.locked():
                self._enrolling.pop((namespace, name), None)

    async def _enroll(self, context: grpc.aio.ServicerContext, peer: str, namespace: str,
                      name: str, token: str, csr: x509.CertificateSigningRequest,
                      labels: dict[str, str]) -> pb.EnrollResponse:
        assert self._keystore is not None
        keystore = self._keystore
        fingerprint = pki.token_fingerprint(keystore.fingerprint_secret, namespace, name, token)
        entry = self._directory.get(namespace, name)
        if entry is not None:
            if not self._credentials.verify(namespace, entry.secret_name, token):
                await self._refuse(context, peer, "Unauthenticated",
                                   grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            if entry.access.revoked:
                metrics.GATEWAY_AUTH_FAILURES.labels("Revoked").inc()
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, self._revoked(entry))
            if entry.access.token_fingerprint == fingerprint:
                await self._refuse(
                    context, peer, "TokenReused", grpc.StatusCode.PERMISSION_DENIED,
                    f"this bootstrap token already enrolled EdgeDevice {namespace}/{name}; "
                    "enrolling again needs a new token in its Secret")
            kind, enrolment = "Enrolment", "BootstrapToken"
        else:
            policy = self._credentials.fleet_policy(namespace, token)
            if policy is None:
                await self._refuse(context, peer, "Unauthenticated",
                                   grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            assert policy is not None
            try:
                kept = enrolment_labels(labels, policy.allowed_label_keys, self.limits)
            except Refusal as refusal:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refusal))
                raise AssertionError("unreachable") from None
            entry = await self._register(context, namespace, name, kept, policy)
            kind, enrolment = "FleetEnrolment", "FleetToken"
        issued = keystore.ca.issue_device(csr, namespace, name, self._validity)
        try:
            await self._write_identity(entry, identity_status(
                issued, enrolledAt=timestamp(), renewedAt=None, enrolment=enrolment,
                tokenFingerprint=fingerprint))
        except API_ERRORS as error:
            logger.warning("device=%s/%s: cannot record the enrolment: %s", namespace, name,
                           error)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "cannot record the enrolment now; retry")
        self._directory.issued(entry, issued.serial, fingerprint, issued.not_before)
        entry.changed.set()  # a session on an older certificate ends
        metrics.GATEWAY_CERTIFICATES.labels(kind).inc()
        logger.info("device enrolled device=%s/%s by=%s serial=%s not_after=%s", namespace,
                    name, enrolment, issued.serial, issued.not_after.isoformat())
        return pb.EnrollResponse(
            certificate=pb.IssuedCertificate(certificate=issued.pem,
                                             trust_bundle=keystore.ca.bundle_pem),
            signing_public_key=keystore.signing_public_key)

    async def _register(self, context: grpc.aio.ServicerContext, namespace: str, name: str,
                        labels: dict[str, str], policy: FleetPolicy) -> DeviceEntry:
        """Creates the EdgeDevice of a fleet-enrolled device; one that exists already is
        not taken over."""
        annotations = {ENROLLED_BY_ANNOTATION: f"fleet-enrolment/{policy.secret}"}
        if policy.auto_approve:
            annotations[DEVICE_APPROVED_ANNOTATION] = "true"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeDevice",
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
                "spec": {}}
        try:
            await kubeapi.call(self._custom.create_namespaced_custom_object, GROUP, VERSION,
                               namespace, "edgedevices", body)
        except ApiException as error:
            if error.status == 409:
                await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                    f"EdgeDevice {namespace}/{name} exists: a fleet token "
                                    "enrols only new devices")
            logger.warning("cannot create EdgeDevice %s/%s: %s", namespace, name, error.reason)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "cannot create the EdgeDevice now; retry")
        except API_ERRORS as error:
            logger.warning("cannot create EdgeDevice %s/%s: %s", namespace, name, error)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "cannot create the EdgeDevice now; retry")
        logger.info("EdgeDevice %s/%s registered by fleet enrolment %s labels=%s approved=%s",
                    namespace, name, policy.secret, labels, policy.auto_approve)
        return self._directory.publish(namespace, name, "", [], DeviceAccess())

    async def FetchArtifact(self, request: pb.ArtifactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ArtifactChunk]:
        entry, _ = await self._authenticate(context)
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


def create_server(gateway: FleetGateway, host: str, port: int, enrolment_port: int,
                  keystore: Keystore | None) -> grpc.aio.Server:
    """The gateway's server: device sessions on `port` (mutual TLS), enrolment on
    `enrolment_port` (TLS, no client certificate); one plaintext port without a keystore."""
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
        # A second gateway on the port must fail to bind, not share it (gRPC's default).
        ("grpc.so_reuseport", 0),
    ])
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            gateway.Connect, request_deserializer=pb.DeviceMessage.FromString,
            response_serializer=pb.CloudMessage.SerializeToString),
        "FetchArtifact": grpc.unary_stream_rpc_method_handler(
            gateway.FetchArtifact, request_deserializer=pb.ArtifactRequest.FromString,
            response_serializer=pb.ArtifactChunk.SerializeToString),
        "Enroll": grpc.unary_unary_rpc_method_handler(
            gateway.Enroll, request_deserializer=pb.EnrollRequest.FromString,
            response_serializer=pb.EnrollResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if keystore is None:
        server.add_insecure_port(f"{host}:{port}")
    else:
        # Both ports answer every method; without a client certificate, Connect and
        # FetchArtifact find no device (_authenticate).
        server.add_secure_port(f"{host}:{port}", keystore.server_credentials(True))
        server.add_secure_port(f"{host}:{enrolment_port}", keystore.server_credentials(False))
    return server
