"""Gateway replicas behind one Service: a controller decides (`--role controller`), two
gateway replicas (`--role gateway`) each serve whichever devices connect to them, and
killing one moves its devices to the other with nothing lost. Each replica keeps its
own artifact cache, as a pod would: one started mid-rollout still serves the stable
version, whose source only the model's status names by then."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import testmodels

from tests.conftest import Fleet, Kube, StartOperator
from tests.helpers import TcpBalancer, eventually
from tests.integration.test_edge_cloud_link import answer, edge_model, publish
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration
DEVICES = [f"cam-{i}" for i in range(4)]


@pytest.fixture
def replicated(kube: Kube, namespace: str, start_operator: StartOperator,
               tmp_path: Path) -> Iterator[tuple[Fleet, dict[str, Any]]]:
    """A controller, two gateway replicas named gateway-a and gateway-b, and a
    balancer in front of each of their two ports, where the devices dial."""
    fleet = Fleet(kube, namespace, start_operator, tmp_path, role="controller")
    replicas = {name: fleet.start_gateway_replica(name) for name in ("gateway-a", "gateway-b")}
    sessions = TcpBalancer([replica.grpc_port for replica in replicas.values()])
    enrolment = TcpBalancer([replica.enrolment_port for replica in replicas.values()])
    fleet.gateway_address = f"127.0.0.1:{sessions.port}"
    fleet.enrolment_address = f"127.0.0.1:{enrolment.port}"
    yield fleet, replicas
    fleet.stop()
    sessions.close()
    enrolment.close()


def holders(kube: Kube, namespace: str) -> dict[str, tuple[str, str]]:
    """Each device's (phase, gateway replica holding its session)."""
    return {item["metadata"]["name"]: (
        item.get("status", {}).get("phase", ""),
        (item.get("status", {}).get("connection") or {}).get("gateway", ""))
        for item in kube.list("edgedevices", namespace)}


def test_killing_a_replica_moves_its_devices_and_a_new_replica_serves_mid_rollout(
        replicated: tuple[Fleet, dict[str, Any]]) -> None:
    fleet, replicas = replicated
    kube, namespace = fleet.kube, fleet.namespace
    for name in DEVICES:
        fleet.add_device(name, site="plant-7")
        fleet.start(name)
    uri, sha = publish(fleet.root, testmodels.scaled(2.0))
    kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha, site="plant-7"))
    wait_status(kube, "edgemodels", namespace, "digits",
                {"phase": "Healthy", "readySummary": f"{len(DEVICES)}/{len(DEVICES)}"},
                timeout=90)
    # Gateway replicas hold no finalizer and leave the controller's alone (kopf strips
    # a finalizer that none of its handlers needs, unless told another name).
    model = kube.get("edgemodels", namespace, "digits")
    assert model["metadata"]["finalizers"] == ["edgefleet.io/withdrawal"]
    time.sleep(2)
    assert kube.get("edgemodels", namespace, "digits")["metadata"]["finalizers"] == [
        "edgefleet.io/withdrawal"]
    before = {name: kube.get("edgedevices", namespace, name)["status"] for name in DEVICES}
    # Both replicas write the status of the devices they hold; the controller decides.
    assert {status["connection"]["gateway"] for status in before.values()} <= set(replicas)
    assert all(status["phase"] == "Online" for status in before.values())

    victim = before["cam-0"]["connection"]["gateway"]
    survivor = next(name for name in replicas if name != victim)
    moved = sorted(name for name, status in before.items()
                   if status["connection"]["gateway"] == victim)
    killed_at = time.monotonic()
    replicas[victim].kill()

    eventually(lambda: all(held == ("Online", survivor)
                           for held in holders(kube, namespace).values()) or None,
               timeout=60, what=f"every device Online on {survivor}")
    print(f"{len(moved)} devices moved from {victim} to {survivor} in "
          f"{time.monotonic() - killed_at:.1f}s")
    for name in DEVICES:
        after = kube.get("edgedevices", namespace, name)["status"]
        # Nothing lost: the same certificate, the same models held, still answering.
        assert after["identity"]["serial"] == before[name]["identity"]["serial"]
        assert [(m["name"], m["version"], m["digest"], m["state"]) for m in after["models"]] == [
            ("digits", "1", f"sha256:{sha}", "Ready")]
        assert answer(fleet.edges[name], "digits") == 2.0
    wait_status(kube, "edgemodels", namespace, "digits",
                {"phase": "Healthy", "readySummary": f"{len(DEVICES)}/{len(DEVICES)}"})

    # A rollout of version 2 that waits at a first step of 0% (no device moves): version
    # 1 stays stable, and the spec names only version 2's source.
    new_uri, new_sha = publish(fleet.root, testmodels.scaled(3.0))
    kube.patch("edgemodels", namespace, "digits", {"spec": {
        "version": "2", "source": {"uri": new_uri, "sha256": new_sha},
        "rollout": {"strategy": "Canary", "maxUnavailable": "100%", "steps": [
            {"percent": 0, "manualApproval": True}, {"percent": 100}]}}})
    status = wait_status(kube, "edgemodels", namespace, "digits",
                         {"stableVersion": "1", "stepSummary": "1/2"}, timeout=60)
    assert status["stableArtifact"]["source"] == {"uri": uri, "sha256": sha}
    late = fleet.start_gateway_replica("gateway-c")
    fleet.gateway_address = f"127.0.0.1:{late.grpc_port}"
    fleet.enrolment_address = f"127.0.0.1:{late.enrolment_port}"
    fleet.add_device("cam-new", site="plant-7")
    fleet.start("cam-new")
    eventually(lambda: [(m["version"], m["state"]) for m in (kube.get(
        "edgedevices", namespace, "cam-new").get("status") or {}).get("models", [])] == [
        ("1", "Ready")] or None, timeout=60, what="the new device serving version 1 via "
                                                "the late replica")
    assert answer(fleet.edges["cam-new"], "digits") == 2.0

    # The late replica dies, and cam-new (which dials it alone) cannot move: once the
    # replica's Lease runs out (3 s here) the controller turns cam-new Offline, last
    # seen when the replica was last alive; the devices on the survivor stay Online.
    killed = datetime.now(UTC).replace(microsecond=0)
    late.kill()
    offline = wait_status(kube, "edgedevices", namespace, "cam-new", {"phase": "Offline"},
                          timeout=30)
    assert offline["connection"]["gateway"] == "gateway-c"  # its end was never written
    assert killed - timedelta(seconds=3) <= datetime.fromisoformat(offline["lastSeen"]) <= (
        killed + timedelta(seconds=1))
    assert {name: held for name, held in holders(kube, namespace).items()
            if name != "cam-new"} == {name: ("Online", survivor) for name in DEVICES}
