"""Staged rollouts, decided purely from a model's spec, its last status, the devices it
targets and the clock.

A rollout moves the targeted devices from the stable version to the spec's, step by
step. Which devices go first is fixed by a rank key per device (a hash of the model's
identity and the device's name), so restarts and re-evaluations never reshuffle
cohorts. The status stores only the highest key in the cohort (`cohortLimit`); what
each device serves follows from it (`assigned_artifact`), so a step costs one status
write however many devices it moves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edgefleet.operator import analysis
from edgefleet.operator.analysis import TrafficStats
from edgefleet.operator.resources import (
    APPROVAL_ANNOTATION,
    MAX_HELD_BACK,
    AnalysisStatus,
    ArtifactStatus,
    ConditionStatus,
    EdgeModelSpec,
    EdgeModelStatus,
    HistoryEntry,
    HistoryOutcome,
    Rollout,
    RolloutStatus,
    RolloutStep,
)
from edgefleet.operator.views import DeviceView

PROGRESSING = "Progressing"  # the condition type, as Deployments name it
HISTORY_LENGTH = 10
RANK_KEY_LENGTH = 16


@dataclass(frozen=True)
class RolloutEvent:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutDecision:
    stable: ArtifactStatus | None
    rollout: RolloutStatus | None
    history: list[HistoryEntry]
    # The Progressing condition: status, reason, message.
    progressing: tuple[ConditionStatus, str, str]
    events: list[RolloutEvent] = field(default_factory=list)
    # When the decision may change with no change in the fleet (a pause or an offline
    # timeout ends); None when only a change can move it.
    recheck_after_s: float | None = None


# ---------------------------------------------------------------- cohorts


def rank_key(namespace: str, model: str, device: str) -> str:
    return hashlib.sha256(f"{namespace}/{model}/{device}".encode()).hexdigest()[:RANK_KEY_LENGTH]


def in_cohort(key: str, limit: str) -> bool:
    return bool(limit) and key <= limit


def assigned_artifact(namespace: str, model: str, device: str,
                      status: EdgeModelStatus) -> ArtifactStatus | None:
    """What the device should serve of the model: the rollout's target inside its
    cohort, the stable version elsewhere. Before any version was ever stable (the
    first deployment), the newest verified artifact, everywhere."""
    stable = status.stable_artifact
    if stable is None:
        return status.artifact
    rollout = status.rollout
    if (rollout and rollout.state != "RolledBack"
            and in_cohort(rank_key(namespace, model, device), rollout.cohort_limit)
            and device not in rollout.held_back):
        return rollout.target
    return stable


def assigned_versions(namespace: str, model: str, device: str,
                      status: EdgeModelStatus) -> list[tuple[ArtifactStatus, int]]:
    """Every version the device should serve of the model, with its percent of the
    unpinned requests: the assigned artifact alone, or, during an A/B test (which runs
    only while every device serves the stable version), the stable version and the
    experiment's."""
    primary = assigned_artifact(namespace, model, device, status)
    if primary is None:
        return []
    experiment = status.experiment
    if experiment and primary == status.stable_artifact:
        return [(primary, 100 - experiment.weight), (experiment.artifact, experiment.weight)]
    return [(primary, 100)]


# ---------------------------------------------------------------- spec helpers


def effective_steps(rollout: Rollout) -> list[RolloutStep]:
    """AllAtOnce is one step to 100%; a Canary whose last step stops short of 100% ends
    with an implied 100% step."""
    if rollout.strategy == "AllAtOnce":
        return [RolloutStep(percent=100)]
    steps = list(rollout.steps)
    if steps[-1].percent < 100:
        steps.append(RolloutStep(percent=100))
    return steps


def max_unavailable(value: int | str, targeted: int) -> int:
    """maxUnavailable as a device count: a percent rounds down but allows at least one."""
    if isinstance(value, int):
        return value
    percent = int(value.rstrip("%"))
    return max(1, targeted * percent // 100) if percent else 0


def approved_step(annotations: Mapping[str, str], version: str) -> int:
    """The step the user approved for the rollout to `version`: the annotation's value
    is VERSION/STEP, so that an approval never carries over to a later rollout. 0 when
    none, or for another version, or unreadable (the AwaitingApproval message shows the
    command to write)."""
    approved_version, _, step = annotations.get(APPROVAL_ANNOTATION, "").rpartition("/")
    if approved_version != version or not step.isdigit():
        return 0
    return int(step)


def spec_digest(spec: EdgeModelSpec) -> str:
    return f"sha256:{spec.source.sha256.lower()}"


def _history(history: list[HistoryEntry], artifact: ArtifactStatus, outcome: HistoryOutcome,
             now: datetime, message: str = "") -> list[HistoryEntry]:
    entry = HistoryEntry(version=artifact.version, digest=artifact.digest, outcome=outcome,
                         at=now, message=message)
    return [*history, entry][-HISTORY_LENGTH:]


# ---------------------------------------------------------------- deciding


def decide(*, namespace: str, name: str, spec: EdgeModelSpec, targeted: list[DeviceView],
           verified: ArtifactStatus | None, previous: EdgeModelStatus, approved: int,
           now: datetime) -> RolloutDecision:
    """The rollout's next state. `verified` is the spec's artifact once verified."""
    stable, history = previous.stable_artifact, list(previous.history)
    if stable is None:
        return _first_deployment(name, targeted, verified, previous, now)
    current = previous.rollout
    if (spec.version, spec_digest(spec)) == (stable.version, stable.digest):
        events = []
        if current and current.state == "Progressing":  # the spec went back mid-rollout
            history = _history(history, current.target, "Superseded", now,
                               f"spec returned to {stable.version} at step {current.step}")
            events.append(RolloutEvent("Normal", "RolloutStopped", (
                f"the spec returned to stable version {stable.version}; the rollout of "
                f"{current.target.version} stopped at step {current.step}/{current.steps}")))
        return RolloutDecision(stable, None, history, (
            "True", "RolloutComplete", f"devices serve stable version {stable.version}"),
            events)
    if verified is None:
        waiting = current if current and current.target.version == spec.version else None
        if current and current.state == "Progressing" and waiting is None:
            history = _history(history, current.target, "Superseded", now,
                               f"replaced by {spec.version} at step {current.step}")
        return RolloutDecision(stable, waiting, history, (
            "True", "WaitingForArtifact",
            f"version {spec.version}'s artifact is not verified yet; devices keep serving "
            f"{stable.version}"))
    events: list[RolloutEvent] = []
    steps = effective_steps(spec.rollout)
    if current is None or (current.target.version, current.target.digest) != (
            verified.version, verified.digest):
        if current and current.state == "Progressing":
            history = _history(history, current.target, "Superseded", now,
                               f"replaced by {verified.version} at step {current.step}")
        current = RolloutStatus(target=verified, step=1, steps=len(steps),
                                step_started_at=now, started_at=now)
        events.append(RolloutEvent("Normal", "RolloutStarted", (
            f"rolling out {verified.version} to replace {stable.version} in {len(steps)} "
            f"steps: {', '.join(f'{s.percent}%' for s in steps)}")))
    if current.state == "RolledBack":
        return RolloutDecision(stable, current, history, ("False", "RolledBack", current.message),
                               events)
    if current.state == "Halted":
        return RolloutDecision(stable, current, history, ("False", "Halted", current.message),
                               events)
    if spec.rollout.paused:
        return RolloutDecision(stable, current, history, (
            "Unknown", "Paused",
            f"paused at step {current.step}/{current.steps}; set spec.rollout.paused to "
            "false to continue"), events)
    return _progress(namespace, name, spec, steps, targeted, stable, current, history,
                     events, approved, now)


def _first_deployment(name: str, targeted: list[DeviceView], verified: ArtifactStatus | None,
                      previous: EdgeModelStatus, now: datetime) -> RolloutDecision:
    """Nothing serves yet, so nothing needs protecting: every device gets the newest
    verified artifact at once, and it becomes stable when all of them serve it."""
    artifact = verified or previous.artifact
    if artifact is None:
        return RolloutDecision(None, None, [], ("True", "WaitingForArtifact",
                                                "no version's artifact is verified yet"))
    ready = [d for d in targeted if _ready_on(d, name, artifact)]
    if targeted and len(ready) == len(targeted):
        return RolloutDecision(
            artifact, None, _history(list(previous.history), artifact, "Promoted", now),
            ("True", "RolloutComplete", f"devices serve stable version {artifact.version}"),
            [RolloutEvent("Normal", "Promoted",
                          f"version {artifact.version} is stable: all {len(targeted)} "
                          "targeted devices serve it")])
    return RolloutDecision(None, None, list(previous.history), (
        "True", "FirstDeployment",
        f"{len(ready)} of {len(targeted)} devices serve {artifact.version}"))


def _ready_on(device: DeviceView, model: str, artifact: ArtifactStatus) -> bool:
    return device.state_of(model, artifact.version) == "Ready"


def _failed_on(device: DeviceView, model: str, artifact: ArtifactStatus) -> bool:
    return device.state_of(model, artifact.version) == "Failed"


def _progress(namespace: str, name: str, spec: EdgeModelSpec, steps: list[RolloutStep],
              targeted: list[DeviceView], stable: ArtifactStatus, current: RolloutStatus,
              history: list[HistoryEntry], events: list[RolloutEvent], approved: int,
              now: datetime) -> RolloutDecision:
    """Moves the cohort forward within maxUnavailable, and through the step's gates."""
    target = current.target
    keys = {device.name: rank_key(namespace, name, device.name) for device in targeted}
    ranked = sorted(targeted, key=lambda device: keys[device.name])
    budget = max_unavailable(spec.rollout.max_unavailable, len(ranked))
    timeout_s = spec.rollout.offline_timeout_seconds
    # The steps may have been edited mid-rollout: keep the step number within them.
    current = current.model_copy(update={"steps": len(steps),
                                         "step": min(current.step, len(steps))})

    for _ in range(len(steps)):  # a step whose gates are open hands over at once
        step = steps[current.step - 1]
        where = f"step {current.step}/{current.steps}"
        goal = math.ceil(step.percent * len(ranked) / 100)
        cohort = [d for d in ranked if in_cohort(keys[d.name], current.cohort_limit)]
        failed = [d for d in cohort if _failed_on(d, name, target)]
        if failed:
            reports = [f"{d.name} ({message})"
                       if (message := d.models[(name, target.version)].message) else d.name
                       for d in failed]
            return _breach(spec, stable, current, history, events, now, (
                f"{where}: {len(failed)} devices failed on {target.version}: "
                f"{'; '.join(reports)}"))
        verdict = _judge(spec, name, stable, current, ranked, cohort)
        if verdict:
            current = current.model_copy(update={"analysis": AnalysisStatus(
                verdict=verdict.outcome, requests=verdict.requests,
                error_rate=verdict.error_rate, p99_latency_ms=verdict.p99_latency_ms,
                drift=verdict.drift, labelled=verdict.labelled, accuracy=verdict.accuracy,
                stable_accuracy=verdict.stable_accuracy, message=verdict.message)})
            if verdict.outcome == "Fail":
                return _breach(spec, stable, current, history, events, now, (
                    f"{where}: the analysis of {target.version} failed: {verdict.message}"))
        away_s = {d.name: _away_for(d, current.started_at, now) for d in ranked}
        skipped = [d for d in cohort
                   if not _ready_on(d, name, target) and away_s[d.name] > timeout_s]
        held = _held_back(cohort, name, target, skipped)
        switching = [d for d in cohort if not _ready_on(d, name, target)
                     and d not in skipped and d not in held]
        room = min(budget - len(switching), goal - len(cohort))
        if room > 0:
            added = [d for d in ranked if not in_cohort(keys[d.name], current.cohort_limit)]
            added = added[:room]
            current = current.model_copy(update={"cohort_limit": keys[added[-1].name]})
            cohort += added
            held = _held_back(cohort, name, target, skipped)
            switching += [d for d in added if d not in held]
        current, told = _hold_back(current, held, where, stable)
        events.extend(told)
        if held and not any(_ready_on(d, name, target) for d in cohort):
            # A step that no device has run proves nothing: it waits for one.
            return RolloutDecision(stable, current, history, (
                "True", "StepInProgress",
                f"{where}: every device of the step is held back under pressure "
                f"({_names(held)}); waiting for one to serve {target.version}"), events)
        if len(cohort) < goal or switching:
            # Wake when an offline device's timeout runs out (it may have just begun).
            waits = [timeout_s - away_s[d.name] for d in switching if d.phase != "Online"]
            ready = len(cohort) - len(switching) - len(skipped) - len(held)
            return RolloutDecision(stable, current, history, (
                "True", "StepInProgress",
                f"{where}: {ready} of {goal} devices serve {target.version}"
                + (f"; waiting for {_names(switching)}" if len(switching) <= 5 else "")),
                events, min(waits) if waits else None)

        if current.step_ready_at is None:
            current = current.model_copy(update={"step_ready_at": now})
            if skipped:
                events.append(RolloutEvent("Warning", "DevicesSkipped", (
                    f"{where} goes on without {len(skipped)} devices offline for more than "
                    f"{timeout_s}s: {_names(skipped)}")))
        assert current.step_ready_at is not None
        if step.pause_seconds:
            resume_at = current.step_ready_at + timedelta(seconds=step.pause_seconds)
            remaining = (resume_at - now).total_seconds()
            if remaining > 0:  # a time, not a countdown: the status stays put meanwhile
                return RolloutDecision(stable, current, history, (
                    "True", "PauseInProgress",
                    f"{where} is ready; the next step starts at {resume_at:%H:%M:%S}Z"),
                    events, remaining)
        if verdict and verdict.outcome == "Wait":
            return RolloutDecision(stable, current, history, (
                "True", "AnalysisInProgress", f"{where} is ready; {verdict.message}"), events)
        if step.manual_approval and approved < current.step:
            events.append(RolloutEvent("Normal", "AwaitingApproval",
                                       f"{where} is ready and waits for approval"))
            return RolloutDecision(stable, current, history, (
                "True", "AwaitingApproval",
                f"{where} is ready; approve it with: kubectl annotate edgemodel {name} "
                f"-n {namespace} {APPROVAL_ANNOTATION}={target.version}/{current.step} "
                "--overwrite"), events)

        if current.step == len(steps):
            return RolloutDecision(
                target, None, _history(history, target, "Promoted", now),
                ("True", "RolloutComplete", f"devices serve stable version {target.version}"),
                [*events, RolloutEvent("Normal", "Promoted", (
                    f"version {target.version} is stable, replacing {stable.version}"))])
        current = current.model_copy(update={
            "step": current.step + 1, "step_started_at": now, "step_ready_at": None,
            "step_start_requests": verdict.requests if verdict else 0,
            "step_start_labelled": verdict.labelled if verdict else 0})
        next_step = steps[current.step - 1]
        events.append(RolloutEvent("Normal", "StepStarted", (
            f"step {current.step}/{current.steps}: {next_step.percent}% of devices "
            f"({math.ceil(next_step.percent * len(ranked) / 100)} of {len(ranked)}) "
            f"to {target.version}")))
    raise AssertionError("unreachable: the last step promotes or waits")


def _held_back(cohort: list[DeviceView], name: str, target: ArtifactStatus,
               skipped: list[DeviceView]) -> list[DeviceView]:
    """Devices of the cohort under pressure that have not begun to take the target: kept
    on the stable version, and not waited for (at most MAX_HELD_BACK). One already on its
    way goes on: sending it back would undo the download that caused the pressure."""
    return [d for d in cohort if d.pressure and d.state_of(name, target.version) is None
            and d not in skipped][:MAX_HELD_BACK]


def _hold_back(current: RolloutStatus, held: list[DeviceView], where: str,
               stable: ArtifactStatus) -> tuple[RolloutStatus, list[RolloutEvent]]:
    """The rollout status holding `held` back, and an Event naming those newly held."""
    names = sorted(d.name for d in held)
    if names == current.held_back:
        return current, []
    new = [d for d in held if d.name not in current.held_back]
    events = [RolloutEvent("Warning", "DevicesHeldBack", (
        f"{where} holds back {len(new)} devices under pressure on {stable.version} until it "
        f"clears: " + ", ".join(f"{d.name} ({','.join(d.pressure)})" for d in new[:10])
        + (f" and {len(new) - 10} more" if len(new) > 10 else "")))] if new else []
    return current.model_copy(update={"held_back": names}), events


def _away_for(device: DeviceView, rollout_started: datetime, now: datetime) -> float:
    """Seconds a device has been away during this rollout; 0 while it is online."""
    if device.phase == "Online":
        return 0.0
    since = max(device.last_seen or rollout_started, rollout_started)
    return (now - since).total_seconds()


def _judge(spec: EdgeModelSpec, name: str, stable: ArtifactStatus, current: RolloutStatus,
           ranked: list[DeviceView], cohort: list[DeviceView]) -> analysis.Verdict | None:
    """The analysis of the target's traffic on the cohort against the stable version's
    on the whole fleet; None when the spec asks for none. A step waits for minRequests
    requests of its own; error rate, latency and drift cover all the target's traffic."""
    thresholds = spec.rollout.analysis
    if thresholds is None:
        return None
    candidate = analysis.cohort(d.traffic.get((name, current.target.version), TrafficStats())
                                for d in cohort)
    baseline = analysis.cohort(d.traffic.get((name, stable.version), TrafficStats())
                               for d in ranked)
    verdict = analysis.analyze(thresholds, candidate, baseline)
    step_requests = max(0, verdict.requests - current.step_start_requests)
    if verdict.outcome == "Pass" and step_requests < thresholds.min_requests:
        return dataclasses.replace(verdict, outcome="Wait", message=(
            f"{step_requests} of the {thresholds.min_requests} requests this step needs; "
            f"so far {verdict.message}"))
    step_labelled = max(0, verdict.labelled - current.step_start_labelled)
    if (verdict.outcome == "Pass" and step_labelled < thresholds.min_labelled
            and (thresholds.min_accuracy is not None
                 or thresholds.max_accuracy_drop is not None)):
        return dataclasses.replace(verdict, outcome="Wait", message=(
            f"{step_labelled} of the {thresholds.min_labelled} labelled answers this step "
            f"needs; so far {verdict.message}"))
    return verdict


def _breach(spec: EdgeModelSpec, stable: ArtifactStatus, current: RolloutStatus,
            history: list[HistoryEntry], events: list[RolloutEvent], now: datetime,
            cause: str) -> RolloutDecision:
    if spec.rollout.auto_rollback:
        message = f"{cause}; rolled back to {stable.version}"
        current = current.model_copy(update={"state": "RolledBack", "message": message})
        return RolloutDecision(stable, current,
                               _history(history, current.target, "RolledBack", now, cause),
                               ("False", "RolledBack", message),
                               [*events, RolloutEvent("Warning", "RolledBack", message)])
    message = (f"{cause}; halted where it stands (autoRollback is off): set spec.version "
               f"back to {stable.version} or to a fixed version")
    current = current.model_copy(update={"state": "Halted", "message": message})
    return RolloutDecision(stable, current, history, ("False", "Halted", message),
                           [*events, RolloutEvent("Warning", "Halted", message)])


def _names(devices: list[DeviceView]) -> str:
    shown = ", ".join(d.name for d in devices[:10])
    return shown + (f" and {len(devices) - 10} more" if len(devices) > 10 else "")
