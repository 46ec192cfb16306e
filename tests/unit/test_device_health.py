"""A device's conditions from its health figures (operator/device_health.py), and what
the gateway's policy takes of those figures."""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.operator import device_health, metrics
from edgefleet.operator.device_health import HealthThresholds
from edgefleet.operator.gateway.policy import GatewayLimits, Refusal, check_health
from edgefleet.operator.phases import DeviceFacts, device_series
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

GIB = 2**30
DEFAULTS = HealthThresholds()
HEALTHY = {"memoryAvailableBytes": 3 * GIB, "memoryTotalBytes": 4 * GIB,
           "diskFreeBytes": 50 * GIB, "diskTotalBytes": 100 * GIB,
           "temperatureCelsius": 55.0, "clockOffsetSeconds": 0.2}


def judge(health: dict[str, Any] | None, previous: list[dict[str, Any]] | None = None,
          thresholds: HealthThresholds = DEFAULTS) -> dict[str, str]:
    verdicts = device_health.health_conditions(health, previous or [], thresholds)
    return {c["type"]: c["status"] for c in verdicts}


def test_a_healthy_device_has_every_condition_false_and_reads_healthy() -> None:
    verdicts = device_health.health_conditions(HEALTHY, [], HealthThresholds())
    assert {c["type"]: c["status"] for c in verdicts} == {
        "MemoryPressure": "False", "DiskPressure": "False", "Overheating": "False",
        "ClockSkew": "False"}
    conditions, _ = device_health.merge_conditions([], verdicts, "2026-12-01T00:00:00Z")
    assert device_health.summary(conditions) == "Healthy"


@pytest.mark.parametrize(("figures", "condition"), [
    ({"memoryAvailableBytes": GIB // 20}, "MemoryPressure"),  # 1.25 % of 4 GiB
    ({"diskFreeBytes": 9 * GIB}, "DiskPressure"),  # 9 % of 100 GiB
    ({"temperatureCelsius": 91.5}, "Overheating"),
    ({"clockOffsetSeconds": -75.0}, "ClockSkew"),  # behind counts as much as ahead
])
def test_each_figure_past_its_threshold_sets_its_condition(figures: dict[str, Any],
                                                            condition: str) -> None:
    verdicts = judge({**HEALTHY, **figures})
    assert [kind for kind, status in verdicts.items() if status == "True"] == [condition]


def test_a_pressure_clears_only_once_its_figure_is_back_past_a_margin() -> None:
    hot = [{"type": "Overheating", "status": "True"}]
    assert judge({**HEALTHY, "temperatureCelsius": 84.0}, hot)["Overheating"] == "True"
    assert judge({**HEALTHY, "temperatureCelsius": 79.0}, hot)["Overheating"] == "False"
    full = [{"type": "DiskPressure", "status": "True"}]
    assert judge({**HEALTHY, "diskFreeBytes": 11 * GIB}, full)["DiskPressure"] == "True"
    assert judge({**HEALTHY, "diskFreeBytes": 12 * GIB}, full)["DiskPressure"] == "False"


def test_thresholds_are_the_admins() -> None:
    strict = HealthThresholds(disk_free_percent=60.0, temperature_celsius=50.0)
    verdicts = judge(HEALTHY, thresholds=strict)
    assert verdicts["DiskPressure"] == verdicts["Overheating"] == "True"


def test_a_runtime_that_reports_no_health_is_shown_as_such_not_as_healthy() -> None:
    verdicts = device_health.health_conditions(None, [], HealthThresholds())
    assert {(c["status"], c["reason"]) for c in verdicts} == {("Unknown", "NotReported")}
    conditions, _ = device_health.merge_conditions([], verdicts, "2026-12-01T00:00:00Z")
    assert device_health.summary(conditions) == "NotReported"
    # A figure the device cannot read (no thermal zone) is unknown, the rest judged.
    no_sensor = {key: value for key, value in HEALTHY.items() if key != "temperatureCelsius"}
    assert judge(no_sensor)["Overheating"] == "Unknown"


def test_transitions_are_the_moves_into_and_out_of_a_bad_state() -> None:
    at = "2026-12-01T00:00:00Z"
    first, moved = device_health.merge_conditions(
        [], [device_health.ready_condition("Online", "Connected", "in a session"),
             *device_health.health_conditions(HEALTHY, [], HealthThresholds())], at)
    # A first session is the device coming online; conditions that start good are no news.
    assert [(t.type, t.bad) for t in moved] == [("Ready", False)]
    later = "2026-12-01T00:05:00Z"
    full = {**HEALTHY, "diskFreeBytes": GIB}
    second, moved = device_health.merge_conditions(
        first, device_health.health_conditions(full, first, HealthThresholds()), later)
    assert [(t.type, t.bad, device_health.event_reason(t)) for t in moved] == [
        ("DiskPressure", True, "DiskPressure")]
    message = device_health.event_message("cam-1", moved[0], full)
    assert message.startswith("device cam-1 has DiskPressure: 1.0 GiB of 100.0 GiB free")
    times = {c["type"]: c["lastTransitionTime"] for c in second}
    assert times["DiskPressure"] == later and times["Ready"] == times["MemoryPressure"] == at
    assert device_health.summary(second) == "DiskPressure"
    assert device_health.under_pressure(second) == ("DiskPressure",)
    third, moved = device_health.merge_conditions(
        second, device_health.health_conditions(HEALTHY, second, HealthThresholds()), later)
    assert [device_health.event_reason(t) for t in moved] == ["DiskPressureCleared"]
    _, moved = device_health.merge_conditions(
        third, [device_health.ready_condition("Offline", "Disconnected", "ended")], later)
    assert [device_health.event_reason(t) for t in moved] == ["DeviceOffline"]


@pytest.mark.parametrize(("health", "field"), [
    (pb.Health(cpu_percent=140.0), "heartbeat.health.cpu_percent"),
    (pb.Health(cpu_throttled_percent=float("nan")), "heartbeat.health.cpu_throttled_percent"),
    (pb.Health(memory_available_bytes=5, memory_total_bytes=4),
     "heartbeat.health.memory_available_bytes"),
    (pb.Health(disk_free_bytes=2**63, disk_total_bytes=2**64 - 1),
     "heartbeat.health.disk_free_bytes"),
    (pb.Health(temperature_celsius=5000.0), "heartbeat.health.temperature_celsius"),
    (pb.Health(uptime_seconds=-1.0), "heartbeat.health.uptime_seconds"),
    (pb.Health(kernel="x" * 1000), "heartbeat.health.kernel"),
])
def test_the_gateway_refuses_health_figures_no_device_could_read(health: pb.Health,
                                                                  field: str) -> None:
    with pytest.raises(Refusal) as refused:
        check_health("heartbeat", health, GatewayLimits())
    assert refused.value.field == field


def test_the_gateway_takes_the_figures_a_real_device_reads() -> None:
    check_health("heartbeat", pb.Health(
        cpu_percent=37.5, memory_available_bytes=GIB, memory_total_bytes=4 * GIB,
        disk_free_bytes=0, disk_total_bytes=8 * GIB, temperature_celsius=-20.0,
        uptime_seconds=3600.0, restarts=2, os="Linux", kernel="6.1.0-18-arm64",
        time_ms=1_764_547_200_000), GatewayLimits())


def test_per_device_series_name_the_device_and_only_what_is_wrong() -> None:
    facts = DeviceFacts(approved=True, revoked=False, labels={"site": "plant-7"}, status={
        "conditions": [{"type": "Ready", "status": "True"},
                       {"type": "DiskPressure", "status": "True"},
                       {"type": "Overheating", "status": "False"}],
        "health": {"runtimeVersion": "1.2.3"},
        "models": [{"name": "digits", "version": "2", "state": "Failed"},
                   {"name": "digits", "version": "1", "state": "Ready"}]})
    series = device_series(facts, "Online", ("site", "topology.kubernetes.io/zone"))
    assert series == metrics.DeviceSeries(
        up=True, conditions=("DiskPressure",), runtime_version="1.2.3",
        labels=("plant-7", ""), failed=(("digits", "2"),))
    assert device_series(facts, "Pending", ()).up is None  # never seen: no up series

    metrics.DEVICES.label_keys = ("site", "topology.kubernetes.io/zone")
    metrics.DEVICES.set("fleet", "cam-1", series)
    metrics.DEVICES.set("fleet", "cam-2", metrics.DeviceSeries(up=False))
    try:
        samples = {(family.name, tuple(sorted(sample.labels.items())), sample.value)
                   for family in metrics.DeviceCollector().collect()
                   for sample in family.samples}
    finally:
        metrics.DEVICES.discard("fleet", "cam-1")
        metrics.DEVICES.discard("fleet", "cam-2")
        metrics.DEVICES.label_keys = ()
    def labelled(**labels: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(labels.items()))

    cam_1, cam_2 = {"namespace": "fleet", "device": "cam-1"}, {"namespace": "fleet",
                                                               "device": "cam-2"}
    no_labels = {"label_site": "", "label_topology_kubernetes_io_zone": ""}
    assert samples == {
        ("edgefleet_operator_device_up", labelled(**cam_1), 1),
        ("edgefleet_operator_device_up", labelled(**cam_2), 0),
        ("edgefleet_operator_device_condition", labelled(**cam_1, condition="DiskPressure"), 1),
        ("edgefleet_operator_device_info",
         labelled(**cam_1, **{**no_labels, "label_site": "plant-7"}, runtime_version="1.2.3"), 1),
        ("edgefleet_operator_device_info", labelled(**cam_2, **no_labels, runtime_version=""),
         1),
        ("edgefleet_operator_device_model_failed",
         labelled(**cam_1, model="digits", version="2"), 1),
    }
