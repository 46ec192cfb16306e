"""What the operator knows of the fleet, as plain values: the planner and the rollout
logic decide on these; fleet.py builds them from the watched objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from edgefleet.operator.analysis import TrafficStats
from edgefleet.operator.resources import (
    Capabilities,
    DeviceData,
    DevicePhase,
    EdgeModelSpec,
    EdgeModelStatus,
)


@dataclass(frozen=True)
class ArtifactCheck:
    """Whether the model's artifact is fetched and verified, and if not, why."""

    ready: bool
    reason: str
    message: str = ""
    digest: str = ""
    size: int = 0


@dataclass(frozen=True)
class ReportedModel:
    """What a device says it holds of one model."""

    version: str
    state: str
    message: str = ""


@dataclass(frozen=True)
class DeviceView:
    """One EdgeDevice as the fleet index keeps it: only what planning needs."""

    name: str
    labels: Mapping[str, str]
    # What it holds, by (model, version): during a switch, or an A/B test, a device
    # holds two versions of one model.
    models: Mapping[tuple[str, str], ReportedModel] = field(default_factory=dict)
    phase: DevicePhase = "Pending"
    last_seen: datetime | None = None
    # What each loaded (model, version) has answered, as last reported.
    traffic: Mapping[tuple[str, str], TrafficStats] = field(default_factory=dict)
    # Its health conditions that hold it back from rollouts (device_health.PRESSURES).
    pressure: tuple[str, ...] = ()
    # What it reported at its last hello: variants are assigned by it.
    capabilities: Capabilities | None = None
    # Per model, what the dataset holds of what it uploaded.
    data: Mapping[str, DeviceData] = field(default_factory=dict)

    def holds(self, model: str) -> bool:
        return any(name == model for name, _ in self.models)

    def offline_for(self, now: datetime) -> float:
        """Seconds since it was last seen while it is Offline; 0 otherwise."""
        if self.phase != "Offline" or self.last_seen is None:
            return 0.0
        return max(0.0, (now - self.last_seen).total_seconds())

    def state_of(self, model: str, version: str) -> str | None:
        report = self.models.get((model, version))
        return report.state if report else None


@dataclass(frozen=True)
class ModelView:
    """One EdgeModel as the fleet index keeps it: only what assignment needs."""

    name: str
    spec: EdgeModelSpec
    # Its status as last written (what devices serve follows from it); empty until then.
    status: EdgeModelStatus = field(default_factory=EdgeModelStatus)
    deleting: bool = False


def parse_time(value: object) -> datetime | None:
    """A time an object holds (the schema checks its format; one without a zone is
    UTC); None if none or malformed."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) and value else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment
