"""What a device's session costs the API server and how truthful its status is, with real
processes (API server, operator with its gateway, an edge runtime): the session's start
is written at once, naming the gateway replica that holds it; a model rolled out is one
status write of its settled state; a clean disconnect is Offline at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import testmodels
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.conftest import GROUP, VERSION, Fleet, Kube, StartOperator, stop_edge
from tests.helpers import eventually
from tests.integration.test_edge_cloud_link import edge_model, publish
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration


class QuietFleet(Fleet):
    """The defaults of a large fleet: new statistics written once a minute, lastSeen
    alone every five."""

    OPERATOR_FLAGS = ("--heartbeat-write-seconds", "60", "--last-seen-write-seconds", "300")


@pytest.fixture
def quiet_fleet(kube: Kube, namespace: str, start_operator: StartOperator,
                tmp_path: Path) -> Iterator[Fleet]:
    started = QuietFleet(kube, namespace, start_operator, tmp_path)
    yield started
    started.stop()


@dataclass
class StatusWatch:
    """Every change of one EdgeDevice the API server sends a watch, from a resource
    version on: (when it arrived, its resourceVersion, its status)."""

    kube: Kube
    namespace: str
    name: str
    seen: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> StatusWatch:
        self._since = self.kube.get("edgedevices", self.namespace, self.name)[
            "metadata"]["resourceVersion"]
        self._thread.start()
        return self

    def _follow(self) -> None:
        try:
            for event in self._watch.stream(
                    self.kube.custom.list_namespaced_custom_object, GROUP, VERSION,
                    self.namespace, "edgedevices", field_selector=f"metadata.name={self.name}",
                    resource_version=self._since, timeout_seconds=60):
                body = event["object"]
                self.seen.append((time.monotonic(), body["metadata"]["resourceVersion"],
                                  body.get("status", {})))
        except (ApiException, HTTPError):
            pass  # the test is over and its control plane went first

    def since(self, at: float) -> list[dict[str, Any]]:
        return [status for when, _, status in list(self.seen) if when >= at]

    def stop(self) -> None:
        self._watch.stop()


def states(status: dict[str, Any]) -> list[str]:
    return [model["state"] for model in status.get("models", [])]


def test_a_session_is_written_at_its_start_once_per_settled_state_and_at_its_end(
    quiet_fleet: Fleet,
) -> None:
    fleet, kube, namespace = quiet_fleet, quiet_fleet.kube, quiet_fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    edge = fleet.start("cam-1")
    online = eventually(lambda: (status := kube.get("edgedevices", namespace, "cam-1").get(
        "status", {})).get("connection") and status.get("phase") == "Online" and status,
        what="cam-1 Online with its connection")
    connection = online["connection"]
    # The replica's identity: host and pid unless the operator is told another.
    assert connection["gateway"] == f"{socket.gethostname()}-{fleet.operator.process.pid}"
    assert len(connection["session"]) == 8 and connection["since"].endswith("Z")
    assert online["lastSeen"] and online["modelCount"] == 0

    device = StatusWatch(kube, namespace, "cam-1").start()
    try:
        uri, sha = publish(fleet.root, testmodels.scaled(2.0))
        applied = time.monotonic()
        kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha, site="plant-7"))
        wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Healthy"}, timeout=60)
        eventually(lambda: any(states(s) == ["Ready"] for s in device.since(applied)),
                   what="the Ready model in cam-1's status")
        time.sleep(1.0)  # longer than the settle time: a write that trails would show
        rollout = device.since(applied)
        print(f"\ncam-1 written {len(rollout)} times by the rollout: "
              f"{[states(s) for s in rollout]}")
        # Downloading, Verifying, Loading and Ready of a small model: one write.
        assert [states(s) for s in rollout] == [["Ready"]]
        (written,) = rollout
        assert (written["phase"], written["modelCount"]) == ("Online", 1)
        assert written["connection"] == connection

        # A clean disconnect: Offline at once, and the session's connection gone.
        stopped = time.monotonic()
        stop_edge(edge)
        offline = eventually(lambda: [(when, s) for when, _, s in list(device.seen)
                                      if when >= stopped and s.get("phase") == "Offline"],
                             timeout=20, what="cam-1 Offline")
        took = offline[0][0] - stopped
        print(f"cam-1 Offline {took:.2f} s after its runtime stopped")
        assert "connection" not in offline[0][1] and states(offline[0][1]) == ["Ready"]
        # The controller agrees (no session, however fresh lastSeen is): it stays Offline.
        device.seen.clear()
        time.sleep(1)
        assert all(s.get("phase") == "Offline" for _, _, s in list(device.seen))
        final = kube.get("edgedevices", namespace, "cam-1")["status"]
        assert "connection" not in final and final["phase"] == "Offline"
    finally:
        device.stop()
