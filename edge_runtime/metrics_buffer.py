"""The device's metric samples on their way to a cloud Prometheus that cannot scrape it
(devices sit behind NAT): sampled from the runtime's own registry, kept on disk until
the fleet gateway acknowledges them, sent again after any reconnect or restart.

One file per batch, `<sequence>.batch`, written atomically; the next sequence number
is kept beside them, so sequences grow across restarts. The directory is bounded:
past `max_bytes` the oldest batches go, and their samples are counted as dropped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from prometheus_client import REGISTRY, CollectorRegistry

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.store import write_atomically
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

SUFFIX = ".batch"
logger = logging.getLogger(__name__)


def sample_registry(registry: CollectorRegistry = REGISTRY) -> list[pb.MetricSample]:
    """Every sample the runtime exposes on /metrics, but the `_created` timestamps
    prometheus_client adds (they say when a series began, not what it measures)."""
    samples = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples.append(pb.MetricSample(name=sample.name, labels=sample.labels,
                                           value=sample.value))
    return samples


class MetricsBuffer:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._max_bytes = max_bytes
        self._sequence_file = directory / "next-sequence"
        try:
            recorded = int(self._sequence_file.read_text())
        except (FileNotFoundError, ValueError):
            recorded = 1
        existing = self._sequences()
        # A crash between a batch and the counter leaves the counter behind: never reuse.
        self._next = max(recorded, existing[-1] + 1 if existing else 1)

    def _sequences(self) -> list[int]:
        return sorted(int(path.stem) for path in self._dir.glob(f"*{SUFFIX}")
                      if path.stem.isdigit())

    def _path(self, sequence: int) -> Path:
        return self._dir / f"{sequence:012d}{SUFFIX}"

    def append(self, samples: list[pb.MetricSample], timestamp_ms: int | None = None) -> int:
        """Stores a batch; returns its sequence."""
        sequence = self._next
        batch = pb.MetricsBatch(sequence=sequence, samples=samples,
                                timestamp_ms=timestamp_ms or int(time.time() * 1000))
        write_atomically(self._path(sequence), batch.SerializeToString())
        self._next = sequence + 1
        write_atomically(self._sequence_file, str(self._next).encode())
        self._enforce_bound()
        return sequence

    def _read(self, sequence: int) -> pb.MetricsBatch | None:
        """A stored batch; None if it went meanwhile (acknowledged, or dropped for the
        bound) or cannot be read back (set aside: it would fail every session)."""
        path = self._path(sequence)
        try:
            return pb.MetricsBatch.FromString(path.read_bytes())
        except FileNotFoundError:
            return None
        except DecodeError:
            path.rename(path.with_suffix(".unreadable"))
            logger.error("metrics batch %s is unreadable; set aside", path)
            return None

    def pending(self, after: int = 0) -> list[pb.MetricsBatch]:
        """The stored batches with a sequence above `after`, oldest first."""
        batches = (self._read(sequence) for sequence in self._sequences() if sequence > after)
        return [batch for batch in batches if batch is not None]

    def acknowledge(self, sequence: int) -> None:
        """The cloud holds every batch up to `sequence`: forget them."""
        for stored in self._sequences():
            if stored <= sequence:
                self._path(stored).unlink(missing_ok=True)

    def _enforce_bound(self) -> None:
        sizes = {}
        for sequence in self._sequences():
            with contextlib.suppress(FileNotFoundError):  # acknowledged meanwhile
                sizes[sequence] = self._path(sequence).stat().st_size
        total = sum(sizes.values())
        for sequence in sorted(sizes)[:-1]:  # the newest batch always stays
            if total <= self._max_bytes:
                break
            batch = self._read(sequence)
            self._path(sequence).unlink(missing_ok=True)
            total -= sizes[sequence]
            telemetry.METRICS_DROPPED.inc(len(batch.samples) if batch else 0)
