"""Device health end to end: a real edge runtime reads its health from procfs and sysfs
(a meminfo and a thermal zone the test writes, a data dir on a small tmpfs), the real
gateway turns the figures into EdgeDevice conditions against its thresholds, and an
Event tells each transition; a runtime that sends no health is shown as such. The fleet
acts on it: a rollout holds back a device under pressure, a model stops counting a
device offline past its timeout, and a download's progress shows while it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testmodels

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from tests.conftest import Fleet, Kube, stop_edge
from tests.helpers import TcpBalancer, eventually, printed_row
from tests.integration.test_edge_cloud_link import answer, edge_model, publish, reported
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



def test_a_rollout_holds_back_a_device_under_disk_pressure_until_it_clears(
    fleet: Fleet, small_disk: Path,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    for name in ("cam-1", "cam-2", "cam-3"):  # cam-1's data dir is the small disk
        fleet.add_device(name, site="plant-7")
        fleet.start(name)
    uri, sha = publish(fleet.root, testmodels.scaled(1.0))
    kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha, site="plant-7"))
    wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Healthy"}, timeout=60)
    (small_disk / "filler").write_bytes(b"\0" * (15 * MIB))
    wait_status(kube, "edgedevices", namespace, "cam-1", {"healthSummary": "DiskPressure"})

    uri, sha = publish(fleet.root, testmodels.scaled(2.0))
    kube.patch("edgemodels", namespace, "digits", {"spec": {
        "version": "2", "source": {"uri": uri, "sha256": sha}, "rollout": {
            "strategy": "Canary", "maxUnavailable": 3,
            "steps": [{"percent": 100, "manualApproval": True}]}}})
    # The step is ready without cam-1, which keeps serving version 1.
    eventually(lambda: condition_reason(kube, namespace) == "AwaitingApproval", timeout=60,
               what="the step ready but for cam-1")
    status = kube.get("edgemodels", namespace, "digits")["status"]
    assert status["rollout"]["heldBack"] == ["cam-1"]
    assert answer(fleet.edges["cam-1"], "digits") == 1.0
    assert answer(fleet.edges["cam-2"], "digits") == answer(fleet.edges["cam-3"], "digits") == 2.0
    (held,) = eventually(lambda: [e.message for e in kube.events(namespace, "digits")
                                  if e.reason == "DevicesHeldBack"], what="the step's Event")
    assert "cam-1 (DiskPressure)" in held

    # Room again: cam-1 joins the cohort it belongs to.
    (small_disk / "filler").unlink()
    eventually(lambda: answer(fleet.edges["cam-1"], "digits") == 2.0, timeout=60,
               what="cam-1 on version 2 once its disk has room")
    assert kube.get("edgemodels", namespace, "digits")["status"]["rollout"]["heldBack"] == []


def condition_reason(kube: Kube, namespace: str) -> str | None:
    conditions = kube.get("edgemodels", namespace, "digits").get("status", {}).get(
        "conditions", [])
    return next((c["reason"] for c in conditions if c["type"] == "Progressing"), None)


def test_a_model_stops_counting_a_device_offline_past_the_timeout(fleet: Fleet) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    for name in ("cam-1", "cam-2"):
        fleet.add_device(name, site="plant-7")
        fleet.start(name)
    uri, sha = publish(fleet.root, testmodels.scaled(1.0))
    model = edge_model("digits", "1", uri, sha, site="plant-7")
    model["spec"]["rollout"] = {"offlineTimeoutSeconds": 5}
    kube.create("edgemodels", namespace, model)
    wait_status(kube, "edgemodels", namespace, "digits",
                {"phase": "Healthy", "readySummary": "2/2"}, timeout=60)
    stop_edge(fleet.edges.pop("cam-2"))
    # Offline: counted at once, still ready until its timeout runs out.
    status = wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "2/2"})
    eventually(lambda: kube.get("edgemodels", namespace, "digits")["status"]["devices"][
        "offline"] == 1, what="one device offline")
    status = wait_status(kube, "edgemodels", namespace, "digits",
                         {"readySummary": "1/2", "phase": "Degraded"}, timeout=30)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DevicesOffline" and "cam-2" in ready["message"]
    printed = printed_row(kube.kubectl("get", "em", "digits", "-n", namespace).stdout)
    assert printed["READY"] == "1/2"
    fleet.start("cam-2")
    wait_status(kube, "edgemodels", namespace, "digits",
                {"phase": "Healthy", "readySummary": "2/2"}, timeout=60)


def test_a_large_downloads_progress_shows_in_the_device_status(fleet: Fleet) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.restart_operator("--download-progress-write-seconds", "1")
    slow = TcpBalancer([fleet.operator.grpc_port], bytes_per_second=4 * MIB)  # a thin uplink
    try:
        fleet.gateway_address = f"127.0.0.1:{slow.port}"
        fleet.add_device("cam-1", site="plant-7")
        fleet.start("cam-1")
        model = testmodels.large(24)  # six seconds through the uplink
        uri, sha = publish(fleet.root, model)
        kube.create("edgemodels", namespace, edge_model("large", "1", uri, sha,
                                                        site="plant-7"))

        def downloading() -> dict[str, Any] | None:
            return next((m for m in reported(kube, namespace, "cam-1")
                         if m["state"] == "Downloading" and 0 < m.get("bytesDone", 0)), None)

        midway = eventually(downloading, interval=0.2, timeout=60, what="progress in status")
        assert midway["bytesDone"] < midway["bytesTotal"] == len(model)
        eventually(lambda: [m for m in reported(kube, namespace, "cam-1")
                            if m["state"] == "Ready" and "bytesDone" not in m],
                   timeout=90, what="the model Ready, progress gone")
    finally:
        slow.close()


def test_a_model_too_large_for_the_disk_is_reported_before_its_download(
    fleet: Fleet, small_disk: Path,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.add_device("cam-1", site="plant-7")  # its data dir: 16 MiB
    fleet.start("cam-1")
    model = testmodels.large(24)
    uri, sha = publish(fleet.root, model)
    kube.create("edgemodels", namespace, edge_model("large", "1", uri, sha, site="plant-7"))
    (failed,) = eventually(lambda: [m for m in reported(kube, namespace, "cam-1")
                                    if m["state"] == "Failed"], timeout=60,
                           what="the model refused for want of disk")
    assert f"not enough disk for the artifact: {len(model)} more bytes needed" in (
        failed["message"])
    assert not (small_disk / "partial" / f"{sha}.partial").exists()  # nothing fetched


def test_health_figures_no_device_could_read_are_refused_and_the_last_kept(
    fleet: Fleet, devices: list[FakeDevice],
) -> None:
    fleet.add_device("cam-1", site="plant-7")
    device = connect_fake(fleet, devices, "cam-1")
    sane = pb.Health(disk_free_bytes=50, disk_total_bytes=100, temperature_celsius=40.0)
    written(fleet, device, pb.DeviceMessage(heartbeat=pb.Heartbeat(health=sane)),
            lambda status: status.get("healthSummary") == "Healthy", "the sane figures")
    device.send(pb.DeviceMessage(heartbeat=pb.Heartbeat(health=pb.Health(cpu_percent=500.0))))
    device.send(pb.DeviceMessage(heartbeat=pb.Heartbeat(health=pb.Health(
        disk_free_bytes=2**63, disk_total_bytes=1))))
    device.send(pb.DeviceMessage(heartbeat=pb.Heartbeat(health=pb.Health(
        temperature_celsius=float("inf")))))
    refusals = eventually(lambda: len(device.refusals()) == 3 and device.refusals(),
                          what="three refusals")
    assert [(r.field, r.reason) for r in refusals] == [
        ("heartbeat.health.cpu_percent", "Implausible"),
        ("heartbeat.health.disk_free_bytes", "Implausible"),
        ("heartbeat.health.temperature_celsius", "Implausible")]
    status = fleet.kube.get("edgedevices", fleet.namespace, "cam-1")["status"]
    assert status["health"]["temperatureCelsius"] == 40.0 and status["healthSummary"] == "Healthy"


def test_a_runtime_whose_clock_is_an_hour_ahead_has_clock_skew_until_it_is_set_right(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    # The runtime's Python clock an hour ahead (its TLS and the gateway's keep the real
    # one), as a device with a wrong wall clock reads it.
    shifted = tmp_path / "shifted-clock"
    shifted.mkdir()
    (shifted / "sitecustomize.py").write_text(
        "import time\n_time = time.time\ntime.time = lambda: _time() + 3600\n")
    fleet.add_device("cam-1", site="plant-7")
    with monkeypatch.context() as patched:
        patched.setenv("PYTHONPATH", str(shifted))
        fleet.start("cam-1")
    status = wait_status(kube, "edgedevices", namespace, "cam-1",
                         {"phase": "Online", "healthSummary": "ClockSkew"})
    assert 3590 < status["health"]["clockOffsetSeconds"] < 3610
    (skew,) = eventually(lambda: event_messages(fleet, "ClockSkew"), what="a ClockSkew Event")
    assert "s ahead" in skew
    stop_edge(fleet.edges.pop("cam-1"))
    fleet.start("cam-1")  # its clock set right
    wait_status(kube, "edgedevices", namespace, "cam-1",
                {"phase": "Online", "healthSummary": "Healthy"})
    eventually(lambda: event_messages(fleet, "ClockSkewCleared"), what="ClockSkewCleared")
