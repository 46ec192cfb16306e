"""Pure decisions of the operator: which devices a model targets, what a spec that the
schema accepted still cannot mean, and what each resource's status should say.

Nothing here talks to Kubernetes or reads a clock: callers pass the fleet as seen by
the watches and `now`, and get back values to write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from edgefleet.operator import analysis, device_health, rollout, variants
from edgefleet.operator.analysis import TrafficStats
from edgefleet.operator.resources import (
    AnalysisStatus,
    ArtifactSource,
    ArtifactStatus,
    Capabilities,
    Condition,
    ConditionStatus,
    DataCollection,
    DataStatus,
    DeviceCounts,
    DevicePhase,
    EdgeModelSpec,
    EdgeModelStatus,
    ExperimentStatus,
    LabelSelector,
    ModelPhase,
    RuntimeSettings,
    TrafficSummary,
    Variant,
    VariantStatus,
    VersionTraffic,
)
from edgefleet.operator.selectors import selector_conflict, selector_matches
from edgefleet.operator.views import ArtifactCheck, DeviceView, ModelView, parse_time

READY = "Ready"
ARTIFACT_READY = "ArtifactReady"
EXPERIMENT = "Experiment"
MAX_MESSAGE = 2048  # Condition.message's bound in the CRD


# ---------------------------------------------------------------- selectors


def targeted_devices(selector: LabelSelector, devices: Iterable[DeviceView]) -> list[DeviceView]:
    return [device for device in devices if selector_matches(selector, device.labels)]


# ---------------------------------------------------------------- spec semantics


def spec_problems(spec: EdgeModelSpec) -> list[str]:
    """What the schema cannot see but makes the spec impossible to act on."""
    problems = []
    conflict = selector_conflict(spec.selector)
    if conflict:
        problems.append(f"spec.selector can never match a device: {conflict}")
    percents = [step.percent for step in spec.rollout.steps]
    if any(later < earlier for earlier, later in itertools.pairwise(percents)):
        problems.append(f"spec.rollout.steps: percents must not decrease, got {percents}")
    if spec.rollout.max_unavailable in (0, "0%"):
        problems.append("spec.rollout.maxUnavailable: 0 lets no device switch, "
                        "so a rollout could never progress")
    if spec.experiment and spec.experiment.version == spec.version:
        problems.append(f"spec.experiment.version: {spec.version} is spec.version already; "
                        "an A/B test needs another version")
    return problems


def sources_to_serve(spec: EdgeModelSpec, status: EdgeModelStatus,
                     with_spec: bool) -> dict[str, ArtifactSource]:
    """The artifacts a gateway may be asked for, by the field that names each, one per
    digest: those the status assigns (the stable version's above all, which the spec
    no longer names once a rollout began) and, `with_spec`, the spec's own; without it
    the spec's are left to the model's own checks. None for a spec that cannot be acted
    on."""
    if spec_problems(spec):
        return {}
    own = [("spec.source", spec.source)]
    if spec.experiment:
        own.append(("spec.experiment.source", spec.experiment.source))
    assigned = [(f"{field}.source", artifact.source) for field, artifact in (
        ("status.stableArtifact", status.stable_artifact),
        ("status.rollout.target", status.rollout.target if status.rollout else None),
        ("status.artifact", status.artifact),
        ("status.experiment.artifact",
         status.experiment.artifact if status.experiment else None),
    ) if artifact and artifact.source]
    seen = set() if with_spec else {source.sha256.lower() for _, source in own}
    sources = {}
    for field, source in [*(own if with_spec else []), *assigned]:
        if source.sha256.lower() not in seen:
            seen.add(source.sha256.lower())
            sources[field] = source
    return sources


# ---------------------------------------------------------------- conditions


def set_condition(
    conditions: Iterable[Condition],
    *,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """Replaces the condition of `type_`; lastTransitionTime moves only when status does."""
    kept: list[Condition] = []
    previous: Condition | None = None
    for condition in conditions:
        if condition.type == type_:
            previous = condition
        else:
            kept.append(condition)
    changed_at = previous.last_transition_time if previous and previous.status == status else now
    if len(message) > MAX_MESSAGE:  # many failed devices: say that it goes on
        message = message[:MAX_MESSAGE - 1] + "…"
    return [*kept, Condition(type=type_, status=status, reason=reason, message=message,
                             last_transition_time=changed_at, observed_generation=generation)]


# ---------------------------------------------------------------- EdgeModel status


def count_devices(model: str, target_version: str, targeted: Iterable[DeviceView],
                  assigned: Mapping[str, ArtifactStatus | None],
                  lost: Collection[str] = ()) -> DeviceCounts:
    """`updated`: devices on the spec's version; `ready` and `failed`: devices serving,
    or failing, the version `assigned` to them by name (the stable one outside a
    rollout's cohort), and `lost` devices (offline past the timeout) never ready:
    their last report is no word on now; `offline`: devices Offline now."""
    targeted = list(targeted)
    updated = ready = failed = offline = 0
    for device in targeted:
        offline += device.phase == "Offline"
        if device.state_of(model, target_version) not in (None, "Failed"):
            updated += 1
        if artifact := assigned.get(device.name):
            state = device.state_of(model, artifact.version)
            ready += state == "Ready" and device.name not in lost
            failed += state == "Failed"
    return DeviceCounts(targeted=len(targeted), updated=updated, ready=ready, failed=failed,
                        offline=offline)


def model_phase(problems: list[str], counts: DeviceCounts, status: EdgeModelStatus,
                paused: bool, lost: int = 0) -> ModelPhase:
    current = status.rollout
    if problems:
        return "Failed"
    if current and current.state == "RolledBack":
        return "RolledBack"
    if current and (current.state == "Halted" or paused):
        return "Paused"
    if status.stable_artifact is None and status.artifact is None:
        return "Pending"
    if counts.failed:
        return "Degraded"
    if current:
        return "Progressing"
    if lost:
        return "Degraded"
    if counts.targeted and counts.ready == counts.targeted:
        return "Healthy"
    if counts.ready == 0:
        return "Pending"
    return "Progressing"


def _ready_condition(
    problems: list[str], counts: DeviceCounts, failed_devices: list[str],
    artifact: ArtifactCheck, status: EdgeModelStatus, lost: list[str], timeout_s: int,
) -> tuple[ConditionStatus, str, str]:
    if problems:
        return "False", "InvalidSpec", "; ".join(problems)
    if status.stable_artifact is None and status.artifact is None:
        return "False", "ArtifactNotReady", f"nothing is sent to devices: {artifact.message}"
    if counts.targeted == 0:
        return "False", "NoTargetedDevices", "the selector matches no EdgeDevice in the namespace"
    if counts.failed:
        return "False", "DevicesFailed", (
            f"{counts.failed} of {counts.targeted} devices failed: {'; '.join(failed_devices)}")
    if lost:
        shown = ", ".join(lost[:10]) + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
        return "False", "DevicesOffline", (
            f"{counts.ready} of {counts.targeted} devices serve their assigned version; "
            f"{len(lost)} have been offline for more than {timeout_s}s: {shown}")
    if counts.ready == counts.targeted:
        return "True", "AllDevicesReady", (
            f"all {counts.targeted} targeted devices serve their assigned version")
    return "False", "DevicesNotReady", (
        f"{counts.ready} of {counts.targeted} devices serve their assigned version")


@dataclass(frozen=True)
class ModelPlan:
    status: EdgeModelStatus
    events: list[rollout.RolloutEvent]
    recheck_after_s: float | None
    # Targeted devices by (version, state) they report of the model, for the metrics.
    device_states: dict[tuple[str, str], int]


def plan_model_status(
    *,
    namespace: str,
    name: str,
    generation: int | None,
    spec: EdgeModelSpec,
    devices: Iterable[DeviceView],
    artifact: ArtifactCheck,
    previous: EdgeModelStatus,
    approved_step: int,
    now: datetime,
    experiment: ArtifactCheck | None = None,
    builds: Mapping[str, variants.BuildOutcome] | None = None,
) -> ModelPlan:
    """The EdgeModel status the operator should write given the fleet as seen now, the
    Events that tell what changed, and when to look again if nothing else happens.
    `builds`: where each of spec.variants stands for the spec's verified source."""
    problems = spec_problems(spec)
    devices = list(devices)
    targeted = [] if problems else targeted_devices(spec.selector, devices)
    source_digest = artifact.digest if artifact.ready and not problems else None
    built = (variants.fresh(spec.variants, spec.version, source_digest, builds or {},
                            spec.validation, previous.variants)
             if source_digest else [])
    # A version rolls out once each of its variants is built or refused: all together.
    verified = (ArtifactStatus(version=spec.version, digest=artifact.digest,
                               size_bytes=artifact.size, source=spec.source)
                if artifact.ready and variants.settled(built, spec.version, artifact.digest)
                else None)
    if problems:  # nothing moves while the spec cannot be acted on
        decision = rollout.RolloutDecision(previous.stable_artifact, previous.rollout,
                                           previous.history, ("False", "InvalidSpec",
                                                              "; ".join(problems)))
    else:
        decision = rollout.decide(namespace=namespace, name=name, spec=spec,
                                  targeted=targeted, verified=verified, previous=previous,
                                  approved=approved_step, now=now)
    current = decision.rollout
    if decision.progressing[1] == "WaitingForArtifact" and source_digest and not verified:
        building = ", ".join(e.name for e in built if e.phase == "Building")
        decision = dataclasses.replace(decision, progressing=("True", "BuildingVariants", (
            f"building version {spec.version}'s variants ({building}); devices keep "
            f"serving {decision.stable.version if decision.stable else 'what they have'}")))
    status = previous.model_copy(update={
        "stable_artifact": decision.stable,
        "stable_version": decision.stable.version if decision.stable else None,
        "rollout": current,
        "history": decision.history,
        "artifact": verified or previous.artifact,
        # The spec version's, then those of the other versions devices still serve.
        "variants": built + variants.carried(
            spec.variants, previous.variants,
            [decision.stable, current.target if current else None],
            (spec.version, source_digest) if source_digest else None),
    })
    assigned = {device.name: rollout.assigned_artifact(namespace, name, device.name, status)
                for device in targeted}
    timeout_s = spec.rollout.offline_timeout_seconds
    away = {device.name: device.offline_for(now) for device in targeted}
    lost = sorted(device for device, seconds in away.items() if seconds > timeout_s)
    counts = count_devices(name, spec.version, targeted, assigned, set(lost))
    # Wake when the next offline device's timeout runs out: it stops counting as ready.
    expiring = [timeout_s - seconds for seconds in away.values() if 0 < seconds <= timeout_s]
    failed_devices = sorted(
        f"{device.name} ({report.message})" if report.message else device.name
        for device in targeted
        if (served := assigned[device.name])
        and (report := device.models.get((name, served.version)))
        and report.state == "Failed"
    )
    ready_status, reason, message = _ready_condition(problems, counts, failed_devices,
                                                     artifact, status, lost, timeout_s)
    conditions = set_condition(previous.conditions, type_=READY, status=ready_status,
                               reason=reason, message=message, now=now, generation=generation)
    conditions = set_condition(conditions, type_=ARTIFACT_READY,
                               status="True" if artifact.ready else "False",
                               reason=artifact.reason, message=artifact.message, now=now,
                               generation=generation)
    progressing_status, reason, message = decision.progressing
    conditions = set_condition(conditions, type_=rollout.PROGRESSING, status=progressing_status,
                               reason=reason, message=message, now=now, generation=generation)
    running, experiment_condition = plan_experiment(name, spec, experiment, status, targeted,
                                                    problems)
    if experiment_condition:
        experiment_status, reason, message = experiment_condition
        conditions = set_condition(conditions, type_=EXPERIMENT, status=experiment_status,
                                   reason=reason, message=message, now=now,
                                   generation=generation)
    else:
        conditions = [c for c in conditions if c.type != EXPERIMENT]
    if spec.variants and not problems:
        variants_status, reason, message = variants.condition(status.variants, spec.version)
        conditions = set_condition(conditions, type_=variants.VARIANTS_READY,
                                   status=variants_status, reason=reason, message=message,
                                   now=now, generation=generation)
    else:
        conditions = [c for c in conditions if c.type != variants.VARIANTS_READY]
    events = list(decision.events)
    for reason, message in variants.transitions(previous.variants, status.variants):
        events.append(rollout.RolloutEvent("Normal" if reason == "VariantReady" else "Warning",
                                           reason, message))
    active = current is not None and current.state == "Progressing"
    status = status.model_copy(update={
        "phase": model_phase(problems, counts, status, spec.rollout.paused, len(lost)),
        "observed_generation": generation,
        "devices": counts,
        "ready_summary": f"{counts.ready}/{counts.targeted}",
        "updated_summary": f"{counts.updated}/{counts.targeted}",
        "step_summary": f"{current.step}/{current.steps}" if current and active else None,
        "conditions": conditions,
        "experiment": running,
        "inference": version_traffic(name, targeted),
        "data": data_status(name, devices),
    })
    device_states = Counter((version, report.state) for device in targeted
                            for (model, version), report in device.models.items()
                            if model == name)
    recheck = [s for s in (decision.recheck_after_s, *expiring) if s is not None]
    return ModelPlan(status, events, min(recheck, default=None), dict(device_states))


def plan_experiment(
    name: str, spec: EdgeModelSpec, check: ArtifactCheck | None, status: EdgeModelStatus,
    targeted: list[DeviceView], problems: list[str],
) -> tuple[ExperimentStatus | None, tuple[ConditionStatus, str, str] | None]:
    """The A/B test of spec.experiment, and its condition (None without one). It runs
    only while the spec's version is the stable one and no rollout moves devices."""
    wanted = spec.experiment
    if wanted is None:
        return None, None
    stable = status.stable_artifact
    if problems:
        return None, ("False", "InvalidSpec", "the spec is invalid")
    if (stable is None or (stable.version, stable.digest) != (spec.version,
                                                              rollout.spec_digest(spec))
            or (status.rollout and status.rollout.state == "Progressing")):
        return None, ("False", "WaitingForStableVersion", (
            f"the A/B test starts once version {spec.version} is stable on the devices"))
    if check is None or not check.ready:
        return None, ("False", "ArtifactNotReady",
                      check.message if check else "not verified yet")
    both = sum(1 for d in targeted if d.state_of(name, stable.version) == "Ready"
               and d.state_of(name, wanted.version) == "Ready")
    running = ExperimentStatus(
        artifact=ArtifactStatus(version=wanted.version, digest=check.digest,
                                size_bytes=check.size, source=wanted.source),
        weight=wanted.weight, ready=both,
        control=_summary(d.traffic.get((name, stable.version)) for d in targeted),
        candidate=_summary(d.traffic.get((name, wanted.version)) for d in targeted))
    return running, ("True", "Running", (
        f"{wanted.weight}% of unpinned requests go to {wanted.version} and "
        f"{100 - wanted.weight}% to {stable.version}; {both} of {len(targeted)} devices "
        "serve both"))


def _summary(reports: Iterable[TrafficStats | None]) -> TrafficSummary:
    summary = analysis.cohort(report for report in reports if report)
    return TrafficSummary(requests=summary.requests, error_rate=summary.error_rate,
                          p99_latency_ms=None if summary.p99_s is None else summary.p99_s * 1000,
                          labelled=summary.labelled, accuracy=summary.accuracy)


def data_status(name: str, devices: Iterable[DeviceView]) -> DataStatus | None:
    """What the dataset holds of the model, summed over the devices that uploaded any
    (their status.data, which the gateways write); None when none did."""
    uploads = [device.data[name] for device in devices if name in device.data]
    if not uploads:
        return None
    times = [upload.last_upload for upload in uploads if upload.last_upload]
    return DataStatus(samples=sum(u.samples for u in uploads),
                      labelled=sum(u.labelled for u in uploads),
                      bytes=sum(u.bytes for u in uploads), devices=len(uploads),
                      last_upload=max(times, default=None))


# The versions status.inference lists: those served during a rollout and an A/B test,
# and a few more that devices report while they move.
MAX_VERSIONS_SHOWN = 8


def version_traffic(name: str, devices: Iterable[DeviceView]) -> list[VersionTraffic]:
    """Each version of the model the devices report, in version order (as text), summarised
    over the devices reporting it (see analysis.cohort)."""
    by_version: dict[str, list[TrafficStats]] = {}
    for device in devices:
        for (model, version), stats in device.traffic.items():
            if model == name:
                by_version.setdefault(version, []).append(stats)
    shown = sorted(by_version)[-MAX_VERSIONS_SHOWN:]
    return [VersionTraffic(version=version, devices=len(by_version[version]),
                           **_summary(by_version[version]).model_dump())
            for version in shown]


def invalid_model_status(
    *, generation: int | None, problem: str, previous: EdgeModelStatus, now: datetime
) -> EdgeModelStatus:
    """For an object whose spec does not even parse (it predates a schema change)."""
    return previous.model_copy(update={
        "phase": "Failed",
        "observed_generation": generation,
        "conditions": set_condition(previous.conditions, type_=READY, status="False",
                                    reason="InvalidSpec", message=problem, now=now,
                                    generation=generation),
    })


# ---------------------------------------------------------------- EdgeDevice phase


class GatewayStanding(Protocol):
    """What the controller knows of the gateway replicas (liveness.GatewayLeases)."""

    def alive(self, replica: str, session_since: datetime | None) -> bool: ...

    def last_alive(self, replica: str) -> datetime | None: ...


def session_gateway(status: Mapping[str, object]) -> str | None:
    """The gateway replica the status says holds the device's session (its connection)."""
    connection = status.get("connection")
    gateway = connection.get("gateway") if isinstance(connection, Mapping) else None
    return gateway if isinstance(gateway, str) else None


def session_alive(status: Mapping[str, object], gateways: GatewayStanding) -> bool:
    """A gateway holds the device's session (status.connection) and is alive, as the
    same process that began the session."""
    gateway = session_gateway(status)
    connection = status.get("connection")
    since = parse_time(connection.get("since")) if isinstance(connection, Mapping) else None
    return gateway is not None and gateways.alive(gateway, since)


def device_phase(last_seen: datetime | None, alive: bool) -> DevicePhase:
    """Pending until the device first connects; then Online while a live gateway holds
    its session."""
    if last_seen is None:
        return "Pending"
    return "Online" if alive else "Offline"


@dataclass(frozen=True)
class DeviceStatusDue:
    """What the controller should write of a device's status now (empty: nothing), the
    phase that makes, and the condition transitions it writes (for Events)."""

    patch: Mapping[str, object]
    phase: DevicePhase
    transitions: tuple[device_health.Transition, ...] = ()


GATEWAY_LOST = ("GatewayLost", "the gateway replica that held its session stopped renewing "
                "its Lease")
NO_SESSION = ("Disconnected", "no fleet gateway holds a session with it")


def device_status_due(*, approved: bool, revoked: bool, status: Mapping[str, object],
                      gateways: GatewayStanding, generation: int | None = None,
                      now: datetime | None = None) -> DeviceStatusDue:
    """The controller's part of an EdgeDevice's status (the gateway holding its session
    writes the rest): `Pending` until an approved device is first seen, `Offline` once
    no session holds it or the gateway process that began its session is gone (when
    the gateway died, lastSeen becomes its last renewal, if later), with its Ready
    condition False; an initial modelCount; `identity.state: Revoked` for a revoked
    device's certificate; observedGeneration."""
    last_seen = parse_time(status.get("lastSeen"))
    alive = session_alive(status, gateways)
    phase = device_phase(last_seen, alive) if approved else "Pending"
    patch: dict[str, object] = {}
    if status.get("phase") != phase:
        patch["phase"] = phase
    gateway = session_gateway(status)
    if phase == "Offline" and gateway and last_seen and not gateways.alive(gateway, None):
        # Its gateway died: the session was last known alive at its last renewal.
        last_alive = gateways.last_alive(gateway)
        if last_alive is not None and last_alive > last_seen:
            patch["lastSeen"] = last_alive.strftime("%Y-%m-%dT%H:%M:%SZ")
    transitions: tuple[device_health.Transition, ...] = ()
    conditions = status.get("conditions")
    conditions = [c for c in conditions if isinstance(c, Mapping)] if isinstance(
        conditions, list) else []
    if phase == "Offline" and not any(c.get("type") == device_health.READY
                                      and c.get("status") == "False" for c in conditions):
        why = GATEWAY_LOST if gateway else NO_SESSION
        before = conditions
        if status.get("phase") == "Online" and not any(
                c.get("type") == device_health.READY for c in conditions):
            before = [*conditions, {"type": device_health.READY, "status": "True"}]  # older
        merged, moved = device_health.merge_conditions(
            before, [device_health.ready_condition("Offline", *why)],
            (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        patch["conditions"], transitions = merged, tuple(moved)
    if generation is not None and status.get("observedGeneration") != generation:
        patch["observedGeneration"] = generation
    if "modelCount" not in status:  # the gateway keeps it from the first session on
        patch["modelCount"] = 0
    identity = status.get("identity")
    if revoked and isinstance(identity, Mapping) and identity.get("state") == "Enrolled":
        patch["identity"] = {**identity, "state": "Revoked"}
    return DeviceStatusDue(patch, phase, transitions)


def devices_holding(model: str, devices: Iterable[DeviceView]) -> list[str]:
    """Devices that still report the model: a deletion waits for them to withdraw it."""
    return sorted(device.name for device in devices if device.holds(model))


# ---------------------------------------------------------------- desired state


@dataclass(frozen=True)
class Capture:
    """spec.dataCollection as a device gets it (the retention is the cloud's)."""

    sample_rate: float
    low_confidence_below: float
    include_outputs: bool
    max_bytes_per_device: int
    max_bytes_per_day: int

    @classmethod
    def of(cls, policy: DataCollection | None) -> Capture | None:
        if policy is None:
            return None
        return cls(policy.sample_rate, policy.low_confidence_below or 0.0,
                   policy.include_outputs, policy.max_bytes_per_device,
                   policy.max_bytes_per_day)


@dataclass(frozen=True)
class Assignment:
    """A model a device should serve."""

    name: str
    version: str
    digest: str
    size_bytes: int
    weight: int = 100  # percent of the model's unpinned requests
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_batch_size: int = 1
    max_delay_micros: int = 0
    variant: str = ""  # "": the source
    execution_providers: tuple[str, ...] = ()
    capture: Capture | None = None


def desired_assignments(namespace: str, device: str, labels: Mapping[str, str],
                        models: Iterable[ModelView],
                        capabilities: Capabilities | None = None) -> list[Assignment]:
    """What a device should serve: of every model whose selector matches its labels
    and that is not being deleted, the versions its rollout and A/B test assign to it
    (see rollout.assigned_versions), each as the variant the device fits (see
    variants.choose). A pure function of the fleet: nothing is stored per device."""
    assignments = []
    for model in models:
        # A spec with problems freezes its rollout (see plan_model_status): devices keep
        # what its status assigns them, so a bad edit never takes a model off the fleet.
        if model.deleting or not selector_matches(model.spec.selector, labels):
            continue
        for artifact, weight in rollout.assigned_versions(namespace, model.name, device,
                                                          model.status):
            choice = variants.choose(model.spec.variants, model.status.variants, artifact,
                                     labels, capabilities)
            runtime = (choice.variant.runtime if choice and choice.variant.runtime
                       else model.spec.runtime)
            batching = runtime.batching if runtime else None
            assignments.append(Assignment(
                name=model.name, version=artifact.version,
                digest=choice.digest if choice else artifact.digest,
                size_bytes=choice.size if choice else artifact.size_bytes, weight=weight,
                intra_op_threads=runtime.intra_op_threads if runtime else 0,
                inter_op_threads=runtime.inter_op_threads if runtime else 0,
                max_batch_size=batching.max_batch_size if batching else 1,
                max_delay_micros=batching.max_delay_micros if batching else 0,
                variant=choice.variant.name if choice else "",
                execution_providers=tuple(runtime.execution_providers) if runtime else (),
                capture=Capture.of(model.spec.data_collection),
            ))
    return sorted(assignments, key=lambda a: (a.name, a.version))


@dataclass(frozen=True)
class ModelPlacement:
    """What of one EdgeModel decides what devices serve of it (desired_assignments reads
    exactly this): while it is unchanged, no device's desired state can change because of
    the model, however often its counts and conditions move."""

    selector: LabelSelector
    deleting: bool
    runtime: RuntimeSettings | None
    stable: ArtifactStatus | None
    artifact: ArtifactStatus | None
    target: ArtifactStatus | None
    cohort_limit: str
    held_back: tuple[str, ...]
    rolled_back: bool
    experiment: tuple[ArtifactStatus, int] | None
    variants: tuple[Variant, ...]
    built: tuple[VariantStatus, ...]
    data_collection: DataCollection | None


def model_placement(model: ModelView) -> ModelPlacement:
    status, current = model.status, model.status.rollout
    return ModelPlacement(
        variants=tuple(model.spec.variants), built=tuple(status.variants),
        data_collection=model.spec.data_collection,
        selector=model.spec.selector, deleting=model.deleting, runtime=model.spec.runtime,
        stable=status.stable_artifact, artifact=status.artifact,
        target=current.target if current else None,
        cohort_limit=current.cohort_limit if current else "",
        held_back=tuple(current.held_back) if current else (),
        rolled_back=bool(current and current.state == "RolledBack"),
        experiment=((status.experiment.artifact, status.experiment.weight)
                    if status.experiment else None))


def devices_to_wake(namespace: str, before: ModelView | None, after: ModelView | None,
                    devices: Iterable[DeviceView]) -> list[str]:
    """The devices whose desired state a model's change moves (a canary step: those that
    crossed the cohort's edge); none while its placement is unchanged."""
    if before and after and model_placement(before) == model_placement(after):
        return []
    old, new = [before] if before else [], [after] if after else []
    return [device.name for device in devices
            if desired_assignments(namespace, device.name, device.labels, old,
                                   device.capabilities)
            != desired_assignments(namespace, device.name, device.labels, new,
                                   device.capabilities)]


def models_to_wake(label_sets: Iterable[Mapping[str, str]],
                   models: Iterable[ModelView]) -> list[str]:
    """The models whose status a device's change may move: those whose selector matches
    its labels before or after the change."""
    sets = list(label_sets)
    return [model.name for model in models
            if any(selector_matches(model.spec.selector, labels) for labels in sets)]


def without_figures(status: EdgeModelStatus) -> EdgeModelStatus:
    """The status less the figures that move with every device report (counts, summaries,
    messages, traffic figures): two statuses equal here differ in no decision."""
    experiment, current = status.experiment, status.rollout
    analysis = current.analysis if current else None
    return status.model_copy(update={
        "devices": DeviceCounts(), "ready_summary": "", "updated_summary": "", "inference": [],
        "data": None,
        "conditions": [c.model_copy(update={"message": ""}) for c in status.conditions],
        "experiment": (experiment.model_copy(update={"ready": 0, "control": None,
                                                     "candidate": None})
                       if experiment else None),
        "rollout": (current.model_copy(update={"analysis": (
            AnalysisStatus(verdict=analysis.verdict, requests=0, error_rate=0)
            if analysis else None)}) if current else None),
    })


def revision(assignments: Iterable[Assignment]) -> str:
    """A name for the content of a desired state: equal content, equal revision."""
    canonical = json.dumps([dataclasses.astuple(a) for a in assignments], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
