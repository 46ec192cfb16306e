"""kopf handlers: translate watch events into calls of the planner and write the results.

Each EdgeModel has a status loop (a kopf daemon) that recomputes its status whenever
something it depends on changes (fleet.py says what wakes whom), and writes only when
the result differs from what is stored. A model's status depends on *other* objects
(its devices), which kopf's per-object handlers cannot express, hence daemons that patch
through the API client instead of kopf's `patch`. EdgeDevices and EdgeModels reach the
fleet index from watches.py, a lighter path than kopf's for the thousands of events a
fleet's heartbeats bring. Device phases, which depend on the gateways' Leases, are kept
for the whole fleet by phases.py; the gateway's view of each device is published from
the watch events. Policy lives in planner.py; nothing here decides.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from edgefleet.operator import credentials, kubeapi, metrics, planner, rollout, signatures
from edgefleet.operator.artifact_sources import ArtifactError
from edgefleet.operator.artifacts import Artifact, ArtifactCache
from edgefleet.operator.credentials import CredentialStore
from edgefleet.operator.dataset import DatasetError, DatasetWriter
from edgefleet.operator.fleet import (
    FleetChanges,
    FleetIndex,
    approved,
    capabilities_of,
    device_view,
    model_key,
    model_view,
)
from edgefleet.operator.gateway.directory import DeviceAccess, DeviceDirectory
from edgefleet.operator.kubeapi import API_ERRORS
from edgefleet.operator.phases import DeviceFacts, DevicePhases
from edgefleet.operator.resources import (
    GROUP,
    VERSION,
    ArtifactSource,
    Capabilities,
    DataCollection,
    EdgeDeviceStatus,
    EdgeModelSpec,
    EdgeModelStatus,
    Variant,
    VariantStatus,
    describe_validation_error,
)
from edgefleet.operator.retrainer import Notice, Retrainer
from edgefleet.operator.settings import OperatorSettings, Role
from edgefleet.operator.variant_builder import BuildRequest, VariantBuilder
from edgefleet.operator.variants import BuildOutcome
from edgefleet.operator.views import ArtifactCheck, DeviceView, ModelView, parse_time
from edgefleet.operator.watches import Body

MODELS = "edgemodels"
DEVICES = "edgedevices"
FINALIZER = f"{GROUP}/withdrawal"
Clock = Callable[[], datetime]
log = logging.getLogger("edgefleet.operator.status")


class OperatorMemo(kopf.Memo):
    """What every handler shares, set once at start-up (see __main__.py)."""

    settings: OperatorSettings
    fleet: FleetChanges
    index: FleetIndex  # every device and model, from watches.py
    status_api: client.CustomObjectsApi
    clock: Clock
    artifacts: ArtifactCache
    # The gateway's view (None in the controller role, which serves no devices): who may
    # act as each device and what it should serve, and the gateway's copy of artifacts.
    directory: DeviceDirectory | None
    device_links: dict[tuple[str, str], DeviceLink]
    mirror: ArtifactMirror | None
    # The controller's part of device status (None in a gateway replica).
    phases: DevicePhases | None
    credentials: CredentialStore  # device tokens, from the Secrets watch (credentials.py)
    variants: VariantBuilder | None  # the controller's: builds spec.variants
    dataset: DatasetWriter | None  # the controller's: expires samples past retentionDays
    retrainer: Retrainer | None  # the controller's: spec.retraining's Jobs


@dataclass(frozen=True)
class DeviceLink:
    """What the gateway is told of an EdgeDevice besides what it should serve."""

    secret_name: str
    labels: Mapping[str, str]
    may_serve: bool
    access: DeviceAccess
    capabilities: Capabilities | None  # as the device last reported: variants follow it


def utc_now() -> datetime:
    # Whole seconds, as Kubernetes writes its own timestamps.
    return datetime.now(UTC).replace(microsecond=0)


def configure(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
    # Idle watch streams can stall silently; time them out and re-list.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    # kopf removes its finalizer from every object it watches that none of its handlers
    # needs one for; a gateway replica, which has no such handlers, must not take the
    # controller's: it names one that no object carries.
    settings.persistence.finalizer = (f"{GROUP}/gateway-replica"
                                      if memo.settings.role == "gateway" else FINALIZER)
    # Handler progress in annotations keeps `status` ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Events say who posted them (`kubectl describe`'s From column).
    settings.posting.reporting_component = "edgefleet-operator"


# ---------------------------------------------------------------- fleet index
#
# The fleet's own kinds come from watches.py, not from kopf: one call per watch event,
# on the loop, models before devices once everything is listed.


def publish(memo: OperatorMemo, namespace: str, name: str) -> None:
    """Tells the gateway what the device should serve now, and who may act as it."""
    link = memo.device_links.get((namespace, name))
    if memo.directory is None or link is None:
        return
    assignments = (planner.desired_assignments(namespace, name, link.labels,
                                               memo.index.models_in(namespace),
                                               link.capabilities)
                   if link.may_serve else [])
    memo.directory.publish(namespace, name, link.secret_name, assignments, link.access,
                           link.capabilities)


def model_changed(memo: OperatorMemo, namespace: str, name: str, body: Body | None) -> None:
    """An EdgeModel watched (None: deleted): indexed, its status loop woken, and the
    devices whose assignments it moves republished."""
    memo.fleet.notify(model_key(namespace, name))
    view = (model_view(name, body["metadata"], body.get("spec") or {},
                       body.get("status") or {}) if body else None)
    models = memo.index.models[namespace]
    before = models.pop(name, None)
    if view:
        models[name] = view
    if memo.directory is None:  # the controller serves no devices
        return
    for device in planner.devices_to_wake(namespace, before, view,
                                          memo.index.devices_in(namespace)):
        publish(memo, namespace, device)


def device_changed(memo: OperatorMemo, namespace: str, name: str, body: Body | None) -> None:
    """An EdgeDevice watched (None: deleted): indexed, the models that select it woken
    when what they read of it moved, its phase decided, and the gateway told."""
    metadata = body["metadata"] if body else {}
    annotations = metadata.get("annotations") or {}
    spec = (body.get("spec") if body else None) or {}
    status = (body.get("status") if body else None) or {}
    # A device that registered itself with a fleet token (it has no bootstrap Secret)
    # serves nothing until an admin approves it; until then it counts nowhere.
    may_serve = body is not None and approved(spec, annotations)
    labels = metadata.get("labels") or {}
    view = device_view(name, labels, status) if may_serve else None
    devices = memo.index.devices[namespace]
    before = devices.pop(name, None)
    if view:
        devices[name] = view
    # Labels, approval, phase, pressure, held models and statistics matter to models; a
    # heartbeat that only moves lastSeen changes none of them.
    if report(before) != report(view):
        label_sets = [seen.labels for seen in (before, view) if seen]
        for model in planner.models_to_wake(label_sets, memo.index.models_in(namespace)):
            memo.fleet.notify(model_key(namespace, model))
    if body is None:
        memo.device_links.pop((namespace, name), None)
        if memo.directory:
            memo.directory.remove(namespace, name)
        if memo.phases:
            memo.phases.forget(namespace, name)
        return
    if memo.phases:
        memo.phases.observe(namespace, name, DeviceFacts(
            approved=may_serve, revoked=bool(spec.get("revoked")),
            status={key: status[key] for key in DeviceFacts.READS if key in status},
            generation=metadata.get("generation"), uid=str(metadata.get("uid", "")),
            labels=labels, resource_version=str(metadata.get("resourceVersion", ""))))
    if memo.directory is None:  # the controller serves no devices
        return
    identity = status.get("identity") or {}
    link = DeviceLink(
        secret_name=(spec.get("bootstrapTokenSecretRef") or {}).get("name", ""),
        labels=dict(labels), may_serve=may_serve, capabilities=capabilities_of(status),
        access=DeviceAccess(serial=str(identity.get("serial", "")),
                            token_fingerprint=str(identity.get("tokenFingerprint", "")),
                            revoked=bool(spec.get("revoked")),
                            certificate_revoked=identity.get("state") == "Revoked",
                            not_before=parse_time(identity.get("notBefore"))))
    # Most events are a status write by a gateway (lastSeen, models held): they move
    # nothing the directory is told; the models' own changes publish what they move.
    if memo.device_links.get((namespace, name)) != link:
        memo.device_links[(namespace, name)] = link
        publish(memo, namespace, name)
    if entry := memo.directory.get(namespace, name):  # a new session goes on from them
        entry.conditions = list(status.get("conditions") or [])
        entry.data = list(status.get("data") or [])


def report(view: DeviceView | None) -> tuple[Any, ...] | None:
    """What a device's models read of it."""
    return (view.labels, view.models, view.traffic, view.phase,
            view.pressure, view.data) if view else None


async def follow_artifacts(namespace: str, name: str, type: str | None, body: kopf.Body,
                           meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status,
                           memo: OperatorMemo, **_: Any) -> None:
    """A kopf handler, so that the artifact fetches it starts can post Events."""
    if memo.mirror:
        memo.mirror.follow(namespace, name, body, None if type == "DELETED"
                           else model_view(name, meta, spec, status))


# ---------------------------------------------------------------- status writes


async def write_status(
    memo: OperatorMemo, plural: str, namespace: str, name: str, status: Mapping[str, Any]
) -> None:
    """Merges these fields into the status (EdgeDevice status has other writers)."""
    await kubeapi.call(
        memo.status_api.patch_namespaced_custom_object_status,
        GROUP, VERSION, namespace, plural, name, {"status": dict(status)},
    )


async def replace_status(
    memo: OperatorMemo, plural: str, namespace: str, name: str, status: Mapping[str, Any]
) -> None:
    """Replaces the whole status (EdgeModel status is the model loop's alone): a merge
    patch would keep the fields that became empty, such as a finished rollout."""
    await kubeapi.call(
        memo.status_api.patch_namespaced_custom_object_status,
        GROUP, VERSION, namespace, plural, name,
        [{"op": "add", "path": "/status", "value": dict(status)}],
        _content_type="application/json-patch+json",
    )


async def patch_spec(memo: OperatorMemo, namespace: str, name: str,
                     patch: Mapping[str, Any]) -> None:
    """Merges `patch` into an EdgeModel (retraining's Canary rollout of a candidate)."""
    await kubeapi.call(
        memo.status_api.patch_namespaced_custom_object,
        GROUP, VERSION, namespace, MODELS, name, dict(patch),
        _content_type="application/merge-patch+json",
    )


def dump(model: EdgeModelStatus | EdgeDeviceStatus) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


async def run_status_loop(
    *,
    resource: str,
    namespace: str,
    name: str,
    keys: list[str],
    stopped: kopf.DaemonStopped,
    memo: OperatorMemo,
    reconcile: Callable[[], Awaitable[bool]],
    next_deadline: Callable[[], float | None] = lambda: None,
) -> None:
    """Runs `reconcile` at start, after every change notified on `keys` (debounced) and
    when `next_deadline()` seconds pass. Errors are counted, logged and retried."""
    while not stopped:
        seen = memo.fleet.generations(keys)
        started = time.perf_counter()
        try:
            outcome = "updated" if await reconcile() else "unchanged"
        except API_ERRORS as error:
            if getattr(error, "status", None) == 404:  # the object is gone; kopf stops us
                return
            outcome = "error"
            log.warning("status write failed resource=%s namespace=%s name=%s error=%s; "
                        "retrying", resource, namespace, name, error)
            seen = dict.fromkeys(keys, -1)  # retry after the pause below, change or not
            await asyncio.sleep(1)
        took_s = time.perf_counter() - started
        metrics.RECONCILES.labels(resource, outcome).inc()
        metrics.RECONCILE_SECONDS.labels(resource).observe(took_s)
        # Wake on the next change (one made during this reconcile counts: the wait
        # returns at once), on the deadline, or on stop.
        change = asyncio.ensure_future(memo.fleet.wait(seen, timeout=next_deadline()))
        stop = asyncio.ensure_future(stopped.wait())
        await asyncio.wait({change, stop}, return_when=asyncio.FIRST_COMPLETED)
        change.cancel()
        stop.cancel()
        # A loop that costs more (a model over thousands of devices) waits at least as
        # long as it took: under a storm of reports it takes at most half a core.
        await asyncio.sleep(max(memo.settings.status_debounce_seconds, took_s))


class ArtifactRetry:
    """Fetches a model's artifact into its namespace's cache and, when the source is
    signed, verifies the publisher's signature (signatures.py) with the key in the
    Secret that publicKeyRef names in the model's namespace; backs off after failures
    (1 s doubling to 5 min) and says each distinct failure once in an Event. Messages
    come from the cache (URIs redacted, no digest but the spec's) or name the Secret and
    key, never the key's bytes."""

    FIRST_DELAY_S, MAX_DELAY_S = 1.0, 300.0
    SIGNATURE_INVALID = "SignatureInvalid"

    def __init__(self, cache: ArtifactCache, body: kopf.Body, namespace: str,
                 secrets: client.CoreV1Api, field: str = "spec.source") -> None:
        self._cache = cache
        self._body = body
        self._namespace = namespace
        self._secrets = secrets
        self._field = field  # where the source is in the spec, for messages
        self._source: ArtifactSource | None = None
        self._failure: ArtifactCheck | None = None
        self._delay_s = self.FIRST_DELAY_S
        self._retry_at = 0.0
        # (digest, signature, key fingerprint) -> None if it verified, else why not:
        # a file of gigabytes is hashed once, not at every reconcile.
        self._verified: dict[tuple[str, str, str], str | None] = {}

    def seconds_to_retry(self) -> float | None:
        return max(0.0, self._retry_at - time.monotonic()) if self._failure else None

    async def check(self, source: ArtifactSource) -> ArtifactCheck:
        if source != self._source:  # a new spec (digest, signature, key) starts afresh
            self._source, self._failure, self._delay_s = source, None, self.FIRST_DELAY_S
        if self._failure and time.monotonic() < self._retry_at:
            return self._failure
        try:
            artifact = await self._cache.ensure(self._namespace, source.uri, source.sha256)
            signed_by = await self._verify_publisher(source, artifact)
        except ArtifactError as error:
            metrics.ARTIFACT_FAILURES.labels(error.reason).inc()
            failure = ArtifactCheck(False, error.reason, error.message)
            if failure != self._failure:
                kopf.warn(self._body, reason=f"Artifact{error.reason}", message=error.message)
            self._failure = failure
            self._retry_at = time.monotonic() + self._delay_s
            self._delay_s = min(self._delay_s * 2, self.MAX_DELAY_S)
            return failure
        self._failure, self._delay_s = None, self.FIRST_DELAY_S
        return ArtifactCheck(True, "Verified",
                             f"sha256 verified{signed_by}, {artifact.size} bytes",
                             digest=artifact.digest, size=artifact.size)

    async def _verify_publisher(self, source: ArtifactSource, artifact: Artifact) -> str:
        """"" for an unsigned source; for a signed one, the key that verified it, or
        ArtifactError SignatureInvalid. A missing Secret is a failure like any other,
        retried with the backoff: it may be created later."""
        ref = source.public_key_ref
        if source.signature is None or ref is None:
            return ""
        secret_ref = f"Secret {ref.name} ({self._field}.publicKeyRef)"
        try:
            secret = await kubeapi.call(self._secrets.read_namespaced_secret, ref.name,
                                        self._namespace)
        except ApiException as error:  # others (the API server failing) are retried
            if error.status == 404:
                raise ArtifactError(self.SIGNATURE_INVALID,
                                    f"{secret_ref} does not exist in the model's namespace"
                                    ) from None
            if error.status == 403:
                raise ArtifactError(self.SIGNATURE_INVALID,
                                    f"the operator may not read {secret_ref}") from None
            raise
        encoded = (secret.data or {}).get(ref.key)
        if encoded is None:
            raise ArtifactError(self.SIGNATURE_INVALID, f"{secret_ref} has no key {ref.key!r}")
        key_ref = f"key {ref.key!r} of {secret_ref}"
        try:
            key = signatures.load_public_key(base64.b64decode(encoded))
        except signatures.SignatureError as error:
            raise ArtifactError(self.SIGNATURE_INVALID, f"{key_ref} {error}") from None
        checked = (artifact.digest, source.signature, signatures.key_fingerprint(key))
        if checked not in self._verified:
            try:
                await asyncio.to_thread(signatures.verify_file, key, source.signature,
                                        artifact.path)
                outcome = None
            except signatures.SignatureError as error:
                outcome = f"{self._field}.signature {error} ({key_ref})"
            except OSError:  # evicted or unreadable: say so, retry, remember nothing
                raise ArtifactError(self.SIGNATURE_INVALID, (
                    "the cached artifact could not be read to verify "
                    f"{self._field}.signature; retrying")) from None
            if len(self._verified) >= 16:
                self._verified.clear()
            self._verified[checked] = outcome
        if (why := self._verified[checked]) is not None:
            raise ArtifactError(self.SIGNATURE_INVALID, why)
        return f" and signed with {key_ref}"


def variant_builds(memo: OperatorMemo, namespace: str, name: str, spec: EdgeModelSpec,
                   artifact: ArtifactCheck) -> dict[str, BuildOutcome]:
    """Where each of spec.variants stands for the spec's verified source; builds start in
    the background and wake the model's status loop when they end."""
    source = memo.artifacts.get(namespace, artifact.digest) if artifact.ready else None
    if memo.variants is None or source is None:
        return {}
    wake = Wake(memo.fleet, model_key(namespace, name))
    return {variant.name: memo.variants.outcome(
        BuildRequest(namespace, source, variant, spec.validation), wake)
        for variant in spec.variants}


@dataclass(frozen=True)
class Wake:
    """Wakes a model's status loop; equal for one model, so a build waited on by many
    reconciles wakes it once."""

    fleet: FleetChanges
    key: str

    def __call__(self) -> None:
        self.fleet.notify(self.key)


async def keep_model_status(
    name: str,
    namespace: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: OperatorMemo,
    **_: Any,
) -> None:
    await memo.index.listed.wait()  # a status from a partial fleet would be wrong
    reported: set[tuple[int | None, str, str]] = set()  # already in Events
    secrets = client.CoreV1Api(memo.status_api.api_client)  # publishers' keys
    artifacts = ArtifactRetry(memo.artifacts, body, namespace, secrets)
    experiment_artifacts = ArtifactRetry(memo.artifacts, body, namespace, secrets,
                                         field="spec.experiment.source")
    recheck_at: float | None = None  # monotonic time the rollout asked to be looked at
    # When this loop last wrote (monotonic), and when counts held back are due.
    written_at, figures_due_at = float("-inf"), None

    def report_once(generation: int | None, reason: str, message: str,
                    warning: bool = True) -> None:
        if (generation, reason, message) not in reported:
            reported.add((generation, reason, message))
            post = kopf.warn if warning else kopf.info
            post(body, reason=reason, message=message)

    async def reconcile() -> bool:
        nonlocal recheck_at, written_at, figures_due_at
        if body.meta.get("deletionTimestamp"):
            return False
        events: list[rollout.RolloutEvent] = []
        notices: list[Notice] = []  # retraining's
        generation = body.meta.get("generation")
        stored = dict(body.status)
        try:
            previous = EdgeModelStatus.model_validate(stored)
        except ValidationError:
            previous = EdgeModelStatus()
        try:
            spec = EdgeModelSpec.model_validate(dict(body.spec))
        except ValidationError as error:
            problem = f"spec does not parse: {describe_validation_error(error)}"
            desired = planner.invalid_model_status(generation=generation, problem=problem,
                                                   previous=previous, now=memo.clock())
            recheck_at = None
            report_once(generation, "InvalidSpec", problem)
        else:
            problems = planner.spec_problems(spec)
            for problem in problems:
                report_once(generation, "InvalidSpec", problem)
            artifact = (ArtifactCheck(False, "InvalidSpec", "the spec is invalid")
                        if problems else await artifacts.check(spec.source))
            experiment = (await experiment_artifacts.check(spec.experiment.source)
                          if spec.experiment and not problems else None)
            builds = variant_builds(memo, namespace, name, spec, artifact)
            plan = planner.plan_model_status(
                namespace=namespace, name=name, generation=generation, spec=spec,
                devices=memo.index.devices_in(namespace), artifact=artifact,
                previous=previous,
                approved_step=rollout.approved_step(body.meta.annotations, spec.version),
                now=memo.clock(), experiment=experiment, builds=builds,
            )
            desired, events = plan.status, plan.events
            metrics.ROLLOUTS.set(namespace, name, desired, plan.device_states)
            recheck_after_s = plan.recheck_after_s
            if memo.retrainer and (spec.retraining or previous.retraining):
                retrained = await memo.retrainer.reconcile(
                    namespace, name, body.meta.uid, spec, desired, memo.clock())
                desired = desired.model_copy(update={"retraining": retrained.status})
                notices += retrained.notices
                if retrained.promotion:  # before the status says Succeeded: never lost
                    await patch_spec(memo, namespace, name, retrained.promotion)
                recheck_after_s = min((s for s in (recheck_after_s, retrained.recheck_after_s)
                                       if s is not None), default=None)
            recheck_at = (None if recheck_after_s is None
                          else time.monotonic() + recheck_after_s)
            ready = next(c for c in desired.conditions if c.type == planner.READY)
            if ready.reason == "DevicesFailed":  # which devices failed, and why, once
                report_once(generation, "DevicesFailed", ready.message)
        metrics.MODEL_PHASES.set(namespace, name, desired.phase)
        figures_due_at = None
        if dump(desired) == stored:
            return False
        # Counts move with every device that reports during a rollout: written at most
        # every --model-status-write-seconds; a decision (phase, step, condition) at once.
        due = written_at + memo.settings.model_status_write_seconds
        if (not events and not notices and time.monotonic() < due
                and planner.without_figures(desired) == planner.without_figures(previous)):
            figures_due_at = due
            return False
        await replace_status(memo, MODELS, namespace, name, dump(desired))
        written_at = time.monotonic()
        # Rollout Events tell of transitions, which always change the status: posted
        # after the write, so a restart (which recomputes the same status) repeats none.
        for event in events:
            report_once(generation, event.reason, event.message, event.type == "Warning")
        for notice in notices:
            report_once(generation, notice.reason, notice.message, notice.warning)
        log.info("status resource=EdgeModel namespace=%s name=%s phase=%s ready=%s step=%s",
                 namespace, name, desired.phase, desired.ready_summary, desired.step_summary)
        return True

    def next_deadline() -> float | None:
        deadlines = [artifacts.seconds_to_retry(), experiment_artifacts.seconds_to_retry(),
                     memo.variants.seconds_to_retry() if memo.variants else None]
        for at in (recheck_at, figures_due_at):
            if at is not None:
                deadlines.append(max(0.0, at - time.monotonic()) + 0.05)
        return min((d for d in deadlines if d is not None), default=None)

    expiry = (asyncio.create_task(expire_samples(memo.dataset, namespace, name, body,
                                                 memo.settings.dataset_expiry_seconds))
              if memo.dataset else None)
    try:
        await run_status_loop(resource="EdgeModel", namespace=namespace, name=name,
                              keys=[model_key(namespace, name)],
                              stopped=stopped, memo=memo, reconcile=reconcile,
                              next_deadline=next_deadline)
    finally:
        if expiry:
            expiry.cancel()
        if memo.retrainer:
            memo.retrainer.forget(namespace, name)
        metrics.MODEL_PHASES.discard(namespace, name)
        metrics.ROLLOUTS.discard(namespace, name)


async def expire_samples(dataset: DatasetWriter, namespace: str, name: str, body: kopf.Body,
                         every_s: float) -> None:
    """Deletes the model's samples older than its spec.dataCollection.retentionDays (the
    default, 30, once the spec collects nothing more), at start and every `every_s`,
    while the model lives."""
    while True:
        try:
            policy = EdgeModelSpec.model_validate(dict(body.spec)).data_collection
        except ValidationError:
            policy = None  # the status loop says what is wrong with the spec
        days = (policy or DataCollection()).retention_days
        try:
            removed = await dataset.expire(namespace, name, utc_now() - timedelta(days=days))
        except (OSError, DatasetError) as error:
            log.warning("samples of EdgeModel %s/%s past %d days not expired yet: %s",
                        namespace, name, days, error)
        else:
            if removed:
                log.info("expired samples resource=EdgeModel namespace=%s name=%s shards=%d "
                         "older_than_days=%d", namespace, name, removed, days)
        await asyncio.sleep(every_s)


# ---------------------------------------------------------------- deletion


async def withdraw_model(
    name: str,
    namespace: str,
    meta: kopf.Meta,
    body: kopf.Body,
    memo: OperatorMemo,
    **_: Any,
) -> None:
    """Holds the finalizer until no device reports the model any more, for a bounded
    time; then lets the object go and says in an Event which devices did not confirm."""
    await memo.index.listed.wait()
    holding = planner.devices_holding(name, memo.index.devices_in(namespace))
    if not holding:
        return
    deleted_at = parse_time(meta.get("deletionTimestamp")) or memo.clock()
    waited = (memo.clock() - deleted_at).total_seconds()
    remaining = memo.settings.deletion_timeout_seconds - waited
    if remaining > 0:
        raise kopf.TemporaryError(
            f"waiting for {len(holding)} devices to withdraw the model: {', '.join(holding)}",
            delay=min(2.0, remaining),
        )
    kopf.warn(body, reason="WithdrawalUnconfirmed", message=(
        f"deleted after {memo.settings.deletion_timeout_seconds:.0f}s without confirmation "
        f"from {len(holding)} devices: {', '.join(holding)}"))


# ---------------------------------------------------------------- a gateway replica's artifacts


class ArtifactMirror:
    """The artifacts a gateway serves FetchArtifact from, verified in its own cache:
    fetched when a model names a new source, retried with ArtifactRetry's backoff until
    verified. A gateway replica follows every source (the controller verifies them too,
    for the model's status); the gateway inside the operator only the stable version's,
    which an operator that restarted mid-rollout with an empty cache would lack. The
    variants status.variants ships are built again from their verified sources when the
    cache lacks them (builds are deterministic); one whose digest comes out otherwise
    is not served, and said so in the log."""

    def __init__(self, cache: ArtifactCache, secrets: client.CoreV1Api,
                 spec_sources: bool, builder: VariantBuilder) -> None:
        self._cache = cache
        self._secrets = secrets
        self._spec_sources = spec_sources
        self._builder = builder
        self._fetches: dict[tuple[str, str], tuple[object, asyncio.Task[None]]] = {}

    def follow(self, namespace: str, name: str, body: kopf.Body,
               view: ModelView | None) -> None:
        """Fetches what the model names (nothing for a deleted or invalid one)."""
        sources = (planner.sources_to_serve(view.spec, view.status, self._spec_sources)
                   if view else {})
        shipped = ([(entry, variant) for entry in view.status.variants
                    if entry.phase == "Ready" and entry.digest
                    for variant in view.spec.variants if variant.name == entry.name]
                   if view and sources else [])
        wanted = (sources, shipped)
        following = self._fetches.get((namespace, name))
        if following and following[0] == wanted:
            return
        if following:
            following[1].cancel()
        self._fetches.pop((namespace, name), None)
        if sources:
            self._fetches[(namespace, name)] = (wanted, asyncio.create_task(
                self._fetch(namespace, body, sources, shipped),
                name=f"artifacts {namespace}/{name}"))

    async def _fetch(self, namespace: str, body: kopf.Body, sources: dict[str, ArtifactSource],
                     shipped: list[tuple[VariantStatus, Variant]]) -> None:
        waiting = {field: ArtifactRetry(self._cache, body, namespace, self._secrets, field)
                   for field in sources}
        while waiting:
            for field, retry in list(waiting.items()):
                if (await retry.check(sources[field])).ready:
                    del waiting[field]
            delays = [retry.seconds_to_retry() for retry in waiting.values()]
            await asyncio.sleep(min((d for d in delays if d is not None), default=0.0))
        for entry, variant in shipped:
            await self._rebuild(namespace, entry, variant)

    async def _rebuild(self, namespace: str, entry: VariantStatus, variant: Variant) -> None:
        source = self._cache.get(namespace, entry.source_digest)
        if source is None or entry.digest is None or self._cache.get(namespace, entry.digest):
            return
        done = asyncio.Event()
        request = BuildRequest(namespace, source, variant, None)
        while (outcome := self._builder.outcome(request, done.set)).state == "Building":
            await done.wait()
            done.clear()
        if outcome.digest != entry.digest:
            log.error("variant not served namespace=%s variant=%s version=%s: built %s, "
                      "status.variants ships %s (%s)", namespace, entry.name, entry.version,
                      outcome.digest or "nothing", entry.digest, outcome.message or "mismatch")


# ---------------------------------------------------------------- roles


def registry_for(role: Role) -> kopf.OperatorRegistry:
    """The handlers a process runs. The controller (and `all`) decides: model status and
    rollouts, device phases, withdrawal on deletion. A gateway replica only derives, from
    the same watches, what each device should serve and who may act as it, and keeps
    its own copy of the artifacts: it writes no model status and holds no finalizer."""
    registry = kopf.OperatorRegistry()
    # The credentials the operator's own API client found (kubeconfig or in-cluster).
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(configure)
    if role != "gateway":
        kopf.daemon(GROUP, VERSION, MODELS, cancellation_timeout=1.0,
                    registry=registry)(keep_model_status)
        kopf.on.delete(GROUP, VERSION, MODELS, registry=registry)(withdraw_model)
    if role != "controller":  # device tokens for enrolment, artifacts to serve
        kopf.on.event("", "v1", "secrets", registry=registry)(credentials.secret_changed)
        kopf.on.event(GROUP, VERSION, MODELS, registry=registry)(follow_artifacts)
    return registry
