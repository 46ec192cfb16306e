"""The operator's in-memory view of the fleet, fed by kopf's watches.

kopf's index (see handlers.py) keeps one DeviceView per EdgeDevice, grouped by
namespace; it is rebuilt from the API server on every start. FleetChanges tells the
per-object status loops that something in their namespace changed, so they recompute
at once instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from edgefleet.operator.planner import DeviceView, ModelView, ReportedModel
from edgefleet.operator.resources import ArtifactStatus, EdgeModelSpec


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def device_view(name: str, labels: Mapping[str, str], status: Mapping[str, Any]) -> DeviceView:
    """Reads an EdgeDevice body leniently: a malformed status entry is skipped, never fatal."""
    models: dict[str, ReportedModel] = {}
    for entry in status.get("models") or []:
        if isinstance(entry, Mapping) and entry.get("name"):
            models[str(entry["name"])] = ReportedModel(
                version=str(entry.get("version", "")), state=str(entry.get("state", "")),
                message=str(entry.get("message", "")),
            )
    return DeviceView(
        name=name, labels=dict(labels), models=models,
        phase=status.get("phase") or "Pending", last_seen=parse_time(status.get("lastSeen")),
    )


def model_view(name: str, meta: Mapping[str, Any], spec: Mapping[str, Any],
               status: Mapping[str, Any]) -> ModelView | None:
    """An EdgeModel as the index keeps it; None for a spec that does not parse (its
    status loop reports why)."""
    try:
        parsed = EdgeModelSpec.model_validate(dict(spec))
    except ValidationError:
        return None
    try:
        artifact = ArtifactStatus.model_validate(status["artifact"])
    except (KeyError, ValidationError):
        artifact = None
    return ModelView(name=name, spec=parsed, artifact=artifact,
                     deleting=bool(meta.get("deletionTimestamp")))


class FleetChanges:
    """A change counter per namespace that status loops can wait on."""

    def __init__(self) -> None:
        self._generations: defaultdict[str, int] = defaultdict(int)
        self._changed = asyncio.Condition()

    def generation(self, namespace: str) -> int:
        return self._generations[namespace]

    async def notify(self, namespace: str) -> None:
        async with self._changed:
            self._generations[namespace] += 1
            self._changed.notify_all()

    async def wait(self, namespace: str, seen: int, timeout: float | None) -> None:
        """Returns when the namespace moved past generation `seen`, or after timeout."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._generations[namespace] != seen),
                    timeout,
                )


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
