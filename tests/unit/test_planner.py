"""Pure planning: selectors, spec semantics, status and phases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edgefleet.operator import planner, selectors
from edgefleet.operator.resources import (
    ArtifactStatus,
    EdgeModelSpec,
    EdgeModelStatus,
    LabelSelector,
)
from edgefleet.operator.views import ArtifactCheck, DeviceView, ModelView, ReportedModel

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
VERIFIED = ArtifactCheck(True, "Verified", "fetched and verified",
                                 digest="sha256:" + "a" * 64, size=1234)


def plan(**kwargs: Any) -> EdgeModelStatus:
    return planner.plan_model_status(namespace="fleet", approved_step=0, **kwargs).status


def selector(**raw: Any) -> LabelSelector:
    return LabelSelector.model_validate(raw)


def spec(**overrides: Any) -> EdgeModelSpec:
    raw = {"version": "2.0", "source": {"uri": "file:///m.onnx", "sha256": "a" * 64},
           "selector": {"matchLabels": {"site": "plant-7"}}}
    return EdgeModelSpec.model_validate(raw | overrides)


def device(name: str, labels: dict[str, str] | None = None,
           **models: tuple[str, str]) -> DeviceView:
    return DeviceView(
        name=name, labels={"site": "plant-7"} if labels is None else labels,
        models={(model, version): ReportedModel(version, state)
                for model, (version, state) in models.items()},
    )


@pytest.mark.parametrize(("raw", "labels", "expected"), [
    ({}, {}, True),
    ({"matchLabels": {"site": "a"}}, {"site": "a", "x": "y"}, True),
    ({"matchLabels": {"site": "a"}}, {"site": "b"}, False),
    ({"matchExpressions": [{"key": "site", "operator": "In", "values": ["a", "b"]}]},
     {"site": "b"}, True),
    ({"matchExpressions": [{"key": "site", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "site", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "site", "operator": "NotIn", "values": ["a"]}]},
     {"site": "a"}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": ""}, False),
])
def test_selector_matches_like_kubernetes(raw: dict[str, Any], labels: dict[str, str],
                                          expected: bool) -> None:
    assert selectors.selector_matches(selector(**raw), labels) is expected


@pytest.mark.parametrize("raw", [
    {"matchLabels": {"site": "a"},
     "matchExpressions": [{"key": "site", "operator": "NotIn", "values": ["a"]}]},
    {"matchLabels": {"site": "a"},
     "matchExpressions": [{"key": "site", "operator": "In", "values": ["b"]}]},
    {"matchExpressions": [{"key": "site", "operator": "In", "values": ["a"]},
                          {"key": "site", "operator": "In", "values": ["b"]}]},
    {"matchExpressions": [{"key": "gpu", "operator": "Exists"},
                          {"key": "gpu", "operator": "DoesNotExist"}]},
    {"matchLabels": {"gpu": "yes"},
     "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]},
])
def test_selector_that_can_never_match_is_named(raw: dict[str, Any]) -> None:
    assert selectors.selector_conflict(selector(**raw)) is not None


@pytest.mark.parametrize("raw", [
    {},
    {"matchLabels": {"site": "a"},
     "matchExpressions": [{"key": "site", "operator": "In", "values": ["a", "b"]},
                          {"key": "site", "operator": "NotIn", "values": ["b"]},
                          {"key": "gpu", "operator": "DoesNotExist"}]},
])
def test_satisfiable_selector_has_no_conflict(raw: dict[str, Any]) -> None:
    assert selectors.selector_conflict(selector(**raw)) is None


def test_spec_problems_name_the_field() -> None:
    decreasing = spec(rollout={"strategy": "Canary", "steps": [{"percent": 50},
                                                               {"percent": 10}]})
    assert planner.spec_problems(decreasing)[0].startswith("spec.rollout.steps")
    frozen = spec(rollout={"strategy": "AllAtOnce", "maxUnavailable": 0})
    assert planner.spec_problems(frozen)[0].startswith("spec.rollout.maxUnavailable")
    assert planner.spec_problems(spec()) == []


def test_counts_only_targeted_devices_on_the_spec_version() -> None:
    devices = [
        device("ready", digits=("2.0", "Ready")),
        device("loading", digits=("2.0", "Loading")),
        device("old", digits=("1.0", "Ready")),
        device("failed", digits=("2.0", "Failed")),
        device("elsewhere", {"site": "plant-9"}, digits=("2.0", "Ready")),
    ]
    status = plan(name="digits", generation=3, spec=spec(),
                                       devices=devices, artifact=VERIFIED,
                                       previous=EdgeModelStatus(), now=NOW)
    assert status.devices.model_dump() == {"targeted": 4, "updated": 2, "ready": 1, "failed": 1,
                                           "offline": 0}
    assert status.ready_summary == "1/4"
    assert status.phase == "Degraded"
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.type, ready.status, ready.reason) == ("Ready", "False", "DevicesFailed")
    assert "failed" in ready.message and ready.observed_generation == 3


@pytest.mark.parametrize(("states", "phase", "reason"), [
    ([], "Pending", "NoTargetedDevices"),
    (["Loading", "Loading"], "Pending", "DevicesNotReady"),
    (["Ready", "Loading"], "Progressing", "DevicesNotReady"),
    (["Ready", "Ready"], "Healthy", "AllDevicesReady"),
])
def test_phase_follows_device_readiness(states: list[str], phase: str, reason: str) -> None:
    devices = [device(f"d{i}", digits=("2.0", state)) for i, state in enumerate(states)]
    status = plan(name="digits", generation=1, spec=spec(),
                                       devices=devices, artifact=VERIFIED,
                                       previous=EdgeModelStatus(), now=NOW)
    assert (status.phase, status.conditions[0].reason) == (phase, reason)


def test_first_deployment_becomes_stable_once_every_device_serves_it() -> None:
    pending = plan(name="digits", generation=1, spec=spec(), devices=[], artifact=VERIFIED,
                   previous=EdgeModelStatus(), now=NOW)
    assert pending.stable_version is None and pending.stable_artifact is None
    healthy = plan(name="digits", generation=1, spec=spec(),
                   devices=[device("d", digits=("2.0", "Ready"))], artifact=VERIFIED,
                   previous=pending, now=NOW)
    assert healthy.stable_version == "2.0" and healthy.phase == "Healthy"
    assert [(h.version, h.outcome) for h in healthy.history] == [("2.0", "Promoted")]


def test_invalid_spec_fails_with_reason_and_targets_nothing() -> None:
    bad = spec(selector={"matchLabels": {"site": "a"}, "matchExpressions": [
        {"key": "site", "operator": "NotIn", "values": ["a"]}]})
    status = plan(name="digits", generation=2, spec=bad,
                                       devices=[device("d", {"site": "a"})], artifact=VERIFIED,
                                       previous=EdgeModelStatus(), now=NOW)
    assert status.phase == "Failed"
    assert status.devices.targeted == 0
    assert status.conditions[0].reason == "InvalidSpec"
    assert "spec.selector" in status.conditions[0].message


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    first = planner.set_condition([], type_="Ready", status="False", reason="A", message="",
                                  now=NOW)
    later = NOW + timedelta(minutes=5)
    same = planner.set_condition(first, type_="Ready", status="False", reason="B", message="m",
                                 now=later)
    assert same[0].last_transition_time == NOW and same[0].reason == "B"
    flipped = planner.set_condition(same, type_="Ready", status="True", reason="C", message="",
                                    now=later)
    assert flipped[0].last_transition_time == later
    assert len(flipped) == 1


def test_device_phase_needs_a_session_its_gateway_keeps_alive() -> None:
    assert planner.device_phase(None, False) == "Pending"
    assert planner.device_phase(NOW - timedelta(hours=1), True) == "Online"
    # Its session ended, or its gateway is gone: however fresh lastSeen is.
    assert planner.device_phase(NOW, False) == "Offline"


@dataclass
class Gateways:
    """Gateway replicas as the controller knows them: alive since when, last renewal."""

    started: dict[str, datetime]
    renewed: dict[str, datetime]

    def alive(self, replica: str, session_since: datetime | None) -> bool:
        started = self.started.get(replica)
        return started is not None and (session_since is None or session_since >= started)

    def last_alive(self, replica: str) -> datetime | None:
        return self.renewed.get(replica)


def test_devices_holding_a_model_are_listed_for_withdrawal() -> None:
    devices = [device("b", digits=("1", "Removing")), device("a", digits=("1", "Ready")),
               device("c")]
    assert planner.devices_holding("digits", devices) == ["a", "b"]


def test_unparseable_spec_fails_keeping_what_status_had() -> None:
    previous = EdgeModelStatus(stable_version="1.0", ready_summary="3/3")
    status = planner.invalid_model_status(generation=4, problem="spec.version: bad",
                                          previous=previous, now=NOW)
    assert (status.phase, status.stable_version, status.ready_summary) == ("Failed", "1.0", "3/3")
    assert status.conditions[0].reason == "InvalidSpec"
    assert status.conditions[0].message == "spec.version: bad"


def test_no_artifact_means_pending_and_the_reason_is_in_both_conditions() -> None:
    missing = ArtifactCheck(False, "DigestMismatch", "sha256 of file:///m.onnx is b…")
    status = plan(
        name="digits", generation=1, spec=spec(), devices=[device("d", digits=("2.0", "Ready"))],
        artifact=missing, previous=EdgeModelStatus(), now=NOW)
    conditions = {c.type: c for c in status.conditions}
    assert status.phase == "Pending" and status.artifact is None
    assert conditions["ArtifactReady"].reason == "DigestMismatch"
    assert conditions["Ready"].reason == "ArtifactNotReady"
    verified = plan(name="digits", generation=1, spec=spec(), devices=[],
                                         artifact=VERIFIED, previous=status, now=NOW)
    assert verified.artifact is not None and verified.artifact.size_bytes == 1234
    assert verified.artifact.version == "2.0"


def test_devices_are_assigned_verified_matching_models_only() -> None:
    verified = ArtifactStatus(version="2.0", digest="sha256:" + "a" * 64, size_bytes=9)
    models = [
        ModelView(name="b", spec=spec(), status=EdgeModelStatus(artifact=verified)),
        ModelView(name="a", spec=spec(), status=EdgeModelStatus(artifact=verified)),
        ModelView(name="unverified", spec=spec()),
        ModelView(name="going", spec=spec(), deleting=True,
                  status=EdgeModelStatus(artifact=verified)),
        # A bad edit freezes the model where it is; it keeps being served.
        ModelView(name="frozen", spec=spec(rollout={"strategy": "Canary", "steps": [
            {"percent": 50}, {"percent": 10}]}), status=EdgeModelStatus(artifact=verified)),
        ModelView(name="elsewhere", spec=spec(selector={"matchLabels": {"site": "x"}}),
                  status=EdgeModelStatus(artifact=verified)),
    ]
    assigned = planner.desired_assignments("fleet", "d", {"site": "plant-7"}, models)
    assert [a.name for a in assigned] == ["a", "b", "frozen"]
    assert assigned[0].digest == "sha256:" + "a" * 64 and assigned[0].size_bytes == 9
    assert planner.revision(assigned) == planner.revision(list(assigned))
    assert planner.revision(assigned) != planner.revision(assigned[:1])


def test_a_new_version_is_assigned_only_once_its_artifact_is_verified() -> None:
    old = ArtifactStatus(version="1.0", digest="sha256:" + "b" * 64, size_bytes=5)
    upgrading = ModelView(name="digits", spec=spec(version="2.0"),
                          status=EdgeModelStatus(artifact=old))
    (assigned,) = planner.desired_assignments("fleet", "d", {"site": "plant-7"}, [upgrading])
    assert (assigned.version, assigned.digest) == ("1.0", old.digest)
    failing = ArtifactCheck(False, "Unreachable", "404")
    status = plan(
        name="digits", generation=2, spec=spec(version="2.0"), devices=[], artifact=failing,
        previous=EdgeModelStatus(artifact=old), now=NOW)
    assert status.artifact == old  # the verified one stays until a new one is verified
    verified = plan(name="digits", generation=2, spec=spec(version="2.0"), devices=[],
                    artifact=VERIFIED, previous=EdgeModelStatus(artifact=old), now=NOW)
    # Where it came from goes with it, for gateways that start after the spec moved on.
    assert verified.artifact and verified.artifact.source == spec().source


def test_long_condition_messages_are_cut_to_what_the_crd_allows() -> None:
    (condition,) = planner.set_condition([], type_="Ready", status="False", reason="Many",
                                         message="x" * 5000, now=NOW)
    assert len(condition.message) == planner.MAX_MESSAGE and condition.message.endswith("…")


def test_the_controller_writes_only_what_is_due_of_a_device() -> None:
    began = NOW - timedelta(hours=2)
    gateways = Gateways(started={"gateway-a": began}, renewed={"gateway-a": NOW})

    def due(approved: bool = True, revoked: bool = False,
            **status: object) -> planner.DeviceStatusDue:
        return planner.device_status_due(approved=approved, revoked=revoked, status=status,
                                         gateways=gateways, now=NOW)

    def not_ready(why: tuple[str, str]) -> list[dict[str, str]]:
        return [{"type": "Ready", "status": "False", "reason": why[0], "message": why[1],
                 "lastTransitionTime": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}]

    lost = not_ready(planner.GATEWAY_LOST)

    seen = (NOW - timedelta(minutes=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    since = (NOW - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    session = {"gateway": "gateway-a", "session": "0123abcd", "since": since}
    # Never seen: Pending, with a count for the printer column.
    assert due().patch == {"phase": "Pending", "modelCount": 0}
    # The gateway wrote Online, holds the session and renews its Lease: nothing to write,
    # however old lastSeen is.
    assert due(phase="Online", lastSeen=seen, connection=session, modelCount=1).patch == {}
    # A session the same replica name held in an earlier process: over, and when that
    # process was last alive is not known.
    earlier = {**session, "since": (began - timedelta(seconds=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")}
    assert due(phase="Online", lastSeen=seen, connection=earlier, modelCount=1).patch == {
        "phase": "Offline", "conditions": lost}
    # The gateway is gone (its Lease expired): Offline, last seen when it last renewed.
    gateways.started.clear()
    gone = due(phase="Online", lastSeen=seen, connection=session, modelCount=1)
    assert gone.patch == {"phase": "Offline", "lastSeen": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "conditions": lost}
    # Its Ready condition turned False: an Event says the device is offline.
    assert [(t.type, t.bad) for t in gone.transitions] == [("Ready", True)]
    # A time without a zone is UTC.
    assert due(phase="Online", lastSeen=seen.rstrip("Z"), connection=session,
               modelCount=1).patch == gone.patch
    assert gone.phase == "Offline"
    # Once written, nothing more; a gateway never known: Offline, lastSeen as it is.
    now_seen = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert due(phase="Offline", lastSeen=now_seen, connection=session, modelCount=1,
               conditions=lost).patch == {}
    assert due(phase="Online", lastSeen=seen, modelCount=1,
               connection={**session, "gateway": "gateway-z"}).patch == {
        "phase": "Offline", "conditions": lost}
    gateways.started["gateway-a"] = began
    # A session's end the gateway wrote is not undone while its gateway lives.
    ended = not_ready(("Disconnected", "its session with the fleet gateway ended"))
    assert due(phase="Offline", lastSeen=seen, modelCount=1, conditions=ended).patch == {}
    # An Offline device whose Ready condition says otherwise (written before conditions
    # were): set right, once.
    assert due(phase="Offline", lastSeen=seen, modelCount=1).patch == {
        "conditions": not_ready(planner.NO_SESSION)}
    # Waiting for approval: Pending whatever it reports.
    assert due(approved=False, phase="Online", lastSeen=seen, connection=session,
               modelCount=0).patch == {"phase": "Pending"}
    # Revoked: the certificate's state says so, once.
    identity = {"state": "Enrolled", "serial": "ab"}
    assert due(revoked=True, phase="Offline", lastSeen=seen, modelCount=0, conditions=ended,
               identity=identity).patch == {"identity": {"state": "Revoked", "serial": "ab"}}
    assert due(revoked=True, phase="Offline", lastSeen=seen, modelCount=0, conditions=ended,
               identity={"state": "Revoked"}).patch == {}
    # Status follows spec: the generation it was judged at.
    assert planner.device_status_due(
        approved=True, revoked=False, gateways=gateways, generation=3,
        status={"phase": "Pending", "modelCount": 0, "observedGeneration": 2},
    ).patch == {"observedGeneration": 3}
    # A malformed time is no time: the device was never seen.
    assert due(phase="Online", lastSeen="yesterday", connection=session,
               modelCount=1).patch == {"phase": "Pending"}


def test_a_gateway_serves_the_stable_version_from_its_recorded_source_after_the_spec_moved(
) -> None:
    stable_source = {"uri": "file:///v1.onnx", "sha256": "b" * 64}
    status = EdgeModelStatus.model_validate({
        "stableVersion": "1.0",
        "stableArtifact": {"version": "1.0", "digest": "sha256:" + "b" * 64,
                           "sizeBytes": 10, "source": stable_source},
        "artifact": {"version": "2.0", "digest": "sha256:" + "a" * 64, "sizeBytes": 10,
                     "source": {"uri": "file:///m.onnx", "sha256": "A" * 64}}})
    moved_on = spec()  # 2.0: the stable version's source is named by the status alone
    # A gateway replica: the spec's own source and the stable one, each digest once.
    replica = planner.sources_to_serve(moved_on, status, with_spec=True)
    assert {field: source.uri for field, source in replica.items()} == {
        "spec.source": "file:///m.onnx", "status.stableArtifact.source": "file:///v1.onnx"}
    # The gateway in the operator: the spec's source is the model loop's to check.
    inside = planner.sources_to_serve(moved_on, status, with_spec=False)
    assert list(inside) == ["status.stableArtifact.source"]
    # Status written before sources were recorded, or a spec that cannot be acted on.
    assert planner.sources_to_serve(moved_on, EdgeModelStatus(), with_spec=False) == {}
    assert planner.sources_to_serve(spec(rollout={"maxUnavailable": 0}), status,
                                    with_spec=True) == {}
