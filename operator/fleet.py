"""The operator's in-memory view of the fleet, fed by the watches (watches.py).

FleetIndex keeps one DeviceView per approved EdgeDevice and one ModelView per EdgeModel,
grouped by namespace; it is rebuilt from the API server on every start. FleetChanges tells a
model's status loop that something it depends on changed, so it recomputes at once
instead of polling: a device's report wakes only the models that select it, and a
model's step republishes only the devices it moves (planner.models_to_wake,
devices_to_wake), so the work of a change grows with what it touches, never with the
fleet squared.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from edgefleet.operator.analysis import TrafficStats
from edgefleet.operator.device_health import under_pressure
from edgefleet.operator.resources import (
    DEVICE_APPROVED_ANNOTATION,
    Capabilities,
    DeviceData,
    EdgeModelSpec,
    EdgeModelStatus,
    VersionInference,
)
from edgefleet.operator.views import DeviceView, ModelView, ReportedModel, parse_time


def approved(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> bool:
    """Whether a device may serve models: one the admin created (it names a bootstrap
    Secret) may; one that registered itself with a fleet token waits for an admin's
    `edgefleet.io/approved=true` (or its policy's auto-approval)."""
    return bool((spec.get("bootstrapTokenSecretRef") or {}).get("name")) or (
        annotations.get(DEVICE_APPROVED_ANNOTATION) == "true")


def device_view(name: str, labels: Mapping[str, str], status: Mapping[str, Any]) -> DeviceView:
    """Reads an EdgeDevice body leniently: a malformed status entry is skipped, never fatal."""
    models: dict[tuple[str, str], ReportedModel] = {}
    for entry in status.get("models") or []:
        if isinstance(entry, Mapping) and entry.get("name"):
            models[(str(entry["name"]), str(entry.get("version", "")))] = ReportedModel(
                version=str(entry.get("version", "")), state=str(entry.get("state", "")),
                message=str(entry.get("message", "")),
            )
    traffic: dict[tuple[str, str], TrafficStats] = {}
    for entry in status.get("inference") or []:
        try:
            seen = VersionInference.model_validate(entry)
        except ValidationError:
            continue
        counts = tuple(seen.latency_counts)  # empty or one per bound and one above them
        traffic[(seen.model, seen.version)] = TrafficStats(
            seen.requests, seen.errors, tuple(seen.latency_bounds_seconds) if counts else (),
            counts, tuple(seen.top_class_counts), seen.labelled, seen.correct)
    data: dict[str, DeviceData] = {}
    for entry in status.get("data") or []:
        try:
            uploaded = DeviceData.model_validate(entry)
        except ValidationError:
            continue
        data[uploaded.model] = uploaded
    conditions = status.get("conditions")
    return DeviceView(capabilities=capabilities_of(status), data=data,
        name=name, labels=dict(labels), models=models,
        phase=status.get("phase") or "Pending", last_seen=parse_time(status.get("lastSeen")),
        traffic=traffic,
        pressure=under_pressure([c for c in conditions if isinstance(c, Mapping)]
                                if isinstance(conditions, list) else []),
    )


def capabilities_of(status: Mapping[str, Any]) -> Capabilities | None:
    """What an EdgeDevice status says the device has; None when absent or malformed."""
    try:
        return Capabilities.model_validate(status["capabilities"])
    except (KeyError, ValidationError):
        return None


def model_view(name: str, meta: Mapping[str, Any], spec: Mapping[str, Any],
               status: Mapping[str, Any]) -> ModelView | None:
    """An EdgeModel as the index keeps it; None for a spec that does not parse (its
    status loop reports why)."""
    try:
        parsed = EdgeModelSpec.model_validate(dict(spec))
    except ValidationError:
        return None
    try:
        parsed_status = EdgeModelStatus.model_validate(dict(status))
    except ValidationError:  # written by an older operator: as if never written
        parsed_status = EdgeModelStatus()
    return ModelView(name=name, spec=parsed, status=parsed_status,
                     deleting=bool(meta.get("deletionTimestamp")))


class FleetIndex:
    """Every approved EdgeDevice and every EdgeModel whose spec parses, by namespace and
    name, as handlers.py keeps them from the watches; `listed` is set once every one
    that existed at start is in."""

    def __init__(self) -> None:
        self.devices: defaultdict[str, dict[str, DeviceView]] = defaultdict(dict)
        self.models: defaultdict[str, dict[str, ModelView]] = defaultdict(dict)
        self.listed = asyncio.Event()

    def devices_in(self, namespace: str) -> list[DeviceView]:
        return list(self.devices.get(namespace, {}).values())

    def models_in(self, namespace: str) -> list[ModelView]:
        return list(self.models.get(namespace, {}).values())


def model_key(namespace: str, name: str) -> str:
    """A change that may move one model's status: its own object, or a report of a
    device its selector matches."""
    return f"model/{namespace}/{name}"


class FleetChanges:
    """Change counters by key that status loops wait on. A notification wakes only the
    loops waiting on its key, so a device's heartbeat does not wake every model."""

    def __init__(self) -> None:
        self._generations: defaultdict[str, int] = defaultdict(int)
        self._events: dict[str, asyncio.Event] = {}

    def generations(self, keys: Iterable[str]) -> dict[str, int]:
        return {key: self._generations[key] for key in keys}

    def notify(self, key: str) -> None:
        self._generations[key] += 1
        event = self._events.pop(key, None)
        if event:
            event.set()

    async def wait(self, seen: Mapping[str, int], timeout: float | None) -> None:
        """Returns when any key moved past its generation in `seen`, or after timeout."""
        if any(self._generations[key] != generation for key, generation in seen.items()):
            return
        waiters = [asyncio.ensure_future(self._events.setdefault(key, asyncio.Event()).wait())
                   for key in seen]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


class PhaseTally:
    """The last phase written for each object, for the `... by phase` gauges."""

    def __init__(self, phases: Iterable[str]) -> None:
        self._phases = tuple(phases)
        self._by_object: dict[tuple[str, str], str] = {}

    def set(self, namespace: str, name: str, phase: str) -> None:
        self._by_object[(namespace, name)] = phase

    def discard(self, namespace: str, name: str) -> None:
        self._by_object.pop((namespace, name), None)

    def counts(self) -> dict[str, int]:
        counted = Counter(self._by_object.values())
        return {phase: counted.get(phase, 0) for phase in self._phases}
