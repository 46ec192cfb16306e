"""The operator against the real API server: EdgeModel and EdgeDevice objects are
created, changed and deleted through the API, and the test watches the operator react.

Device reports (status.lastSeen, status.models) are written here the way the fleet
gateway writes them, through the status subresource."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import testmodels
from kubernetes.client.exceptions import ApiException

from edgefleet.operator import liveness
from tests.conftest import SHARED_ARTIFACTS, Kube, StartOperator
from tests.helpers import eventually, printed_row

pytestmark = pytest.mark.integration

# A real (tiny) ONNX model: the operator fetches and verifies it like any artifact.
ARTIFACT = testmodels.scaled(1.0)
SHA = hashlib.sha256(ARTIFACT).hexdigest()
ARTIFACT_PATH = SHARED_ARTIFACTS / f"{SHA}.onnx"  # a directory operators may read


@pytest.fixture(autouse=True, scope="module")
def artifact_file() -> None:
    ARTIFACT_PATH.parent.mkdir(exist_ok=True)
    ARTIFACT_PATH.write_bytes(ARTIFACT)


def device_body(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
        "metadata": {"name": name, "labels": labels},
        "spec": {"bootstrapTokenSecretRef": {"name": f"{name}-token"}},
    }


def model_body(name: str, version: str = "1.0.0", **selector: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeModel",
        "metadata": {"name": name},
        "spec": {
            "version": version,
            "source": {"uri": ARTIFACT_PATH.as_uri(), "sha256": SHA},
            "selector": selector or {"matchLabels": {"site": "plant-7"}},
        },
    }


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


GATEWAY = "gateway-0"  # the gateway replica report() writes as


def hold_gateway_lease(kube: Kube, namespace: str, replica: str, duration_s: int,
                       started: datetime | None = None) -> None:
    """The Lease a gateway replica holds (liveness.GatewayLease), written once: it stays
    alive for `duration_s` after the controller sees it, as the process that began at
    `started`."""
    body = liveness.lease_body(liveness.lease_name(replica), replica, duration_s,
                               started or datetime.now(UTC) - timedelta(hours=1),
                               datetime.now(UTC))
    try:
        kube.custom.create_namespaced_custom_object(*liveness.leases_at(namespace), body)
    except ApiException as error:
        if error.status != 409:
            raise
        kube.custom.patch_namespaced_custom_object(
            *liveness.leases_at(namespace), body["metadata"]["name"], body,
            _content_type=liveness.MERGE_PATCH)


@pytest.fixture(autouse=True)
def gateway_alive(kube: Kube, namespace: str) -> None:
    """Held for an hour before any operator starts: the sessions report() writes are
    alive from the controller's first look."""
    hold_gateway_lease(kube, namespace, GATEWAY, duration_s=3600)


def report(kube: Kube, namespace: str, device: str, *models: tuple[str, str, str],
           seen: datetime | None = None, gateway: str = GATEWAY,
           since: datetime | None = None) -> None:
    """Writes a device's report as the gateway holding its session would: Online,
    lastSeen, the session (begun at `since`) and held models."""
    kube.patch_status("edgedevices", namespace, device, {
        "phase": "Online", "lastSeen": timestamp(seen or datetime.now(UTC)),
        "connection": {"gateway": gateway, "session": "0123abcd",
                       "since": timestamp(since or datetime.now(UTC))},
        "models": [{"name": name, "version": version, "digest": f"sha256:{SHA}",
                    "state": state} for name, version, state in models],
        "modelCount": len(models),
    })


def status_of(kube: Kube, plural: str, namespace: str, name: str) -> dict[str, Any]:
    return kube.get(plural, namespace, name).get("status", {})


def wait_status(kube: Kube, plural: str, namespace: str, name: str,
                expected: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Waits until every key of `expected` has that value in the object's status."""
    def matches() -> dict[str, Any] | None:
        status = status_of(kube, plural, namespace, name)
        return status if all(status.get(k) == v for k, v in expected.items()) else None
    return eventually(matches, timeout=timeout,
                      what=f"{plural}/{name} status {expected} "
                           f"(now {status_of(kube, plural, namespace, name)})")


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    (condition,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    return condition


def test_model_targets_devices_by_selector_and_follows_label_and_selector_changes(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    start_operator()
    for name, site in (("cam-1", "plant-7"), ("cam-2", "plant-7"), ("cam-3", "plant-9")):
        kube.create("edgedevices", namespace, device_body(name, site=site))
    kube.create("edgemodels", namespace, model_body("digits"))

    status = wait_status(kube, "edgemodels", namespace, "digits",
                         {"phase": "Pending", "readySummary": "0/2"})
    assert status["devices"] == {"targeted": 2, "updated": 0, "ready": 0, "failed": 0,
                                 "offline": 0}
    condition = ready_condition(status)
    assert (condition["status"], condition["reason"]) == ("False", "DevicesNotReady")
    assert condition["lastTransitionTime"] and condition["observedGeneration"] == 1

    kube.patch("edgedevices", namespace, "cam-3", {"metadata": {"labels": {"site": "plant-7"}}})
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/3"})

    kube.patch("edgemodels", namespace, "digits",
               {"spec": {"selector": {"matchLabels": {"site": "nowhere"}}}})
    status = wait_status(kube, "edgemodels", namespace, "digits",
                         {"readySummary": "0/0", "observedGeneration": 2})
    assert ready_condition(status)["reason"] == "NoTargetedDevices"


def test_model_turns_healthy_as_devices_report_it_ready(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    start_operator()
    for name in ("cam-1", "cam-2"):
        kube.create("edgedevices", namespace, device_body(name, site="plant-7"))
    kube.create("edgemodels", namespace, model_body("digits", version="2.0.0"))
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/2"})

    report(kube, namespace, "cam-1", ("digits", "2.0.0", "Ready"))
    report(kube, namespace, "cam-2", ("digits", "2.0.0", "Loading"))
    wait_status(kube, "edgemodels", namespace, "digits",
                {"phase": "Progressing", "readySummary": "1/2"})

    report(kube, namespace, "cam-2", ("digits", "2.0.0", "Failed"))
    status = wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Degraded"})
    assert status["devices"]["failed"] == 1 and "cam-2" in ready_condition(status)["message"]

    report(kube, namespace, "cam-2", ("digits", "2.0.0", "Ready"))
    status = wait_status(kube, "edgemodels", namespace, "digits",
                         {"phase": "Healthy", "readySummary": "2/2", "stableVersion": "2.0.0"})
    assert ready_condition(status)["status"] == "True"
    printed = printed_row(kube.kubectl("get", "em", "digits", "-n", namespace).stdout)
    assert printed | {"AGE": ""} == {"NAME": "digits", "VERSION": "2.0.0", "STABLE": "2.0.0",
                                     "STEP": "", "UPDATED": "2/2", "READY": "2/2",
                                     "PHASE": "Healthy", "AGE": ""}


def test_device_is_pending_until_seen_then_online_while_its_gateway_lives(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    start_operator()
    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Pending", "modelCount": 0})

    # An hour since lastSeen was written: Online all the same, while its gateway's
    # Lease is renewed.
    report(kube, namespace, "cam-1", ("digits", "1.0.0", "Ready"), ("faces", "3", "Loading"),
           seen=datetime.now(UTC) - timedelta(hours=1))
    wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Online", "modelCount": 2})

    # A gateway that dies: its Lease is not renewed, and after its 2 s (and the
    # controller's next look, every second here) its device is Offline, last seen when
    # the controller last saw the gateway alive.
    hold_gateway_lease(kube, namespace, "gateway-1", duration_s=2)
    report(kube, namespace, "cam-1", seen=datetime.now(UTC) - timedelta(hours=1),
           gateway="gateway-1")
    lease_written = datetime.now(UTC).replace(microsecond=0)
    offline = wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Offline"},
                          timeout=20)
    assert offline["connection"]["gateway"] == "gateway-1"  # no word from the gateway
    assert lease_written - timedelta(seconds=3) <= datetime.fromisoformat(
        offline["lastSeen"]) <= datetime.now(UTC)
    # The same replica back as a new process: a session of the earlier one stays over,
    # one of its own is alive.
    began = datetime.now(UTC)
    hold_gateway_lease(kube, namespace, "gateway-1", duration_s=3600, started=began)
    report(kube, namespace, "cam-1", gateway="gateway-1", since=began - timedelta(minutes=5))
    time.sleep(3)  # three looks at the Leases
    assert status_of(kube, "edgedevices", namespace, "cam-1")["phase"] == "Offline"
    report(kube, namespace, "cam-1", gateway="gateway-1", since=began + timedelta(seconds=1))
    wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Online", "modelCount": 0})


def test_selector_that_can_never_match_gets_ready_false_and_an_event(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    operator = start_operator()
    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    kube.create("edgemodels", namespace, model_body(
        "impossible", matchLabels={"site": "plant-7"},
        matchExpressions=[{"key": "site", "operator": "NotIn", "values": ["plant-7"]}]))

    status = wait_status(kube, "edgemodels", namespace, "impossible", {"phase": "Failed"})
    condition = ready_condition(status)
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert "spec.selector can never match" in condition["message"]
    event = eventually(lambda: [e for e in kube.events(namespace, "impossible")
                                if e.reason == "InvalidSpec"], what="InvalidSpec event")[0]
    assert event.type == "Warning" and "site" in event.message

    # The operator keeps running and serving other models.
    kube.create("edgemodels", namespace, model_body("digits"))
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/1"})
    assert operator.process.poll() is None


def test_deleted_model_waits_until_devices_withdraw_it(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    start_operator()
    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    kube.create("edgemodels", namespace, model_body("digits"))
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/1"})
    eventually(lambda: "edgefleet.io/withdrawal" in
               kube.get("edgemodels", namespace, "digits")["metadata"].get("finalizers", []),
               what="withdrawal finalizer")
    report(kube, namespace, "cam-1", ("digits", "1.0.0", "Ready"))

    kube.delete("edgemodels", namespace, "digits")
    held = kube.get("edgemodels", namespace, "digits")
    assert held["metadata"]["deletionTimestamp"]

    report(kube, namespace, "cam-1")  # the device confirms: it holds nothing any more
    eventually(lambda: not kube.kubectl("get", "em", "digits", "-n", namespace,
                                        check=False).returncode == 0,
               what="EdgeModel gone after withdrawal")


def test_deletion_never_hangs_and_names_devices_that_did_not_confirm(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    start_operator("--deletion-timeout-seconds", "2")
    kube.create("edgedevices", namespace, device_body("cam-silent", site="plant-7"))
    kube.create("edgemodels", namespace, model_body("digits"))
    report(kube, namespace, "cam-silent", ("digits", "1.0.0", "Ready"))
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "1/1"})

    kube.delete("edgemodels", namespace, "digits")
    eventually(lambda: kube.kubectl("get", "em", "digits", "-n", namespace,
                                    check=False).returncode != 0,
               what="EdgeModel released after the bounded wait")
    event = eventually(lambda: [e for e in kube.events(namespace, "digits")
                                if e.reason == "WithdrawalUnconfirmed"],
                       what="WithdrawalUnconfirmed event")[0]
    assert "cam-silent" in event.message


def test_restarted_operator_rebuilds_the_same_statuses_from_the_api_server(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    first = start_operator()
    for name in ("cam-1", "cam-2"):
        kube.create("edgedevices", namespace, device_body(name, site="plant-7"))
        report(kube, namespace, name, ("digits", "1.0.0", "Ready"))
    kube.create("edgemodels", namespace, model_body("digits"))
    wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Healthy"})
    wait_status(kube, "edgedevices", namespace, "cam-2", {"phase": "Online"})
    before = {plural: {name: kube.get(plural, namespace, name) for name in names}
              for plural, names in (("edgemodels", ["digits"]),
                                    ("edgedevices", ["cam-1", "cam-2"]))}
    first.kill()

    second = start_operator()
    # The new process has looked at every object and found nothing to change ...
    eventually(lambda: (second.metric("edgefleet_operator_reconciles_total",
                                      outcome="unchanged", resource="EdgeModel") or 0) >= 1
               and (second.metric("edgefleet_operator_reconciles_total",
                                  outcome="unchanged", resource="EdgeDevice") or 0) >= 2,
               what="the restarted operator to reconcile everything")
    assert second.metric("edgefleet_operator_reconciles_total",
                         outcome="updated", resource="EdgeModel") is None
    # ... so every status is identical and was not even rewritten.
    for plural, objects in before.items():
        for name, old in objects.items():
            new = kube.get(plural, namespace, name)
            assert new["status"] == old["status"]
            assert new["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"]

    # And it still reacts: a change made after the restart is reflected.
    report(kube, namespace, "cam-2", ("digits", "1.0.0", "Failed"))
    wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Degraded"})


def test_metrics_count_reconciles_and_objects_by_phase(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    operator = start_operator()
    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    kube.create("edgedevices", namespace, device_body("cam-2", site="plant-7"))
    report(kube, namespace, "cam-1", ("digits", "1.0.0", "Ready"))
    kube.create("edgemodels", namespace, model_body("digits"))
    wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Progressing"})

    eventually(lambda: operator.metric("edgefleet_operator_devices", phase="Online") == 1
               and operator.metric("edgefleet_operator_devices", phase="Pending") == 1,
               what="devices by phase")
    assert operator.metric("edgefleet_operator_models", phase="Progressing") == 1
    assert operator.metric("edgefleet_operator_models", phase="Healthy") == 0
    assert (operator.metric("edgefleet_operator_reconciles_total",
                            outcome="updated", resource="EdgeModel") or 0) >= 1
    assert (operator.metric("edgefleet_operator_reconcile_duration_seconds_count",
                            resource="EdgeDevice") or 0) >= 2
    assert operator.metric("edgefleet_operator_leader") == 1
    assert operator.get("/healthz")[0] == 200
