"""Device health end to end: a real edge runtime reads its health from procfs and sysfs
(a meminfo and a thermal zone the test writes, a data dir on a small tmpfs), the real
gateway turns the figures into EdgeDevice conditions against its thresholds, and an
Event tells each transition; a runtime that sends no health is shown as such."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from tests.conftest import Fleet, stop_edge
from tests.helpers import eventually
from tests.integration.test_gateway_security import FakeDevice, connect_fake, written
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration
MIB = 2**20
MEMINFO = "MemTotal:        4000000 kB\nMemFree:         1000000 kB\nMemAvailable:    {} kB\n"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """cam-1's data dir on a 16 MiB tmpfs, so that the test can fill its disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem for the data dir needs root")
    path = tmp_path / "cam-1-data"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "--lazy", str(path)], check=False)


def fake_host(root: Path) -> tuple[Path, Path]:
    """A procfs (this host's CPU and uptime, a meminfo the test sets) and a sysfs with one
    thermal zone at 45 °C."""
    procfs, sysfs = root / "proc", root / "sys"
    procfs.mkdir()
    for name in ("stat", "uptime"):
        shutil.copyfile(f"/proc/{name}", procfs / name)
    (procfs / "meminfo").write_text(MEMINFO.format(3000000))
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("45000\n")
    return procfs, sysfs


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


def event_messages(fleet: Fleet, reason: str) -> list[str]:
    return [e.message for e in fleet.kube.events(fleet.namespace, "cam-1") if e.reason == reason]


def test_each_condition_is_set_and_cleared_by_the_runtimes_figures_with_events(
    fleet: Fleet, small_disk: Path, tmp_path: Path,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    procfs, sysfs = fake_host(tmp_path)
    fleet.add_device("cam-1", site="plant-7")
    fleet.start("cam-1", "--procfs-path", str(procfs), "--sysfs-path", str(sysfs))

    status = wait_status(kube, "edgedevices", namespace, "cam-1",
                         {"phase": "Online", "healthSummary": "Healthy"})
    health = status["health"]
    assert health["memoryTotalBytes"] == 4000000 * 1024
    assert health["memoryAvailableBytes"] == 3000000 * 1024
    assert health["temperatureCelsius"] == 45.0
    assert 15 * MIB <= health["diskTotalBytes"] <= 16 * MIB
    assert health["restarts"] == 0 and health["runtimeVersion"] and health["os"] == "Linux"
    assert abs(health["clockOffsetSeconds"]) < 5  # one host, one clock
    assert conditions(status) == {"Ready": "True", "MemoryPressure": "False",
                                  "DiskPressure": "False", "Overheating": "False",
                                  "ClockSkew": "False"}
    eventually(lambda: event_messages(fleet, "DeviceOnline"), what="a DeviceOnline Event")

    # Hot and short of memory at once: both conditions, one Event each quoting the figure.
    (sysfs / "class" / "thermal" / "thermal_zone0" / "temp").write_text("95500\n")
    (procfs / "meminfo").write_text(MEMINFO.format(40000))  # 1 % available
    wait_status(kube, "edgedevices", namespace, "cam-1",
                {"healthSummary": "MemoryPressure,Overheating"})
    (hot,) = eventually(lambda: event_messages(fleet, "Overheating"), what="Overheating Event")
    assert "95.5 °C" in hot and "above 85 °C" in hot
    (low,) = eventually(lambda: event_messages(fleet, "MemoryPressure"),
                        what="MemoryPressure Event")
    assert "39.1 MiB of 3.8 GiB available" in low
    (sysfs / "class" / "thermal" / "thermal_zone0" / "temp").write_text("40000\n")
    (procfs / "meminfo").write_text(MEMINFO.format(3000000))
    wait_status(kube, "edgedevices", namespace, "cam-1", {"healthSummary": "Healthy"})
    eventually(lambda: event_messages(fleet, "OverheatingCleared")
               and event_messages(fleet, "MemoryPressureCleared"), what="Cleared Events")

    # The data dir's disk fills past 90 %, then empties.
    (small_disk / "filler").write_bytes(b"\0" * (15 * MIB))
    status = wait_status(kube, "edgedevices", namespace, "cam-1",
                         {"healthSummary": "DiskPressure"})
    assert status["health"]["diskFreeBytes"] < MIB
    eventually(lambda: event_messages(fleet, "DiskPressure"), what="DiskPressure Event")
    (small_disk / "filler").unlink()
    wait_status(kube, "edgedevices", namespace, "cam-1", {"healthSummary": "Healthy"})

    # The runtime stops: Offline, Ready False, an Event; it comes back counting a restart.
    stop_edge(fleet.edges.pop("cam-1"))
    status = wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Offline"})
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Disconnected")
    eventually(lambda: event_messages(fleet, "DeviceOffline"), what="a DeviceOffline Event")
    fleet.start("cam-1", "--procfs-path", str(procfs), "--sysfs-path", str(sysfs))
    eventually(lambda: kube.get("edgedevices", namespace, "cam-1")["status"]["health"].get(
        "restarts") == 1, what="the restart counted")


def test_a_runtime_that_sends_no_health_is_shown_as_not_reporting_it(
    fleet: Fleet, devices: list[FakeDevice],
) -> None:
    fleet.add_device("cam-old", site="plant-7")
    device = connect_fake(fleet, devices, "cam-old", pb.Hello(runtime_version="0.1.0"))
    written(fleet, device, pb.DeviceMessage(heartbeat=pb.Heartbeat()),
            lambda status: status.get("healthSummary") == "NotReported",
            "the device shown as not reporting health")
    status = fleet.kube.get("edgedevices", fleet.namespace, "cam-old")["status"]
    assert status["health"] == {"runtimeVersion": "0.1.0"}
    assert {c["reason"] for c in status["conditions"] if c["type"] != "Ready"} == {
        "NotReported"}

