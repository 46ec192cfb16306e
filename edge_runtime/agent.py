"""The cloud agent: keeps one session to the fleet gateway, applies each desired state
(download, verify, load, route), reports what the device holds, and keeps serving what
it served whenever the cloud is away.

The link changes *what* the device serves, never *whether* it serves: at start the
last-known-good models are loaded from the store before any connection is tried. Nor
does the device's identity: a device the gateway refuses (revoked, enrolment refused)
keeps serving what it served, and an assignment that does not carry the operator's
signature for this device is refused, never downloaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import platform
import random
import time
from collections.abc import Sequence
from importlib.metadata import version as package_version

import grpc
from pydantic import ValidationError

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.capture import Collector
from edgefleet.edge_runtime.config import CapturePolicy
from edgefleet.edge_runtime.engine import Engine, provider_fallback
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.health import HealthProbe, HealthSample
from edgefleet.edge_runtime.identity import TARGET_OPTIONS, DeviceIdentity, IdentityError
from edgefleet.edge_runtime.metrics_buffer import MetricsBuffer, sample_registry
from edgefleet.edge_runtime.serving.dataplane import RepositoryEntry
from edgefleet.edge_runtime.settings import RunSettings
from edgefleet.edge_runtime.stats import LATENCY_BOUNDS_S, VersionStats
from edgefleet.edge_runtime.store import Store, StoredModel, problems
from edgefleet.edge_runtime.uploader import Uploader
from edgefleet.protocol import signing
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

logger = logging.getLogger(__name__)
SERVICE = "/edgefleet.v1.FleetGateway"
RUNTIME_VERSION = package_version("edgefleet")
State = pb.ModelState.State


def stored(assignment: pb.ModelAssignment) -> StoredModel:
    """The assignment as the store keeps it; raises ValidationError for one the device
    must not act on (a digest that is no digest, settings out of range)."""
    runtime = assignment.runtime
    return StoredModel(
        name=assignment.name, version=assignment.version, digest=assignment.digest,
        size_bytes=assignment.size_bytes, intra_op_threads=runtime.intra_op_threads,
        inter_op_threads=runtime.inter_op_threads,
        max_batch_size=max(1, runtime.max_batch_size),
        max_delay_micros=runtime.max_delay_micros, weight=assignment.weight or 100,
        variant=assignment.variant, execution_providers=list(runtime.execution_providers),
        capture=capture_policy(assignment.data_collection)
        if assignment.HasField("data_collection") else None)


def capture_policy(policy: pb.DataCollection) -> CapturePolicy:
    return CapturePolicy(
        sample_rate=policy.sample_rate, low_confidence_below=policy.low_confidence_below,
        include_outputs=policy.include_outputs,
        max_bytes_per_device=policy.max_bytes_per_device,
        max_bytes_per_day=policy.max_bytes_per_day)


def stats_message(model: str, version: str, stats: VersionStats) -> pb.VersionStats:
    return pb.VersionStats(
        model=model, version=version, requests=stats.requests, errors=stats.errors,
        latency_bounds_seconds=LATENCY_BOUNDS_S, latency_counts=stats.latency_counts,
        top_class_counts=stats.top_class_counts.tolist() if stats.classifies else [],
        labelled=stats.labelled, correct=stats.correct)


def health_message(sample: HealthSample, restarts: int) -> pb.Health:
    """A health sample as the heartbeat carries it; the clock reading is taken now."""
    # HealthSample's fields are Health's figures, by name; one not read stays unset.
    figures = {name: value for name, value in dataclasses.asdict(sample).items()
               if value is not None}
    return pb.Health(**figures,
                     restarts=restarts, os=platform.system(), kernel=platform.release(),
                     time_ms=int(time.time() * 1000))


def capabilities() -> pb.Capabilities:
    providers: list[str] = []
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    return pb.Capabilities(arch=platform.machine(), cpus=os.cpu_count() or 1,
                           memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                           execution_providers=providers)


# A device's model states in the repository extension's terms (Triton's).
REPOSITORY_STATES = {
    State.STATE_UNSPECIFIED: "UNKNOWN", State.PENDING: "LOADING", State.DOWNLOADING: "LOADING",
    State.VERIFYING: "LOADING", State.LOADING: "LOADING", State.READY: "READY",
    State.FAILED: "UNAVAILABLE", State.REMOVING: "UNLOADING",
}


class LinkInterrupted(Exception):
    """The download stopped short or went astray: the link's fault, so retried."""


def _log_failure(task: asyncio.Task[None]) -> None:
    """No apply may fail silently: what escaped the per-model handling is logged."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("applying the desired state failed", exc_info=task.exception())


class CloudAgent:
    def __init__(self, settings: RunSettings, engine: Engine, store: Store,
                 collector: Collector) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.collector = collector
        self.uploader = Uploader(collector, settings.upload_bytes_per_second)
        self.state = store.load_state()
        # What the device holds, as reported, by (model, version).
        self.models: dict[tuple[str, str], pb.ModelState] = {}
        self._changed = asyncio.Event()
        self._sampled = asyncio.Event()  # a metrics batch was stored
        self.metrics = (MetricsBuffer(settings.data_dir / "metrics", settings.metrics_buffer_bytes)
                        if settings.metrics_push_seconds > 0 else None)
        self._apply_task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.identity = DeviceIdentity(settings)
        self.health = HealthProbe(settings.data_dir, procfs=settings.procfs_path,
                                  sysfs=settings.sysfs_path)
        self.restarts = 0  # starts on this data dir before this one (start() counts)
        self._health_sample = self.health.sample()  # a first reading: CPU needs two
        telemetry.HEALTH.sample = self._health_sample
        self._token = (settings.token_file.read_text().strip()
                       if settings.insecure_plaintext and settings.token_file else "")
        telemetry.CLOUD_INSECURE.set(1 if settings.insecure_plaintext else 0)

    # ------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Serves the last-known-good models from the store: no cloud needed. Counts
        the start (health reports restarts)."""
        try:
            self.restarts = await asyncio.to_thread(self.store.count_start)
        except OSError as error:  # serving goes on; health reports the count it has
            logger.error("cannot count the start in %s: %s", self.store.starts_path, error)
        telemetry.RESTARTS.set(self.restarts)
        telemetry.RUNTIME_INFO.labels(RUNTIME_VERSION).set(1)
        if self.settings.insecure_plaintext:
            logger.warning(
                "--insecure-plaintext: the gateway session is plaintext, the bootstrap token "
                "travels with every call and anyone on the path can read or change it; "
                "assignments are %s", "checked against the signing key pinned at enrolment"
                if self.identity.signing_key else "NOT checked (no signing key is pinned)")
        self._configure_capture(self.state.last_known_good)
        for model in self.state.last_known_good:
            if not self.store.has(model.digest):
                continue
            try:
                await self._load(model, self.state.last_known_good)
            except InferenceError as error:
                logger.error("last-known-good model=%s version=%s does not load: %s",
                             model.name, model.version, error.message)
        logger.info("restored last-known-good models=%s", sorted(self.models))

    # ------------------------------------------------------------ the session

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """With TLS the client certificate names the device: the calls say nothing."""
        if not self.settings.insecure_plaintext:
            return ()
        return (("authorization", f"Bearer {self._token}"),
                ("edgefleet-namespace", self.settings.namespace),
                ("edgefleet-device", self.settings.device))

    async def _open_channel(self) -> grpc.aio.Channel:
        options = [("grpc.max_receive_message_length", 16 * 2**20)]
        if self.settings.insecure_plaintext:
            return grpc.aio.insecure_channel(self.settings.cloud, options=options)
        await self.identity.ensure()
        credentials = await self.identity.credentials()
        return grpc.aio.secure_channel(self.settings.cloud, credentials,
                                       options=[*options, *TARGET_OPTIONS])

    async def run(self) -> None:
        """Connects, and reconnects with jittered exponential backoff, forever; samples
        the metrics meanwhile, whether the cloud is there or not."""
        samplers = [asyncio.create_task(self._sample_health())]
        if self.metrics:
            samplers.append(asyncio.create_task(self._sample_metrics()))
        try:
            await self._connect_forever()
        finally:
            for sampler in samplers:
                sampler.cancel()

    async def _sample_health(self) -> None:
        """Reads the device's health every heartbeat interval, connected or not (the
        metrics show it while the cloud is away; a heartbeat sends the latest)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            self._health_sample = self.health.sample()  # a few small files: no thread hop
            telemetry.HEALTH.sample = self._health_sample

    def _health(self) -> pb.Health:
        return health_message(self._health_sample, self.restarts)

    async def _sample_metrics(self) -> None:
        assert self.metrics is not None
        while True:
            await asyncio.sleep(self.settings.metrics_push_seconds)
            try:
                await asyncio.to_thread(self.metrics.append, sample_registry())
            except OSError as error:  # the disk: serving goes on, sampling retries
                logger.error("cannot store metric samples in %s: %s",
                             self.settings.data_dir / "metrics", error)
                continue
            self._sampled.set()

    async def _connect_forever(self) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            # Refusals that waiting a little cannot change are retried at the max backoff.
            refused = False
            try:
                await self._session()
            except IdentityError as error:
                refused = error.refused
                logger.error("no identity to connect with: %s", error)
            except grpc.aio.AioRpcError as error:
                refused = self._ended(error)
            except (OSError, InferenceError) as error:
                logger.warning("cloud session ended: %s", error)
            except Exception:  # a session's bug must not end the link for good
                logger.exception("cloud session failed; connecting again")
            finally:
                telemetry.CLOUD_CONNECTED.set(0)
                if self._channel:
                    await self._channel.close()
                    self._channel = None
            if time.monotonic() - started > self.settings.backoff_max_seconds:
                failures = 0  # it had been up a while: start over gently
            failures += 1
            ceiling = min(self.settings.backoff_max_seconds,
                          self.settings.backoff_base_seconds * 2 ** min(failures, 16))
            if refused:
                ceiling = self.settings.backoff_max_seconds
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    def _ended(self, error: grpc.aio.AioRpcError) -> bool:
        """Logs why the session (or the enrolment's link) ended; True for a refusal."""
        code, details = error.code(), error.details()
        if self.settings.insecure_plaintext:
            logger.warning("cloud session ended: %s %s", code.name, details)
            return False
        if code == grpc.StatusCode.PERMISSION_DENIED:  # revoked or deleted
            telemetry.set_identity_state("Revoked")
            if self.identity.new_token_in_place():
                self.identity.enrol_because = "the gateway refuses the certificate"
                logger.error("the gateway refuses this device: %s; a new enrolment token is "
                             "in place: enrolling again", details)
                return False
            logger.error("the gateway refuses this device (serving what it serves, retrying "
                         "every %.0fs; a new bootstrap token enrols it again): %s",
                         self.settings.backoff_max_seconds, details)
            return True
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self.identity.enrol_because = "the gateway no longer knows the certificate"
            logger.warning("the gateway does not accept this device's certificate (%s): "
                           "enrolling again", details)
            return False
        logger.warning("cloud session ended: %s %s", code.name, details)
        return False

    async def _session(self) -> None:
        self._channel = await self._open_channel()
        connect = self._channel.stream_stream(
            f"{SERVICE}/Connect", request_serializer=pb.DeviceMessage.SerializeToString,
            response_deserializer=pb.CloudMessage.FromString)
        call = connect(metadata=self._metadata())
        await call.write(pb.DeviceMessage(hello=pb.Hello(
            capabilities=capabilities(), models=self.models.values(),
            applied_revision=self.state.revision, runtime_version=RUNTIME_VERSION,
            health=self._health())))
        # The session lasts while both directions do: a sender that fails ends it too,
        # and the next session starts afresh.
        outbox: asyncio.Queue[pb.DeviceMessage] = asyncio.Queue()
        tasks = {asyncio.create_task(self._receive(call)),
                 asyncio.create_task(self._send(call, outbox)),
                 asyncio.create_task(self.uploader.run(outbox))}
        if not self.settings.insecure_plaintext:
            tasks.add(asyncio.create_task(self._renew(outbox)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            failures = [task.exception() for task in done]
            if call.done():
                # The gateway ended the session: its status says why, not a write that
                # raced the end (grpc answers that one with "RPC already finished").
                await self._raise_for_status(call)
                return
            for failure in failures:
                if failure:
                    raise failure
        finally:
            for task in tasks:
                task.cancel()
            call.cancel()

    @staticmethod
    async def _raise_for_status(call: grpc.aio.StreamStreamCall) -> None:
        code = await call.code()
        if code != grpc.StatusCode.OK:
            raise grpc.aio.AioRpcError(code, await call.initial_metadata(),
                                       await call.trailing_metadata(), await call.details())

    async def _receive(self, call: grpc.aio.StreamStreamCall) -> None:
        """Acts on what it knows; a kind from a newer gateway is skipped."""
        first = True
        async for message in call:
            if first and not self.settings.insecure_plaintext:
                telemetry.set_identity_state("Enrolled")  # the gateway took the certificate
            first = False
            kind = message.WhichOneof("kind")
            if kind == "desired":
                telemetry.CLOUD_CONNECTED.set(1)
                self._start_apply(message.desired)
            elif kind == "metrics_ack" and self.metrics:
                await asyncio.to_thread(self.metrics.acknowledge, message.metrics_ack.sequence)
            elif kind == "data_ack":
                await self.uploader.acknowledged(message.data_ack)
            elif kind == "refused" and message.refused.kind == "data":
                logger.warning("the gateway did not take kept samples: %s %s",
                               message.refused.reason, message.refused.message[:200])
                self.uploader.restart()
            elif kind == "certificate" and not self.settings.insecure_plaintext:
                await self.identity.accept(message.certificate)
            elif kind == "refused" and message.refused.kind == "renew":
                # Asked again by _renew, unless the answer to an earlier request comes.
                logger.warning("the gateway refused a renewal: %s %s", message.refused.reason,
                               message.refused.message[:200])

    async def _renew(self, outbox: asyncio.Queue[pb.DeviceMessage]) -> None:
        """Asks for a new certificate two thirds into the current one's lifetime, and
        again, less and less often, until one comes. Times are the certificate's, so the
        wall clock decides; it is read again at least every 30 s, in case it jumps."""
        retry_s = self.identity.retry_delay()
        while True:
            current = self.identity.current
            if current is None:
                return
            while (wait_s := current.renew_at() - time.time()) > 0:
                await asyncio.sleep(min(wait_s, 30.0))
            await outbox.put(pb.DeviceMessage(renew=self.identity.renewal_request()))
            logger.info("asked for a new certificate device=%s/%s serial=%s not_after=%.0f",
                        self.settings.namespace, self.settings.device, current.serial,
                        current.not_after)
            try:
                await asyncio.wait_for(self.identity.renewed.wait(), retry_s)
            except TimeoutError:
                logger.warning("no new certificate after %.1fs; asking again", retry_s)
                retry_s = min(retry_s * 2, self.settings.backoff_max_seconds)
            else:
                retry_s = self.identity.retry_delay()

    async def _send(self, call: grpc.aio.StreamStreamCall,
                    outbox: asyncio.Queue[pb.DeviceMessage]) -> None:
        """The one writer of the session: a report whenever what the device holds
        changes, a heartbeat otherwise, every stored metrics batch not yet sent in
        this session (all of them after a reconnect: the cloud acknowledges what it
        keeps), and what others queue in the outbox (renewals)."""
        sent_up_to = 0
        heartbeat_due = time.monotonic() + self.settings.heartbeat_seconds
        while True:
            if self.metrics:
                for batch in await asyncio.to_thread(self.metrics.pending, sent_up_to):
                    await call.write(pb.DeviceMessage(metrics=batch))
                    sent_up_to = batch.sequence
            changed = asyncio.ensure_future(self._changed.wait())
            sampled = asyncio.ensure_future(self._sampled.wait())
            queued = asyncio.ensure_future(outbox.get())
            try:
                await asyncio.wait({changed, sampled, queued},
                                   return_when=asyncio.FIRST_COMPLETED,
                                   timeout=max(0.0, heartbeat_due - time.monotonic()))
            finally:  # also when the session ends: no waiter outlives it
                changed.cancel()
                sampled.cancel()
                queued.cancel()  # an item not yet taken stays in the queue
            self._sampled.clear()
            if queued.done() and not queued.cancelled():
                await call.write(queued.result())
            if self._changed.is_set():
                self._changed.clear()
                await call.write(pb.DeviceMessage(report=pb.StateReport(
                    models=self.models.values(), applied_revision=self.state.revision,
                    stats=self._stats())))
            elif time.monotonic() >= heartbeat_due:
                await call.write(pb.DeviceMessage(heartbeat=pb.Heartbeat(
                    models=self.models.values(), stats=self._stats(), health=self._health())))
            else:
                continue
            heartbeat_due = time.monotonic() + self.settings.heartbeat_seconds

    def _stats(self) -> list[pb.VersionStats]:
        return [stats_message(*entry) for entry in self.engine.stats()]

    # ------------------------------------------------------------ the repository extension

    async def index(self) -> list[RepositoryEntry]:
        """Every version the device holds or is fetching, as it reports them to the cloud."""
        return [RepositoryEntry(m.name, m.version, REPOSITORY_STATES[m.state], m.message)
                for _, m in sorted(self.models.items())]

    async def load(self, name: str) -> None:
        raise self._managed(name, "load")

    async def unload(self, name: str) -> None:
        raise self._managed(name, "unload")

    def _managed(self, name: str, what: str) -> InferenceError:
        return InferenceError.failed_precondition(
            f"cannot {what} model {name!r} here: this runtime serves what the cloud assigns to "
            f"EdgeDevice {self.settings.namespace}/{self.settings.device}; change the "
            "EdgeModel (its selector, version or rollout) instead")

    # ------------------------------------------------------------ applying

    def _set(self, name: str, version: str, digest: str, state: State, message: str = "",
             done: int = 0, total: int = 0, *, variant: str = "",
             providers: Sequence[str] = ()) -> None:
        self.models[(name, version)] = pb.ModelState(
            name=name, version=version, digest=digest, state=state, message=message,
            bytes_done=done, bytes_total=total, variant=variant, execution_providers=providers)
        self._changed.set()

    def _set_model(self, model: StoredModel, state: State, message: str = "", done: int = 0,
                   total: int = 0, *, providers: Sequence[str] = ()) -> None:
        self._set(model.name, model.version, model.digest, state, message, done, total,
                  variant=model.variant, providers=providers)

    def _start_apply(self, desired: pb.DesiredState) -> None:
        """The newest desired state wins: an apply in progress is cancelled (downloads
        resume from their offset next time). Applying is idempotent: what is already
        Ready with the same digest is left alone."""
        if self._apply_task and not self._apply_task.done():
            self._apply_task.cancel()
        self._apply_task = asyncio.create_task(self._apply(desired))
        self._apply_task.add_done_callback(_log_failure)

    async def _apply(self, desired: pb.DesiredState) -> None:
        wanted: list[StoredModel] = []
        refused: list[tuple[pb.ModelAssignment, str]] = []
        for assignment in desired.models:
            if unsigned := self._signature_problem(desired.revision, assignment):
                refused.append((assignment, unsigned))
                continue
            try:
                wanted.append(stored(assignment))
            except ValidationError as error:
                refused.append((assignment, problems(error)))
        # A refused assignment is never stored, downloaded or loaded; what serves its
        # model now keeps serving.
        self.state.revision, self.state.desired = desired.revision, wanted
        await asyncio.to_thread(self._save_state)
        await self._forget_unwanted(wanted, {assignment.name for assignment, _ in refused})
        for assignment, reason in refused:
            message = f"refused the assignment from the gateway: {reason}"
            logger.error("model=%s version=%s %s", assignment.name[:80],
                         assignment.version[:80], message)
            # The digest is reported empty: the refused value goes only into the message.
            self._set(assignment.name, assignment.version, "", State.FAILED, message)
        retry_s = self.settings.backoff_base_seconds
        while pending := await self._apply_models(wanted):
            logger.info("retrying models=%s in %.1fs", pending, retry_s)
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, self.settings.backoff_max_seconds)
        for name in sorted({m.name for m in wanted}):  # new weights, versions retired
            await self._route(name, wanted)
        self._configure_capture(wanted)
        # Last-known-good is what serves now: a version that failed to replace the one
        # before leaves that one serving, and it must come back after a restart too.
        # (What the engine holds, not what is reported Ready: a refused assignment of
        # the very version serving is reported Failed, and that version serves on.)
        ready = {(name, version) for name in self.engine.models()
                 for version in self.engine.versions(name)}
        known = {(m.name, m.version): m for m in [*self.state.last_known_good, *wanted]}
        self.state.last_known_good = [m for key, m in known.items() if key in ready]
        await asyncio.to_thread(self._save_state)
        keep = {m.digest for m in wanted} | {m.digest for m in self.state.last_known_good}
        removed = await asyncio.to_thread(self.store.collect_garbage, keep,
                                          self.settings.gc_grace_seconds)
        if removed:
            logger.info("garbage-collected blobs=%s", removed)
        self._apply_task = None

    def _configure_capture(self, models: list[StoredModel]) -> None:
        """Each model's data collection as its assignments say (all of a model's versions
        carry its one policy)."""
        self.collector.configure({m.name: m.capture for m in models if m.capture is not None})

    def _signature_problem(self, revision: str, assignment: pb.ModelAssignment) -> str | None:
        """Why the assignment must not be acted on for want of the operator's signature
        for this device and revision; None when it verifies (or, in plaintext mode
        without a pinned key, when there is nothing to verify it with)."""
        key = self.identity.signing_key
        if key is None and self.settings.insecure_plaintext:
            return None
        if not assignment.signature:
            reason, why = "Unsigned", "it carries no signature"
        elif key is None:
            reason, why = "BadSignature", "no signing key is pinned (enrol again)"
        elif not signing.verify(key, self.settings.namespace, self.settings.device, revision,
                                assignment):
            reason, why = "BadSignature", (
                f"the signature does not verify with the signing key pinned at enrolment "
                f"for device {self.settings.namespace}/{self.settings.device} and revision "
                f"{revision[:80]!r}")
        else:
            return None
        telemetry.ASSIGNMENTS_REFUSED.labels(reason).inc()
        return f"{reason}: {why}"

    async def _apply_models(self, wanted: list[StoredModel]) -> list[str]:
        """Brings each model to Ready; returns those to retry (the link failed)."""
        pending = []
        for model in wanted:
            current = self.models.get((model.name, model.version))
            if current and current.digest == model.digest and current.state == State.READY:
                continue
            try:
                await self._ensure(model, wanted)
            except (grpc.aio.AioRpcError, LinkInterrupted) as error:  # the link: try again
                pending.append(model.name)
                reason = (f"{error.code().name}: {error.details()}"
                          if isinstance(error, grpc.aio.AioRpcError) else str(error))
                self._set_model(model, State.DOWNLOADING, reason,
                                self.store.partial_size(model.digest), model.size_bytes)
            except InferenceError as error:
                logger.error("model=%s version=%s failed: %s", model.name, model.version,
                             error.message)
                self._set_model(model, State.FAILED, error.message)
            except OSError as error:  # the device's storage
                message = f"storage: {error.strerror}: {error.filename}"
                logger.error("model=%s version=%s failed: %s", model.name, model.version,
                             message)
                self._set_model(model, State.FAILED, message)
        return pending

    def _save_state(self) -> None:
        try:
            self.store.save_state(self.state)
        except OSError as error:  # serving goes on; the next apply tries again
            logger.error("cannot persist state to %s: %s", self.store.state_path, error)

    async def _ensure(self, model: StoredModel, wanted: list[StoredModel]) -> None:
        if not self.store.has(model.digest):
            await self._download(model)
        await self._load(model, wanted)

    async def _download(self, model: StoredModel) -> None:
        assert self._channel is not None
        fetch = self._channel.unary_stream(
            f"{SERVICE}/FetchArtifact", request_serializer=pb.ArtifactRequest.SerializeToString,
            response_deserializer=pb.ArtifactChunk.FromString)
        offset = self.store.partial_size(model.digest)
        total = model.size_bytes
        free = await asyncio.to_thread(self.store.free_bytes)
        if total - offset > free:  # said now, not as a failed write halfway through
            raise InferenceError.unavailable(
                f"not enough disk for the artifact: {total - offset} more bytes needed, "
                f"{free} free in {self.settings.data_dir}")
        self._set_model(model, State.DOWNLOADING, "", offset, total)
        reported_at = time.monotonic()
        try:
            with open(self.store.partial_path(model.digest), "ab") as partial:
                async for chunk in fetch(pb.ArtifactRequest(digest=model.digest, offset=offset),
                                         metadata=self._metadata()):
                    if chunk.offset != offset:
                        raise LinkInterrupted(f"artifact chunk at {chunk.offset}, expected "
                                              f"{offset}")
                    await asyncio.to_thread(partial.write, chunk.data)
                    offset += len(chunk.data)
                    telemetry.ARTIFACT_BYTES.inc(len(chunk.data))
                    total = chunk.total_size
                    if time.monotonic() - reported_at > 0.5:  # progress, not a flood
                        reported_at = time.monotonic()
                        self._set_model(model, State.DOWNLOADING, "", offset, total)
                partial.flush()
                os.fsync(partial.fileno())
        except OSError as error:
            raise InferenceError.unavailable(
                f"cannot write the download to {self.store.partial}: {error.strerror}"
            ) from None
        if offset != total:
            raise LinkInterrupted(f"download ended at {offset} of {total} bytes; it resumes "
                                  "from there")
        self._set_model(model, State.VERIFYING, "", offset, total)
        await asyncio.to_thread(self.store.complete, model.digest)

    async def _load(self, model: StoredModel, wanted: list[StoredModel]) -> None:
        """Loads and warms the version, then routes its model anew among `wanted`."""
        self._set_model(model, State.LOADING)
        if (model.version not in self.engine.versions(model.name) or self.engine.resolve(
                model.name, model.version).digest != model.digest):
            # Other bytes of a version it serves (another variant) take its place once
            # loaded: the version keeps answering meanwhile.
            await self.engine.load(model.name, model.version,
                                   self.store.blob_path(model.digest), model.runtime(),
                                   model.digest)
        running = self.engine.resolve(model.name, model.version).session.get_providers()
        self._set_model(model, State.READY,
                        provider_fallback(model.execution_providers, running), providers=running)
        await self._route(model.name, wanted)

    async def _route(self, name: str, wanted: list[StoredModel]) -> None:
        """Splits the model's unpinned requests by weight over its wanted versions that
        are loaded, then retires the versions no longer wanted. Until a wanted version
        is loaded, the model keeps its route: it never stops answering."""
        weights = {m.version: m.weight for m in wanted
                   if m.name == name and m.version in self.engine.versions(name)}
        if not weights:
            return
        self.engine.route(name, weights)
        for other in self.engine.versions(name):
            if other not in weights:
                await self.engine.unload(name, other)
                self.models.pop((name, other), None)
                self._changed.set()

    async def _forget_unwanted(self, wanted: list[StoredModel], refused: set[str]) -> None:
        """Unloads the models no longer assigned at all (a model whose assignment was
        refused still is), and stops reporting versions that are neither wanted nor
        loaded (a version that failed, once replaced). Versions still serving stay until
        a wanted one replaces them (_route)."""
        names = {m.name for m in wanted} | refused
        for name in sorted(set(self.engine.models()) - names):
            for version in self.engine.versions(name):
                await self.engine.unload(name, version)
        keep = {(m.name, m.version) for m in wanted}
        for key in sorted(self.models):
            if key not in keep and key[1] not in self.engine.versions(key[0]):
                del self.models[key]
                self._changed.set()
