"""Rollout decisions over simulated fleets: cohorts, steps, gates, breaches."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.operator import planner, rollout
from edgefleet.operator.analysis import TrafficStats
from edgefleet.operator.resources import (
    ArtifactStatus,
    EdgeModelSpec,
    EdgeModelStatus,
    LabelSelector,
)
from edgefleet.operator.views import ArtifactCheck, DeviceView, ModelView, ReportedModel

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NAMESPACE, MODEL = "fleet", "digits"
OLD = ArtifactStatus(version="1.0", digest="sha256:" + "b" * 64, size_bytes=5)
NEW_SHA = "a" * 64
NEW = ArtifactCheck(True, "Verified", "verified", digest="sha256:" + NEW_SHA, size=7)
STABLE = EdgeModelStatus(stable_version="1.0", stable_artifact=OLD, artifact=OLD)
DEVICES = [f"cam-{i:02d}" for i in range(10)]


def spec(**rollout_fields: Any) -> EdgeModelSpec:
    return EdgeModelSpec.model_validate({
        "version": "2.0", "source": {"uri": "file:///m.onnx", "sha256": NEW_SHA},
        "selector": {}, "rollout": rollout_fields})


CANARY = {"strategy": "Canary", "maxUnavailable": "100%",
          "steps": [{"percent": 10}, {"percent": 50}, {"percent": 100}]}


def ranked(names: list[str] = DEVICES) -> list[str]:
    return sorted(names, key=lambda name: rollout.rank_key(NAMESPACE, MODEL, name))


def fleet(status: EdgeModelStatus, names: list[str] = DEVICES, *, state: str = "Ready",
          failing: frozenset[str] = frozenset(), away: frozenset[str] = frozenset(),
          stale: frozenset[str] = frozenset(),
          traffic: dict[str, TrafficStats] | None = None) -> list[DeviceView]:
    """Devices that report what the status assigns them (in `state`); `stale` ones
    still report the stable version, `failing` ones fail on the target, `away` ones
    are offline and report the stable version. Each reports `traffic[version]` for the
    version it holds."""
    views = []
    for name in names:
        assigned = rollout.assigned_artifact(NAMESPACE, MODEL, name, status)
        assert assigned is not None
        report = ReportedModel(assigned.version, state)
        if name in stale or name in away:
            report = ReportedModel(OLD.version, "Ready")
        elif name in failing and assigned.version == "2.0":
            report = ReportedModel("2.0", "Failed", "wrong output shape")
        served = (traffic or {}).get(report.version)
        views.append(DeviceView(name=name, labels={}, models={(MODEL, report.version): report},
                                phase="Offline" if name in away else "Online",
                                last_seen=NOW - timedelta(hours=1) if name in away else NOW,
                                traffic={(MODEL, report.version): served} if served else {}))
    return views


def reconcile(model_spec: EdgeModelSpec, previous: EdgeModelStatus, devices: list[DeviceView],
              now: datetime = NOW, approved: int = 0) -> planner.ModelPlan:
    return planner.plan_model_status(
        namespace=NAMESPACE, name=MODEL, generation=2, spec=model_spec, devices=devices,
        artifact=NEW, previous=previous, approved_step=approved, now=now)


def on_target(status: EdgeModelStatus, names: list[str] = DEVICES) -> list[str]:
    return [name for name in names
            if rollout.assigned_artifact(NAMESPACE, MODEL, name, status) != OLD]


def condition(status: EdgeModelStatus, type_: str) -> tuple[str, str, str]:
    found = next(c for c in status.conditions if c.type == type_)
    return found.status, found.reason, found.message


def test_a_good_version_passes_a_three_step_canary_in_rank_order() -> None:
    model_spec, status = spec(**CANARY), STABLE
    order, seen_steps, reasons = ranked(), [], []
    for _ in range(10):
        plan = reconcile(model_spec, status, fleet(status))
        status = plan.status
        reasons += [event.reason for event in plan.events]
        if status.rollout is None:
            break
        seen_steps.append(status.step_summary)
        # The cohort is always a prefix of the ranking, of the step's size.
        percent = CANARY["steps"][status.rollout.step - 1]["percent"]  # type: ignore[index]
        assert sorted(on_target(status)) == sorted(order[:math.ceil(percent * 10 / 100)])
    assert status.rollout is None and status.stable_version == "2.0"
    assert status.phase == "Healthy" and on_target(status) == DEVICES
    assert seen_steps[0] == "1/3" and "3/3" in seen_steps
    assert reasons[0] == "RolloutStarted" and reasons[-1] == "Promoted"
    assert reasons.count("StepStarted") == 2
    assert [(h.version, h.outcome) for h in status.history] == [("2.0", "Promoted")]


def test_reconciling_again_changes_nothing() -> None:
    """A restarted operator recomputes the same status from the same fleet."""
    first = reconcile(spec(**CANARY), STABLE, fleet(STABLE, stale=frozenset(DEVICES)))
    again = reconcile(spec(**CANARY), first.status, fleet(first.status,
                                                          stale=frozenset(DEVICES)))
    assert again.status == first.status and again.events == []
    assert first.status.step_summary == "1/3"


def test_devices_joining_never_reshuffle_the_cohort() -> None:
    status = reconcile(spec(**CANARY), STABLE, fleet(STABLE)).status
    cohort = on_target(status)
    more = [*DEVICES, *(f"late-{i}" for i in range(5))]
    assert [name for name in on_target(status, more) if name in DEVICES] == cohort


def test_max_unavailable_bounds_devices_switching_at_once() -> None:
    model_spec = spec(strategy="AllAtOnce", maxUnavailable=3)
    status, done = STABLE, frozenset[str]()
    for _ in range(10):
        switching = [n for n in on_target(status) if n not in done]
        assert len(switching) <= 3
        done |= set(switching[:2])  # two devices finish between reconciles
        devices = fleet(status, stale=frozenset(on_target(status)) - done)
        status = reconcile(model_spec, status, devices).status
        if status.rollout is None:
            break
    assert status.stable_version == "2.0"


def test_a_failed_device_rolls_the_fleet_back_and_says_why() -> None:
    status = reconcile(spec(**CANARY), STABLE, fleet(STABLE, state="Loading")).status
    (first,) = on_target(status)
    plan = reconcile(spec(**CANARY), status, fleet(status, failing=frozenset([first])))
    status = plan.status
    assert status.phase == "RolledBack" and on_target(status) == []
    assert status.stable_version == "1.0"
    _, reason, message = condition(status, "Progressing")
    assert reason == "RolledBack"
    assert first in message and "wrong output shape" in message and "1.0" in message
    assert [e.reason for e in plan.events] == ["RolledBack"]
    assert status.history[-1].outcome == "RolledBack"
    # It stays rolled back until the spec changes.
    assert reconcile(spec(**CANARY), status, fleet(status)).status.phase == "RolledBack"


def test_without_auto_rollback_a_breach_halts_where_it_stands() -> None:
    model_spec = spec(**CANARY, autoRollback=False)
    status = reconcile(model_spec, STABLE, fleet(STABLE, state="Loading")).status
    cohort = on_target(status)
    status = reconcile(model_spec, status, fleet(status, failing=frozenset(cohort))).status
    assert status.phase == "Paused" and on_target(status) == cohort
    assert condition(status, "Progressing")[1] == "Halted"


def test_a_pause_step_waits_its_seconds_and_asks_to_be_woken() -> None:
    model_spec = spec(strategy="Canary", steps=[{"percent": 10, "pauseSeconds": 60},
                                                {"percent": 100}])
    status = reconcile(model_spec, STABLE, fleet(STABLE)).status
    plan = reconcile(model_spec, status, fleet(status))
    assert condition(plan.status, "Progressing")[1] == "PauseInProgress"
    assert plan.recheck_after_s == 60
    later = reconcile(model_spec, plan.status, fleet(plan.status),
                      now=NOW + timedelta(seconds=61))
    assert later.status.rollout is not None and later.status.rollout.step == 2


def test_a_manual_gate_waits_for_the_annotation() -> None:
    model_spec = spec(strategy="Canary", steps=[{"percent": 10, "manualApproval": True},
                                                {"percent": 100}])
    status = reconcile(model_spec, STABLE, fleet(STABLE)).status
    status = reconcile(model_spec, status, fleet(status)).status
    _, reason, message = condition(status, "Progressing")
    assert reason == "AwaitingApproval"
    assert ("kubectl annotate edgemodel digits -n fleet edgefleet.io/approved-step=2.0/1 "
            "--overwrite") in message
    assert reconcile(model_spec, status, fleet(status), approved=0).status == status
    approved = reconcile(model_spec, status, fleet(status), approved=1).status
    assert approved.rollout is not None and approved.rollout.step == 2


def test_paused_freezes_the_cohort_and_unpausing_continues() -> None:
    status = reconcile(spec(**CANARY), STABLE, fleet(STABLE)).status
    cohort = on_target(status)
    paused = reconcile(spec(**CANARY, paused=True), status, fleet(status)).status
    assert paused.phase == "Paused" and on_target(paused) == cohort
    assert condition(paused, "Progressing")[:2] == ("Unknown", "Paused")
    resumed = reconcile(spec(**CANARY), paused, fleet(paused)).status
    assert len(on_target(resumed)) > len(cohort)


def test_offline_devices_hold_a_step_only_until_the_timeout() -> None:
    model_spec = spec(**CANARY, offlineTimeoutSeconds=120)
    (first,) = on_target(reconcile(model_spec, STABLE, fleet(STABLE)).status)
    away = frozenset([first])
    # Offline before the rollout began: its timeout starts with the rollout.
    starting = reconcile(model_spec, STABLE, fleet(STABLE, away=away))
    assert starting.recheck_after_s == 120
    status = starting.status
    plan = reconcile(model_spec, status, fleet(status, away=away),
                     now=NOW + timedelta(seconds=60))
    assert plan.status.rollout is not None and plan.status.rollout.step == 1
    assert plan.recheck_after_s == 60
    plan = reconcile(model_spec, plan.status, fleet(plan.status, away=away),
                     now=NOW + timedelta(seconds=121))
    assert plan.status.rollout is not None and plan.status.rollout.step == 2
    skipped = next(e for e in plan.events if e.reason == "DevicesSkipped")
    assert first in skipped.message and skipped.type == "Warning"


def test_returning_the_spec_to_the_stable_version_stops_the_rollout() -> None:
    status = reconcile(spec(**CANARY), STABLE, fleet(STABLE)).status
    back = EdgeModelSpec.model_validate({
        "version": "1.0", "source": {"uri": "file:///m.onnx", "sha256": "b" * 64},
        "selector": {}, "rollout": CANARY})
    plan = planner.plan_model_status(
        namespace=NAMESPACE, name=MODEL, generation=3, spec=back, devices=fleet(status),
        artifact=ArtifactCheck(True, "Verified", "", digest=OLD.digest, size=5),
        previous=status, approved_step=0, now=NOW)
    assert plan.status.rollout is None and on_target(plan.status) == []
    assert plan.status.history[-1].outcome == "Superseded"
    assert [e.reason for e in plan.events] == ["RolloutStopped"]


def test_percent_max_unavailable_rounds_down_but_lets_one_through() -> None:
    assert rollout.max_unavailable("25%", 10) == 2
    assert rollout.max_unavailable("10%", 3) == 1
    assert rollout.max_unavailable("0%", 10) == 0
    assert rollout.max_unavailable(4, 10) == 4


def test_a_canary_short_of_100_percent_ends_with_an_implied_full_step() -> None:
    steps = rollout.effective_steps(spec(strategy="Canary", steps=[{"percent": 20}]).rollout)
    assert [s.percent for s in steps] == [20, 100]


def test_an_approval_counts_only_for_the_version_it_names() -> None:
    annotation = "edgefleet.io/approved-step"
    assert rollout.approved_step({annotation: "2.0/2"}, "2.0") == 2
    assert rollout.approved_step({annotation: "2.0/2"}, "3.0") == 0  # a later rollout
    assert rollout.approved_step({annotation: "2"}, "2.0") == 0
    assert rollout.approved_step({annotation: "2.0/two"}, "2.0") == 0


BOUNDS = (0.001, 0.01, 0.1)
ANALYSED = {**CANARY, "analysis": {"minRequests": 100, "maxErrorRate": 0.05,
                                   "maxP99LatencyMs": 20, "maxDrift": 0.2}}


def served(requests: int, errors: int = 0, slow: bool = False) -> TrafficStats:
    """One device's statistics: fast (under 1 ms) or slow (10-100 ms) answers spread
    evenly over two classes."""
    latency = (0, 0, requests, 0) if slow else (requests, 0, 0, 0)
    return TrafficStats(requests, errors, BOUNDS, latency, (requests // 2, requests // 2))


def test_a_step_waits_for_its_own_minimum_requests_then_goes_on() -> None:
    status = reconcile(spec(**ANALYSED), STABLE, fleet(STABLE)).status
    quiet = {"1.0": served(500), "2.0": served(40)}
    status = reconcile(spec(**ANALYSED), status, fleet(status, traffic=quiet)).status
    _, reason, message = condition(status, "Progressing")
    assert reason == "AnalysisInProgress" and "40 of the 100 requests" in message
    assert status.rollout is not None and status.rollout.analysis is not None
    assert status.rollout.analysis.verdict == "Wait"
    busy = {"1.0": served(500), "2.0": served(120)}
    status = reconcile(spec(**ANALYSED), status, fleet(status, traffic=busy)).status
    assert status.rollout is not None and status.rollout.step == 2
    # Step 2 counts from 120: its five devices answering 24 each (120 in all) is not
    # enough; 48 each is.
    same = {"1.0": served(500), "2.0": served(24)}
    status = reconcile(spec(**ANALYSED), status, fleet(status, traffic=same)).status
    _, reason, message = condition(status, "Progressing")
    assert reason == "AnalysisInProgress" and "0 of the 100 requests this step" in message
    assert status.rollout is not None and status.rollout.step == 2
    more = {"1.0": served(500), "2.0": served(48)}
    status = reconcile(spec(**ANALYSED), status, fleet(status, traffic=more)).status
    assert status.rollout is not None and status.rollout.step == 3


def test_canary_rolls_back_when_its_error_rate_exceeds_the_threshold() -> None:
    status = reconcile(spec(**ANALYSED), STABLE, fleet(STABLE)).status
    erring = {"1.0": served(500), "2.0": served(80, errors=40)}
    plan = reconcile(spec(**ANALYSED), status, fleet(status, traffic=erring))
    assert plan.status.phase == "RolledBack" and on_target(plan.status) == []
    (event,) = plan.events
    assert event.reason == "RolledBack"
    assert "step 1/3" in event.message and "error rate 0.333 (max 0.05)" in event.message
    analysed = plan.status.rollout.analysis  # type: ignore[union-attr]
    assert analysed is not None and analysed.verdict == "Fail" and analysed.requests == 120


def test_canary_rolls_back_when_p99_exceeds_threshold() -> None:
    status = reconcile(spec(**ANALYSED), STABLE, fleet(STABLE)).status
    slow = {"1.0": served(500), "2.0": served(150, slow=True)}
    plan = reconcile(spec(**ANALYSED), status, fleet(status, traffic=slow))
    assert plan.status.phase == "RolledBack"
    _, reason, message = condition(plan.status, "Progressing")
    assert reason == "RolledBack" and "p99 latency above the threshold" in message
    assert "(max 20.0 ms)" in message


def test_canary_rolls_back_when_its_outputs_drift() -> None:
    status = reconcile(spec(**ANALYSED), STABLE, fleet(STABLE)).status
    drifted = TrafficStats(150, 0, BOUNDS, (150, 0, 0, 0), (145, 5))
    plan = reconcile(spec(**ANALYSED), status,
                     fleet(status, traffic={"1.0": served(500), "2.0": drifted}))
    assert plan.status.phase == "RolledBack"
    assert "drift PSI" in condition(plan.status, "Progressing")[2]


EXPERIMENT = {"version": "1.1", "source": {"uri": "file:///b.onnx", "sha256": "c" * 64},
              "weight": 20}
TRIAL = ArtifactCheck(True, "Verified", "verified", digest="sha256:" + "c" * 64, size=3)


def stable_spec(**fields: Any) -> EdgeModelSpec:
    return EdgeModelSpec.model_validate({
        "version": "1.0", "source": {"uri": "file:///m.onnx", "sha256": "b" * 64},
        "selector": {}, **fields})


def with_experiment(model_spec: EdgeModelSpec, previous: EdgeModelStatus,
                    devices: list[DeviceView]) -> planner.ModelPlan:
    return planner.plan_model_status(
        namespace=NAMESPACE, name=MODEL, generation=2, spec=model_spec, devices=devices,
        artifact=ArtifactCheck(True, "Verified", "", digest=OLD.digest, size=5),
        previous=previous, approved_step=0, now=NOW, experiment=TRIAL)


def test_an_ab_test_sends_both_versions_to_every_device_with_their_weights() -> None:
    model_spec = stable_spec(experiment=EXPERIMENT)
    status = with_experiment(model_spec, STABLE, fleet(STABLE)).status
    assert status.experiment is not None and status.experiment.weight == 20
    assert condition(status, "Experiment")[:2] == ("True", "Running")
    views = [planner.ModelView(name=MODEL, spec=model_spec, status=status)]
    assigned = planner.desired_assignments(NAMESPACE, "cam-00", {}, views)
    assert [(a.version, a.weight) for a in assigned] == [("1.0", 80), ("1.1", 20)]
    # Ending the test (spec.experiment removed) leaves the stable version alone.
    ended = reconcile(stable_spec(), status, fleet(status)).status
    assert ended.experiment is None
    assert all(c.type != "Experiment" for c in ended.conditions)
    (only,) = planner.desired_assignments(
        NAMESPACE, "cam-00", {}, [planner.ModelView(name=MODEL, spec=stable_spec(),
                                                    status=ended)])
    assert (only.version, only.weight) == ("1.0", 100)


def test_an_ab_test_waits_while_a_rollout_moves_devices() -> None:
    model_spec = spec(**CANARY).model_copy(update={
        "experiment": stable_spec(experiment=EXPERIMENT).experiment})
    plan = planner.plan_model_status(
        namespace=NAMESPACE, name=MODEL, generation=2, spec=model_spec,
        devices=fleet(STABLE), artifact=NEW, previous=STABLE, approved_step=0, now=NOW,
        experiment=TRIAL)
    assert plan.status.experiment is None
    assert condition(plan.status, "Experiment")[1] == "WaitingForStableVersion"


def test_an_experiment_of_the_same_version_is_refused_naming_the_field() -> None:
    same = stable_spec(experiment={**EXPERIMENT, "version": "1.0"})
    assert planner.spec_problems(same)[0].startswith("spec.experiment.version")


# ---------------------------------------------------------------- wake-ups


def view(model_spec: EdgeModelSpec, status: EdgeModelStatus) -> ModelView:
    return ModelView(name=MODEL, spec=model_spec, status=status)


def assignments(model_spec: EdgeModelSpec, status: EdgeModelStatus,
                name: str) -> list[planner.Assignment]:
    view = ModelView(name=MODEL, spec=model_spec, status=status)
    return planner.desired_assignments(NAMESPACE, name, {}, [view])


def test_each_canary_step_wakes_exactly_the_devices_it_moves() -> None:
    model_spec, status = spec(**CANARY), STABLE
    woken_in_all = 0
    for _ in range(10):
        plan = reconcile(model_spec, status, fleet(status))
        woken = planner.devices_to_wake(NAMESPACE, view(model_spec, status),
                                        view(model_spec, plan.status), fleet(status))
        moved = [name for name in DEVICES if assignments(model_spec, status, name)
                 != assignments(model_spec, plan.status, name)]
        assert sorted(woken) == sorted(moved), plan.status.step_summary
        woken_in_all += len(woken)
        status = plan.status
        if status.rollout is None:
            break
    # Every device moved once to the new version; the promotion moves none again.
    assert woken_in_all == len(DEVICES)


def test_counts_moving_wake_no_device_and_are_figures_only() -> None:
    model_spec = spec(**CANARY)
    started = reconcile(model_spec, STABLE, fleet(STABLE)).status
    loading = reconcile(model_spec, started, fleet(started, state="Loading")).status
    ready = reconcile(model_spec, loading, fleet(loading)).status
    assert loading.devices != started.devices
    assert planner.devices_to_wake(NAMESPACE, view(model_spec, started),
                                   view(model_spec, loading), fleet(started)) == []
    assert planner.without_figures(loading) == planner.without_figures(started)
    # The step's devices all ready is a decision: written at once.
    assert planner.without_figures(ready) != planner.without_figures(loading)


def test_a_selector_change_wakes_the_devices_of_the_old_and_the_new_selector() -> None:
    def selecting(site: str) -> ModelView:
        return view(spec(**CANARY).model_copy(update={"selector": LabelSelector.model_validate(
            {"matchLabels": {"site": site}})}), STABLE)

    devices = [DeviceView(name=f"cam-{site}", labels={"site": site}) for site in "abc"]
    old, new = selecting("a"), selecting("b")
    assert planner.devices_to_wake(NAMESPACE, old, new, devices) == ["cam-a", "cam-b"]
    assert planner.devices_to_wake(NAMESPACE, old, None, devices) == ["cam-a"]
    assert planner.devices_to_wake(NAMESPACE, old, old, devices) == []


def test_a_device_report_wakes_only_the_models_that_select_it() -> None:
    def model(name: str, site: str) -> ModelView:
        return ModelView(name=name, spec=spec(**CANARY).model_copy(update={
            "selector": LabelSelector.model_validate({"matchLabels": {"site": site}})}))

    models = [model("digits", "a"), model("faces", "b"), model("plates", "c")]
    assert planner.models_to_wake([{"site": "a"}], models) == ["digits"]
    # Relabelled from a to b: both the model it leaves and the one it joins recount.
    assert planner.models_to_wake([{"site": "a"}, {"site": "b"}], models) == ["digits", "faces"]


def under_pressure(devices: list[DeviceView], names: set[str]) -> list[DeviceView]:
    return [dataclasses.replace(d, pressure=("DiskPressure",)) if d.name in names else d
            for d in devices]


def test_a_device_under_pressure_is_held_back_on_the_stable_version_until_it_clears() -> None:
    model_spec = spec(strategy="Canary", maxUnavailable="100%",
                      steps=[{"percent": 50}, {"percent": 100}])
    first = ranked()[0]
    plan = reconcile(model_spec, STABLE, under_pressure(fleet(STABLE), {first}))
    assert plan.status.rollout is not None and plan.status.rollout.held_back == [first]
    assert rollout.assigned_artifact(NAMESPACE, MODEL, first, plan.status) == OLD
    (held,) = [e for e in plan.events if e.reason == "DevicesHeldBack"]
    assert f"{first} (DiskPressure)" in held.message and held.type == "Warning"
    # Not waited for: the step's other devices take it to the next step; told once.
    again = reconcile(model_spec, plan.status, under_pressure(fleet(plan.status), {first}))
    assert again.status.rollout is not None and again.status.rollout.step == 2
    assert again.status.rollout.held_back == [first]
    assert not [e for e in again.events if e.reason == "DevicesHeldBack"]
    # The pressure clears: it joins the cohort it belongs to.
    cleared = reconcile(model_spec, again.status, fleet(again.status))
    assert cleared.status.rollout is not None and cleared.status.rollout.held_back == []
    assert rollout.assigned_artifact(NAMESPACE, MODEL, first, cleared.status) != OLD
    # Its gateway is told: the release moves that device alone.
    assert planner.devices_to_wake(NAMESPACE, view(model_spec, again.status),
                                   view(model_spec, cleared.status),
                                   fleet(again.status)) == [first]


def test_a_step_whose_every_device_is_held_back_waits_for_one() -> None:
    model_spec = spec(**CANARY)  # 10 %: one device
    first = ranked()[0]
    plan = reconcile(model_spec, STABLE, under_pressure(fleet(STABLE), {first}))
    plan = reconcile(model_spec, plan.status, under_pressure(fleet(plan.status), {first}))
    assert plan.status.rollout is not None and plan.status.rollout.step == 1
    assert "every device of the step is held back" in condition(plan.status, "Progressing")[2]


def test_a_device_already_taking_the_target_is_not_held_back() -> None:
    model_spec = spec(**CANARY)
    first = ranked()[0]
    status = reconcile(model_spec, STABLE, fleet(STABLE)).status  # first is on its way
    downloading = under_pressure(fleet(status, state="Downloading"), {first})
    plan = reconcile(model_spec, status, downloading)
    assert plan.status.rollout is not None and plan.status.rollout.held_back == []
    assert rollout.assigned_artifact(NAMESPACE, MODEL, first, plan.status) != OLD


def test_a_device_offline_past_the_timeout_no_longer_counts_as_ready() -> None:
    model_spec = spec(offlineTimeoutSeconds=300)
    status = STABLE
    for _ in range(20):  # to 2.0, a quarter of the devices at a time
        status = reconcile(model_spec, status, fleet(status)).status
        if status.rollout is None:
            break
    assert status.phase == "Healthy" and status.ready_summary == "10/10"
    gone = DEVICES[3]

    def seen(ago_s: float) -> list[DeviceView]:
        return [dataclasses.replace(d, phase="Offline", last_seen=NOW - timedelta(seconds=ago_s))
                if d.name == gone else d for d in fleet(status)]

    recent = reconcile(model_spec, status, seen(200))
    assert recent.status.ready_summary == "10/10" and recent.status.devices.offline == 1
    assert recent.recheck_after_s == 100  # when its timeout runs out
    lost = reconcile(model_spec, status, seen(400))
    assert lost.status.ready_summary == "9/10" and lost.status.phase == "Degraded"
    assert condition(lost.status, "Ready")[:2] == ("False", "DevicesOffline")
    assert f"1 have been offline for more than 300s: {gone}" in condition(lost.status,
                                                                           "Ready")[2]
