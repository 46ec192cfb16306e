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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edgefleet.operator.resources import (
    ArtifactStatus,
    Condition,
    ConditionStatus,
    DeviceCounts,
    DevicePhase,
    EdgeModelSpec,
    EdgeModelStatus,
    LabelSelector,
    ModelPhase,
)

READY = "Ready"
ARTIFACT_READY = "ArtifactReady"
MAX_MESSAGE = 2048  # Condition.message's bound in the CRD


@dataclass(frozen=True)
class ArtifactCheck:
    """Whether the model's artifact is fetched and verified, and if not, why."""

    ready: bool
    reason: str
    message: str = ""
    digest: str = ""
    size: int = 0


@dataclass(frozen=True)
class ReportedModel:
    """What a device says it holds of one model."""

    version: str
    state: str
    message: str = ""


@dataclass(frozen=True)
class DeviceView:
    """One EdgeDevice as the fleet index keeps it: only what planning needs."""

    name: str
    labels: Mapping[str, str]
    models: Mapping[str, ReportedModel] = field(default_factory=dict)
    phase: DevicePhase = "Pending"
    last_seen: datetime | None = None


# ---------------------------------------------------------------- selectors


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics: every term must hold."""
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    for term in selector.match_expressions:
        present = term.key in labels
        if term.operator == "In" and not (present and labels[term.key] in term.values):
            return False
        if term.operator == "NotIn" and present and labels[term.key] in term.values:
            return False
        if term.operator == "Exists" and not present:
            return False
        if term.operator == "DoesNotExist" and present:
            return False
    return True


def selector_conflict(selector: LabelSelector) -> str | None:
    """Why no set of labels can ever satisfy the selector, or None if some can."""
    allowed: dict[str, set[str]] = {}  # key -> the only values it may take
    excluded: dict[str, set[str]] = {}
    must_exist: set[str] = set()
    must_not_exist: set[str] = set()
    for key, value in selector.match_labels.items():
        allowed[key] = {value}
    for term in selector.match_expressions:
        if term.operator == "In":
            allowed[term.key] = allowed.get(term.key, set(term.values)) & set(term.values)
        elif term.operator == "NotIn":
            excluded.setdefault(term.key, set()).update(term.values)
        elif term.operator == "Exists":
            must_exist.add(term.key)
        else:
            must_not_exist.add(term.key)
    for key in sorted(must_not_exist):
        if key in must_exist or key in allowed:
            return f"label {key!r} is required to exist and to be absent at once"
    for key, values in sorted(allowed.items()):
        if not values - excluded.get(key, set()):
            return f"no value of label {key!r} satisfies every term of the selector"
    return None


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
    if spec.rollout.max_unavailable in (0, "0%") and spec.rollout.strategy == "AllAtOnce":
        problems.append("spec.rollout.maxUnavailable: 0 lets no device switch, "
                        "so an AllAtOnce rollout could never progress")
    return problems


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


def count_devices(model: str, version: str, targeted: Iterable[DeviceView]) -> DeviceCounts:
    targeted = list(targeted)
    reports = [device.models.get(model) for device in targeted]
    on_version = [r for r in reports if r is not None and r.version == version]
    return DeviceCounts(
        targeted=len(targeted),
        updated=sum(1 for r in on_version if r.state != "Failed"),
        ready=sum(1 for r in on_version if r.state == "Ready"),
        failed=sum(1 for r in on_version if r.state == "Failed"),
    )


def model_phase(problems: list[str], counts: DeviceCounts, artifact_ready: bool) -> ModelPhase:
    if problems:
        return "Failed"
    if not artifact_ready:
        return "Pending"
    if counts.failed:
        return "Degraded"
    if counts.targeted and counts.ready == counts.targeted:
        return "Healthy"
    if counts.ready == 0:
        return "Pending"
    return "Progressing"


def _ready_condition(
    problems: list[str], counts: DeviceCounts, failed_devices: list[str],
    artifact: ArtifactCheck,
) -> tuple[ConditionStatus, str, str]:
    if problems:
        return "False", "InvalidSpec", "; ".join(problems)
    if not artifact.ready:
        return "False", "ArtifactNotReady", f"nothing is sent to devices: {artifact.message}"
    if counts.targeted == 0:
        return "False", "NoTargetedDevices", "the selector matches no EdgeDevice in the namespace"
    if counts.failed:
        return "False", "DevicesFailed", (
            f"{counts.failed} of {counts.targeted} devices failed: {'; '.join(failed_devices)}")
    if counts.ready == counts.targeted:
        return "True", "AllDevicesReady", f"all {counts.targeted} targeted devices are ready"
    return "False", "DevicesNotReady", f"{counts.ready} of {counts.targeted} devices are ready"


def plan_model_status(
    *,
    name: str,
    generation: int | None,
    spec: EdgeModelSpec,
    devices: Iterable[DeviceView],
    artifact: ArtifactCheck,
    previous: EdgeModelStatus,
    now: datetime,
) -> EdgeModelStatus:
    """The EdgeModel status the operator should write, given the fleet as seen now."""
    problems = spec_problems(spec)
    targeted = [] if problems else targeted_devices(spec.selector, devices)
    counts = count_devices(name, spec.version, targeted)
    failed_devices = sorted(
        f"{device.name} ({report.message})" if report.message else device.name
        for device in targeted
        if (report := device.models.get(name)) and report.version == spec.version
        and report.state == "Failed"
    )
    status, reason, message = _ready_condition(problems, counts, failed_devices, artifact)
    phase = model_phase(problems, counts, artifact.ready)
    conditions = set_condition(previous.conditions, type_=READY, status=status, reason=reason,
                               message=message, now=now, generation=generation)
    conditions = set_condition(conditions, type_=ARTIFACT_READY,
                               status="True" if artifact.ready else "False",
                               reason=artifact.reason, message=artifact.message, now=now,
                               generation=generation)
    return EdgeModelStatus(
        phase=phase,
        observed_generation=generation,
        stable_version=spec.version if phase == "Healthy" else previous.stable_version,
        devices=counts,
        ready_summary=f"{counts.ready}/{counts.targeted}",
        artifact=(ArtifactStatus(version=spec.version, digest=artifact.digest,
                                 size_bytes=artifact.size)
                  if artifact.ready else previous.artifact),
        conditions=conditions,
    )


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


def device_phase(last_seen: datetime | None, now: datetime, grace: timedelta) -> DevicePhase:
    """Pending until the device first connects; then Online while heartbeats are fresh."""
    if last_seen is None:
        return "Pending"
    return "Online" if now - last_seen <= grace else "Offline"


def seconds_until_phase_change(
    last_seen: datetime | None, now: datetime, grace: timedelta
) -> float | None:
    """When an Online device turns Offline if nothing is heard; None if nothing is due."""
    if last_seen is None:
        return None
    remaining = (last_seen + grace - now).total_seconds()
    return remaining if remaining >= 0 else None


def devices_holding(model: str, devices: Iterable[DeviceView]) -> list[str]:
    """Devices that still report the model: a deletion waits for them to withdraw it."""
    return sorted(device.name for device in devices if model in device.models)


# ---------------------------------------------------------------- desired state


@dataclass(frozen=True)
class ModelView:
    """One EdgeModel as the fleet index keeps it: only what assignment needs."""

    name: str
    spec: EdgeModelSpec
    # The newest verified artifact (status.artifact); None until one is verified.
    artifact: ArtifactStatus | None = None
    deleting: bool = False


@dataclass(frozen=True)
class Assignment:
    """A model a device should serve."""

    name: str
    version: str
    digest: str
    size_bytes: int
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    max_batch_size: int = 1
    max_delay_micros: int = 0


def desired_assignments(labels: Mapping[str, str],
                        models: Iterable[ModelView]) -> list[Assignment]:
    """What a device with these labels should serve: every model whose selector matches,
    that has a verified artifact, is not being deleted and whose spec can be acted on.
    A new version's artifact replaces the old one only once it is verified. A pure
    function of the fleet: nothing is stored per device."""
    assignments = []
    for model in models:
        artifact = model.artifact
        if (artifact is None or model.deleting or spec_problems(model.spec)
                or not selector_matches(model.spec.selector, labels)):
            continue
        runtime = model.spec.runtime
        batching = runtime.batching if runtime else None
        assignments.append(Assignment(
            name=model.name, version=artifact.version, digest=artifact.digest,
            size_bytes=artifact.size_bytes,
            intra_op_threads=runtime.intra_op_threads if runtime else 0,
            inter_op_threads=runtime.inter_op_threads if runtime else 0,
            max_batch_size=batching.max_batch_size if batching else 1,
            max_delay_micros=batching.max_delay_micros if batching else 0,
        ))
    return sorted(assignments, key=lambda a: a.name)


def revision(assignments: Iterable[Assignment]) -> str:
    """A name for the content of a desired state: equal content, equal revision."""
    canonical = json.dumps([dataclasses.astuple(a) for a in assignments], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
