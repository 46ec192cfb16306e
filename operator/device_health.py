"""A device's health as its EdgeDevice status shows it, in the manner of a Node's: the
figures its heartbeats carry (`status.health`, checked by gateway/policy.check_health),
the conditions they make against the thresholds the admin sets, a one-word summary for
the printer column, and the transitions that become Events.

Pure: the gateway computes them on every heartbeat it takes, the controller when it
turns a device Offline for a gateway that died. Conditions are plain status dicts
(camelCase, times as strings): thousands of devices report every few seconds, and most
reports change nothing.

A condition's message names the threshold, not the figure, so that it stays put while
the figure moves (the figure is in status.health; the Event of a transition quotes it).
A pressure clears only once its figure is back past the threshold by a margin, so that
a figure hovering at the threshold does not flap.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

READY = "Ready"
MEMORY_PRESSURE = "MemoryPressure"
DISK_PRESSURE = "DiskPressure"
OVERHEATING = "Overheating"
CLOCK_SKEW = "ClockSkew"
# The conditions under which a rollout holds a device back: a new version would make
# them worse (a download, a second session in memory, more heat).
PRESSURES = (MEMORY_PRESSURE, DISK_PRESSURE, OVERHEATING)
HEALTH_CONDITIONS = (*PRESSURES, CLOCK_SKEW)
NOT_REPORTED = "NotReported"
HEALTHY = "Healthy"
# How far back past its threshold a figure must be before its condition clears.
PERCENT_MARGIN = 2.0
CELSIUS_MARGIN = 5.0
CLOCK_MARGIN = 0.9  # of the threshold

# Device Events for the whole fleet, each poster on its own: a gateway replica that dies
# turns thousands of devices Offline at once, and the status says it all anyway.
EVENTS_PER_SECOND = 20.0
EVENT_BURST = 200

ConditionStatus = Literal["True", "False", "Unknown"]
Condition = dict[str, Any]


@dataclass(frozen=True)
class HealthThresholds:
    """Where a device's figures make a condition True (operator flags, chart values)."""

    memory_available_percent: float = 10.0  # MemoryPressure below this share of total
    disk_free_percent: float = 10.0  # DiskPressure below this share of the data dir's disk
    temperature_celsius: float = 85.0  # Overheating above this
    clock_offset_seconds: float = 60.0  # ClockSkew beyond this, either way


@dataclass(frozen=True)
class Transition:
    """A condition that turned bad, or good again: an Event."""

    type: str
    bad: bool  # it turned bad (Warning), else it cleared (Normal)
    reason: str
    message: str


def _verdict(type_: str, status: ConditionStatus, reason: str, message: str) -> Condition:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def _share_below(value: object, total: object, percent: float, was_true: bool) -> bool | None:
    if not isinstance(value, int) or not isinstance(total, int) or total <= 0:
        return None
    limit = min(100.0, percent + (PERCENT_MARGIN if was_true else 0.0))
    return value * 100 < limit * total


@functools.lru_cache(maxsize=16)
def _verdicts(thresholds: HealthThresholds) -> dict[tuple[str, str], Condition]:
    """Every verdict the thresholds can give, by (type, reason): built once and shared,
    never changed (a gateway judges thousands of heartbeats a minute)."""
    memory = f"{thresholds.memory_available_percent:g}% of its memory"
    disk = f"{thresholds.disk_free_percent:g}% of the data directory's disk"
    heat = f"{thresholds.temperature_celsius:g} °C"
    clock = f"{thresholds.clock_offset_seconds:g} s"
    verdicts = [
        _verdict(MEMORY_PRESSURE, "Unknown", "NotMeasured", "the runtime reads no memory figures"),
        _verdict(MEMORY_PRESSURE, "True", "MemoryLow", f"less than {memory} is available"),
        _verdict(MEMORY_PRESSURE, "False", "MemorySufficient", f"{memory} or more is available"),
        _verdict(DISK_PRESSURE, "Unknown", "NotMeasured", "the runtime reads no disk figures"),
        _verdict(DISK_PRESSURE, "True", "DiskLow", f"less than {disk} is free"),
        _verdict(DISK_PRESSURE, "False", "DiskSufficient", f"{disk} or more is free"),
        _verdict(OVERHEATING, "Unknown", "NoThermalZone", "the device exposes no temperature"),
        _verdict(OVERHEATING, "True", "TooHot", f"the hottest zone is above {heat}"),
        _verdict(OVERHEATING, "False", "TemperatureNormal", f"every zone is at {heat} or below"),
        _verdict(CLOCK_SKEW, "Unknown", "NotMeasured", "the runtime sends no clock reading"),
        _verdict(CLOCK_SKEW, "True", "ClockOffset",
                 f"the device's clock is more than {clock} off the gateway's"),
        _verdict(CLOCK_SKEW, "False", "ClockInSync", f"within {clock} of the gateway's clock"),
        *(_verdict(type_, "Unknown", NOT_REPORTED,
                   "the runtime reports no health (older than health reporting)")
          for type_ in HEALTH_CONDITIONS)]
    return {(verdict["type"], verdict["reason"]): verdict for verdict in verdicts}


def _reason(type_: str, health: Mapping[str, Any] | None, thresholds: HealthThresholds,
            was_true: bool) -> str:
    """The reason of one health condition's verdict on the figures (None: the runtime
    reports none)."""
    if health is None:
        return NOT_REPORTED
    if type_ == MEMORY_PRESSURE:
        low = _share_below(health.get("memoryAvailableBytes"), health.get("memoryTotalBytes"),
                           thresholds.memory_available_percent, was_true)
        return "NotMeasured" if low is None else "MemoryLow" if low else "MemorySufficient"
    if type_ == DISK_PRESSURE:
        low = _share_below(health.get("diskFreeBytes"), health.get("diskTotalBytes"),
                           thresholds.disk_free_percent, was_true)
        return "NotMeasured" if low is None else "DiskLow" if low else "DiskSufficient"
    if type_ == OVERHEATING:
        celsius = health.get("temperatureCelsius")
        if not isinstance(celsius, (int, float)):
            return "NoThermalZone"
        limit = thresholds.temperature_celsius - (CELSIUS_MARGIN if was_true else 0.0)
        return "TooHot" if celsius > limit else "TemperatureNormal"
    offset = health.get("clockOffsetSeconds")
    if not isinstance(offset, (int, float)):
        return "NotMeasured"
    limit = thresholds.clock_offset_seconds * (CLOCK_MARGIN if was_true else 1.0)
    return "ClockOffset" if abs(offset) > limit else "ClockInSync"


def _figures(type_: str, health: Mapping[str, Any] | None) -> str:
    """The figures behind a condition, for its Event."""
    if health is None:
        return ""
    if type_ == MEMORY_PRESSURE:
        return (f": {_size(health.get('memoryAvailableBytes'))} of "
                f"{_size(health.get('memoryTotalBytes'))} available")
    if type_ == DISK_PRESSURE:
        return (f": {_size(health.get('diskFreeBytes'))} of "
                f"{_size(health.get('diskTotalBytes'))} free")
    if type_ == OVERHEATING and isinstance(health.get("temperatureCelsius"), (int, float)):
        return f": {health['temperatureCelsius']:.1f} °C"
    if type_ == CLOCK_SKEW and isinstance(health.get("clockOffsetSeconds"), (int, float)):
        offset = health["clockOffsetSeconds"]
        return f": {abs(offset):.1f} s {'ahead' if offset > 0 else 'behind'}"
    return ""


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def ready_condition(phase: str, reason: str, message: str) -> Condition:
    """The Ready condition that goes with a device's phase."""
    return _verdict(READY, "True" if phase == "Online" else "False", reason, message)


def merge_conditions(previous: Sequence[Mapping[str, Any]], verdicts: Sequence[Condition],
                     now: str) -> tuple[list[Condition], list[Transition]]:
    """`previous` with each verdict in place of its type's condition (others kept, in
    their order; new types after them); lastTransitionTime moves only when a status
    does. The transitions into a bad state and out of one, for Events: Ready True is
    good (no Ready yet is bad), the other conditions True are bad."""
    by_type = {str(c.get("type")): c for c in previous}
    transitions: list[Transition] = []
    merged: dict[str, Condition] = {key: dict(c) for key, c in by_type.items()}
    for verdict in verdicts:
        before = by_type.get(verdict["type"])
        moved = before is None or before.get("status") != verdict["status"]
        merged[verdict["type"]] = {**verdict, "lastTransitionTime": (
            now if moved or before is None else before.get("lastTransitionTime", now))}
        if moved:
            # A device never Ready before was not online: its first Ready is news.
            was_bad = _bad(before) if before else verdict["type"] == READY
            bad = _bad(verdict)
            if bad != was_bad:
                transitions.append(Transition(verdict["type"], bad, verdict["reason"],
                                              verdict["message"]))
    return list(merged.values()), transitions


def unchanged(previous: Sequence[Mapping[str, Any]], verdicts: Sequence[Condition]) -> bool:
    """Whether every verdict is already what `previous` says (most heartbeats)."""
    by_type = {c.get("type"): c for c in previous}
    for verdict in verdicts:
        before = by_type.get(verdict["type"])
        if before is None or before.get("status") != verdict["status"] or before.get(
                "reason") != verdict["reason"] or before.get("message") != verdict["message"]:
            return False
    return True


def _bad(condition: Mapping[str, Any]) -> bool:
    if condition.get("type") == READY:
        return condition.get("status") != "True"
    return condition.get("status") == "True"


def health_conditions(health: Mapping[str, Any] | None, previous: Sequence[Mapping[str, Any]],
                      thresholds: HealthThresholds) -> list[Condition]:
    """The verdicts on MemoryPressure, DiskPressure, Overheating and ClockSkew."""
    was_true = {str(c.get("type")) for c in previous if c.get("status") == "True"}
    verdicts = _verdicts(thresholds)
    return [verdicts[(type_, _reason(type_, health, thresholds, type_ in was_true))]
            for type_ in HEALTH_CONDITIONS]


def event_message(device: str, transition: Transition, health: Mapping[str, Any] | None) -> str:
    """An Event's message for a transition, quoting the figures behind it."""
    if transition.type == READY:
        return f"device {device} is {'offline' if transition.bad else 'online'}: " + (
            transition.message)
    state = "has" if transition.bad else "no longer has"
    return (f"device {device} {state} {transition.type}{_figures(transition.type, health)} "
            f"({transition.message})")


def event_reason(transition: Transition) -> str:
    """DeviceOnline and DeviceOffline for Ready; the condition's type when it turns
    bad, and <type>Cleared when it clears."""
    if transition.type == READY:
        return "DeviceOffline" if transition.bad else "DeviceOnline"
    return transition.type if transition.bad else f"{transition.type}Cleared"


def summary(conditions: Sequence[Mapping[str, Any]]) -> str:
    """The printer column: the health conditions that are True, comma-separated;
    NotReported when the runtime sends no health; otherwise Healthy."""
    bad = [str(c["type"]) for c in conditions
           if c.get("type") in HEALTH_CONDITIONS and c.get("status") == "True"]
    if bad:
        return ",".join(bad)
    if any(c.get("reason") == NOT_REPORTED for c in conditions):
        return NOT_REPORTED
    return HEALTHY


def under_pressure(conditions: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The pressures that hold the device back from a rollout now."""
    return tuple(str(c["type"]) for c in conditions
                 if c.get("type") in PRESSURES and c.get("status") == "True")
