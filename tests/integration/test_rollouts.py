"""Staged rollouts end to end: a real control plane, the operator and `edgefleet-edge run`
processes. Six devices serve version 1 (y = x); each test rolls out version 2
(y = 2x, or a broken one) and watches the devices move."""

from __future__ import annotations

import hashlib
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import testmodels
import tritonclient.grpc as triton_grpc

from tests.conftest import Fleet, StartPrometheus
from tests.helpers import Traffic, eventually, printed_row
from tests.integration.test_edge_cloud_link import answer, edge_model, publish, reported
from tests.integration.test_operator import status_of, wait_status

pytestmark = pytest.mark.integration

DEVICES = [f"cam-{i}" for i in range(6)]


def ranked(namespace: str) -> list[str]:
    """The documented cohort order: devices by sha256 of namespace/model/device."""
    return sorted(DEVICES, key=lambda device: hashlib.sha256(
        f"{namespace}/digits/{device}".encode()).hexdigest())


def serving_version_1(fleet: Fleet) -> None:
    for name in DEVICES:
        fleet.add_device(name, site="plant-7")
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(fleet.start, DEVICES))
    uri, sha = publish(fleet.root, testmodels.scaled(1.0))
    fleet.kube.create("edgemodels", fleet.namespace,
                      edge_model("digits", "1", uri, sha, site="plant-7"))
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                {"phase": "Healthy", "stableVersion": "1", "readySummary": "6/6"}, timeout=90)


def roll_out(fleet: Fleet, model: bytes, rollout: dict[str, Any]) -> None:
    uri, sha = publish(fleet.root, model)
    fleet.kube.patch("edgemodels", fleet.namespace, "digits", {"spec": {
        "version": "2", "source": {"uri": uri, "sha256": sha}, "rollout": rollout}})


def held(fleet: Fleet, device: str) -> set[tuple[str, str]]:
    """What the device reports it holds of the model: (version, state) of each version
    (two while it switches, or during an A/B test)."""
    return {(m["version"], m["state"]) for m in reported(fleet.kube, fleet.namespace, device)}


def versions(fleet: Fleet) -> dict[str, set[tuple[str, str]]]:
    return {name: held(fleet, name) for name in DEVICES}


def on_version_2(fleet: Fleet) -> list[str]:
    return sorted(n for n, holding in versions(fleet).items() if ("2", "Ready") in holding)


def all_on(fleet: Fleet, version: str) -> bool:
    return all(holding == {(version, "Ready")} for holding in versions(fleet).values())


def approve(fleet: Fleet, step: int) -> None:
    """The command the AwaitingApproval message and the README give."""
    fleet.kube.kubectl("annotate", "edgemodel", "digits", "-n", fleet.namespace,
                       f"edgefleet.io/approved-step=2/{step}", "--overwrite")


def rollout_status(fleet: Fleet) -> dict[str, Any]:
    return dict(status_of(fleet.kube, "edgemodels", fleet.namespace, "digits").get("rollout")
                or {})


def progressing(fleet: Fleet) -> dict[str, Any]:
    status = status_of(fleet.kube, "edgemodels", fleet.namespace, "digits")
    (condition,) = [c for c in status.get("conditions", []) if c["type"] == "Progressing"]
    return dict(condition)


def reasons(fleet: Fleet) -> list[str]:
    return [event.reason for event in fleet.kube.events(fleet.namespace, "digits")]


ANALYSIS = {"minRequests": 30, "maxErrorRate": 0.1, "maxP99LatencyMs": 25, "maxDrift": 0.2}


def test_a_good_version_passes_a_three_step_canary_in_ranked_cohorts(
    fleet: Fleet, prometheus: StartPrometheus,
) -> None:
    serving_version_1(fleet)
    server = prometheus([f"127.0.0.1:{fleet.operator.metrics_port}"])
    steps = [{"percent": 20, "manualApproval": True}, {"percent": 50, "manualApproval": True},
             {"percent": 100}]
    roll_out(fleet, testmodels.scaled(2.0), {"strategy": "Canary", "steps": steps,
                                             "maxUnavailable": "100%"})
    order = ranked(fleet.namespace)
    for step, percent in ((1, 20), (2, 50)):
        cohort = sorted(order[:math.ceil(percent * len(DEVICES) / 100)])
        eventually(lambda c=cohort: on_version_2(fleet) == c, timeout=60,
                   what=f"step {step}: {cohort} on version 2 (now {versions(fleet)})")
        wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                    {"phase": "Progressing", "stepSummary": f"{step}/3"})
        printed = printed_row(fleet.kube.kubectl("get", "em", "digits", "-n",
                                                 fleet.namespace).stdout)
        assert (printed["STEP"], printed["UPDATED"]) == (f"{step}/3", f"{len(cohort)}/6")
        for name in DEVICES:  # the cohort answers with version 2, the rest with 1
            assert answer(fleet.edges[name], "digits") == (2.0 if name in cohort else 1.0)
        gauges = {'edgefleet_operator_rollout_step{model="digits"}': step,
                  'edgefleet_operator_model_devices{model="digits",version="2",state="Ready"}':
                      len(cohort)}
        for promql, expected in gauges.items():
            eventually(lambda q=promql, e=expected: server.value(q) == e, timeout=30,
                       what=f"{promql} == {expected} (now {server.value(promql)})")
        time.sleep(2)  # a gate holds: nothing moves until it is approved
        assert on_version_2(fleet) == cohort
        approve(fleet, step)

    status = wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                         {"phase": "Healthy", "stableVersion": "2", "readySummary": "6/6"},
                         timeout=60)
    assert on_version_2(fleet) == sorted(DEVICES)
    assert [(h["version"], h["outcome"]) for h in status["history"]] == [
        ("1", "Promoted"), ("2", "Promoted")]
    told = {"RolloutStarted", "AwaitingApproval", "StepStarted", "Promoted"}
    eventually(lambda: told <= set(reasons(fleet)), what=f"Events {told}")


def test_a_version_that_fails_on_devices_is_rolled_back_at_the_first_step(
    fleet: Fleet,
) -> None:
    serving_version_1(fleet)
    broken = b"not an onnx model"  # verifies (its sha256 is right) but cannot load
    roll_out(fleet, broken, {"strategy": "Canary", "maxUnavailable": "100%",
                             "steps": [{"percent": 34}, {"percent": 100}]})
    status = wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                         {"phase": "RolledBack"}, timeout=60)
    (progressing,) = [c for c in status["conditions"] if c["type"] == "Progressing"]
    assert progressing["reason"] == "RolledBack" and "step 1/2" in progressing["message"]
    assert "rolled back to 1" in progressing["message"]
    assert status["history"][-1]["outcome"] == "RolledBack"
    eventually(lambda: "RolledBack" in reasons(fleet), what="a RolledBack Event")
    # Every device ends on the stable version and answers with it.
    eventually(lambda: all_on(fleet, "1"), timeout=60,
               what=f"every device back on version 1 (now {versions(fleet)})")
    for name in DEVICES:
        assert answer(fleet.edges[name], "digits") == 1.0


def test_paused_holds_the_rollout_and_unpausing_completes_it(fleet: Fleet) -> None:
    serving_version_1(fleet)
    roll_out(fleet, testmodels.scaled(2.0), {"strategy": "Canary", "paused": True,
                                             "steps": [{"percent": 50}, {"percent": 100}]})
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits", {"phase": "Paused"})
    time.sleep(3)
    assert on_version_2(fleet) == []
    fleet.kube.patch("edgemodels", fleet.namespace, "digits",
                     {"spec": {"rollout": {"paused": False}}})
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                {"phase": "Healthy", "stableVersion": "2"}, timeout=90)
    assert on_version_2(fleet) == sorted(DEVICES)


def test_a_restarted_operator_resumes_at_the_same_step_with_the_same_cohort(
    fleet: Fleet,
) -> None:
    serving_version_1(fleet)
    roll_out(fleet, testmodels.scaled(2.0), {
        "strategy": "Canary", "maxUnavailable": "100%",
        "steps": [{"percent": 50, "manualApproval": True}, {"percent": 100}]})
    cohort = sorted(ranked(fleet.namespace)[:3])
    eventually(lambda: on_version_2(fleet) == cohort, timeout=60,
               what=f"{cohort} on version 2 (now {versions(fleet)})")
    eventually(lambda: progressing(fleet)["reason"] == "AwaitingApproval", timeout=30,
               what="step 1 to wait for approval")
    before = rollout_status(fleet)
    assert before["step"] == 1 and before["stepReadyAt"]

    fleet.restart_operator()
    eventually(lambda: all(fleet.kube.get("edgedevices", fleet.namespace, n)["status"]
                           .get("phase") == "Online" for n in DEVICES),
               timeout=60, what="devices reconnected")
    time.sleep(3)  # the new operator has reconciled everything by now
    assert rollout_status(fleet) == before
    assert on_version_2(fleet) == cohort

    approve(fleet, 1)
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                {"phase": "Healthy", "stableVersion": "2"}, timeout=60)


def test_max_unavailable_is_never_exceeded(fleet: Fleet) -> None:
    serving_version_1(fleet)
    roll_out(fleet, testmodels.scaled(2.0), {"strategy": "AllAtOnce", "maxUnavailable": 1})
    most_switching, samples = 0, 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        holding = versions(fleet)
        switching = [n for n, versions_held in holding.items()
                     if any(v == "2" and state != "Ready" for v, state in versions_held)]
        most_switching, samples = max(most_switching, len(switching)), samples + 1
        if all(versions_held == {("2", "Ready")} for versions_held in holding.values()):
            break
        time.sleep(0.05)
    print(f"\nmaxUnavailable 1: at most {most_switching} devices switching in {samples} samples")
    assert on_version_2(fleet) == sorted(DEVICES), versions(fleet)
    assert samples > 10 and most_switching <= 1
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                {"phase": "Healthy", "stableVersion": "2"}, timeout=30)


def test_a_good_version_is_promoted_once_each_step_saw_its_requests(fleet: Fleet) -> None:
    serving_version_1(fleet)
    with Traffic([fleet.edges[n].grpc_url for n in DEVICES]) as traffic:
        roll_out(fleet, testmodels.scaled(2.0), {
            "strategy": "Canary", "maxUnavailable": "100%", "analysis": ANALYSIS,
            "steps": [{"percent": 34}, {"percent": 100}]})
        waiting = eventually(lambda: (rollout_status(fleet).get("analysis") or {}).get(
            "verdict") == "Wait" and rollout_status(fleet), timeout=60,
            what="the first step to wait for requests")
        assert waiting["step"] == 1 and "of the 30 requests" in waiting["analysis"]["message"]
        status = wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                             {"phase": "Healthy", "stableVersion": "2"}, timeout=120)
    assert traffic.failed == 0 and traffic.answered > 60
    assert status["history"][-1]["outcome"] == "Promoted"
    assert on_version_2(fleet) == sorted(DEVICES)


def breaches(message: str) -> list[str]:
    """The gates an analysis message names as breached ("error rate and drift above ...")."""
    found = re.search(r"failed: (.+?) above the threshold", message)
    assert found, message
    return found.group(1).split(" and ")


@pytest.mark.parametrize(("bad", "breach", "threshold"), [
    ("erring", "error rate", "(max 0.1)"),
    ("slow", "p99 latency", "(max 25.0 ms)"),
])
def test_canary_rolls_back_a_version_that_answers_worse_at_the_first_step(
    fleet: Fleet, bad: str, breach: str, threshold: str,
) -> None:
    serving_version_1(fleet)
    model = testmodels.flaky_scaled(2.0) if bad == "erring" else testmodels.slow_scaled(2.0)
    with Traffic([fleet.edges[n].grpc_url for n in DEVICES]):
        roll_out(fleet, model, {"strategy": "Canary", "maxUnavailable": "100%",
                                "analysis": ANALYSIS,
                                "steps": [{"percent": 34}, {"percent": 100}]})
        status = wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                             {"phase": "RolledBack"}, timeout=120)
    (progressing,) = [c for c in status["conditions"] if c["type"] == "Progressing"]
    message = progressing["message"]
    print(f"\n{bad} version: {message}")
    # A version that fails half its requests may also shift the class shares past the
    # drift gate; the breach under test must be among those named, not the only one.
    assert "step 1/2" in message and breach in breaches(message) and threshold in message
    assert "rolled back to 1" in message
    assert status["rollout"]["analysis"]["verdict"] == "Fail"
    assert status["rollout"]["analysis"]["requests"] >= ANALYSIS["minRequests"]
    (event,) = eventually(lambda: [e for e in fleet.kube.events(fleet.namespace, "digits")
                                   if e.reason == "RolledBack"], what="a RolledBack Event")
    assert breach in breaches(event.message) and threshold in event.message
    eventually(lambda: all_on(fleet, "1"), timeout=60,
               what=f"every device back on version 1 (now {versions(fleet)})")
    for name in DEVICES:
        assert answer(fleet.edges[name], "digits") == 1.0


def test_an_ab_split_follows_its_weights_and_pinned_requests_hit_their_version(
    fleet: Fleet,
) -> None:
    serving_version_1(fleet)
    uri, sha = publish(fleet.root, testmodels.scaled(2.0))
    fleet.kube.patch("edgemodels", fleet.namespace, "digits", {"spec": {"experiment": {
        "version": "2", "source": {"uri": uri, "sha256": sha}, "weight": 20}}})
    eventually(lambda: (status_of(fleet.kube, "edgemodels", fleet.namespace, "digits")
                        .get("experiment") or {}).get("ready") == len(DEVICES), timeout=90,
               what="every device serving both versions")
    assert all(held(fleet, name) == {("1", "Ready"), ("2", "Ready")} for name in DEVICES)

    clients = [triton_grpc.InferenceServerClient(fleet.edges[n].grpc_url) for n in DEVICES]
    item = triton_grpc.InferInput("x", [1, 4], "FP32")
    item.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    served = {"1": 0, "2": 0}
    for i in range(2000):
        result = clients[i % len(clients)].infer("digits", [item])
        version = result.get_response().model_version
        served[version] += 1
        assert result.as_numpy("y")[0, 0] == float(version)  # the answer matches the label
    share = served["2"] / 2000
    print(f"\nA/B 80/20 over 2000 unpinned requests: {share:.1%} to version 2")
    assert abs(share - 0.20) <= 0.04
    for version in ("1", "2"):  # pinned requests always hit their version
        for client in clients:
            for _ in range(20):
                result = client.infer("digits", [item], model_version=version)
                assert result.get_response().model_version == version
    assert 'version="2"' in fleet.edges[DEVICES[0]].metrics()  # metrics split by version
    experiment = eventually(
        lambda: (status_of(fleet.kube, "edgemodels", fleet.namespace, "digits")["experiment"]
                 if status_of(fleet.kube, "edgemodels", fleet.namespace, "digits")
                 .get("experiment", {}).get("candidate", {}).get("requests", 0) >= 400
                 else None), timeout=30, what="the experiment's traffic in status")
    # Counted as the analysis counts: no device for more than the median device.
    control_served = served["1"] + 20 * len(DEVICES)
    assert 0.8 * control_served <= experiment["control"]["requests"] <= control_served
    assert experiment["candidate"]["errorRate"] == 0

    # Ending the test without promoting it: the devices drop version 2.
    fleet.kube.patch("edgemodels", fleet.namespace, "digits", {"spec": {"experiment": None}})
    eventually(lambda: all(held(fleet, n) == {("1", "Ready")} for n in DEVICES), timeout=60,
               what="version 2 withdrawn from every device")
    assert answer(fleet.edges[DEVICES[0]], "digits") == 1.0


def test_an_offline_device_holds_a_step_only_until_the_timeout(fleet: Fleet) -> None:
    serving_version_1(fleet)
    first = ranked(fleet.namespace)[0]  # in the cohort of every step
    fleet.edges[first].process.kill()
    wait_status(fleet.kube, "edgedevices", fleet.namespace, first, {"phase": "Offline"},
                timeout=60)
    roll_out(fleet, testmodels.scaled(2.0), {
        "strategy": "Canary", "maxUnavailable": "100%", "offlineTimeoutSeconds": 5,
        "steps": [{"percent": 50}, {"percent": 100}]})
    status = wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                         {"stableVersion": "2"}, timeout=90)
    assert status["devices"]["updated"] == len(DEVICES) - 1
    skipped = eventually(lambda: [e for e in fleet.kube.events(fleet.namespace, "digits")
                                  if e.reason == "DevicesSkipped"], what="a DevicesSkipped Event")
    assert first in skipped[0].message and "offline for more than 5s" in skipped[0].message
    # Back online, it takes the version that is stable now.
    fleet.start(first)
    eventually(lambda: held(fleet, first) == {("2", "Ready")}, timeout=60,
               what=f"{first} on version 2 after coming back")
