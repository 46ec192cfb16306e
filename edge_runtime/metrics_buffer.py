"""The device's metric samples on their way to a cloud Prometheus that cannot scrape it
(devices sit behind NAT): sampled from the runtime's own registry, kept on disk until
the fleet gateway acknowledges them, sent again after any reconnect or restart.

The batches are records of a `journal.Journal`: one file each, `<sequence>.batch`, with
sequences that grow across restarts. It is bounded: past `max_bytes` the oldest batches
go, and their samples are counted as dropped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from prometheus_client import REGISTRY, CollectorRegistry

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.journal import Journal
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
        self._journal = Journal(directory, max_bytes, SUFFIX, on_drop=self._count_dropped)

    def append(self, samples: list[pb.MetricSample], timestamp_ms: int | None = None) -> int:
        """Stores a batch; returns its sequence."""
        timestamp_ms = timestamp_ms or int(time.time() * 1000)
        # The batch names its own sequence: the session sends it, the cloud acknowledges it.
        return self._journal.append_encoded(
            lambda sequence: pb.MetricsBatch(sequence=sequence, samples=samples,
                                             timestamp_ms=timestamp_ms).SerializeToString())

    def pending(self, after: int = 0) -> list[pb.MetricsBatch]:
        """The stored batches with a sequence above `after`, oldest first; one that
        cannot be read back is set aside (it would fail every session)."""
        batches = []
        for sequence, data in self._journal.pending(after):
            try:
                batches.append(pb.MetricsBatch.FromString(data))
            except DecodeError as error:
                self._journal.set_aside(sequence, f"not a metrics batch: {error}")
        return batches

    def acknowledge(self, sequence: int) -> None:
        """The cloud holds every batch up to `sequence`: forget them."""
        self._journal.acknowledge(sequence)

    def _count_dropped(self, sequence: int, data: bytes) -> None:
        try:
            dropped = len(pb.MetricsBatch.FromString(data).samples)
        except DecodeError:
            logger.error("metrics batch %d, dropped for the bound, was unreadable", sequence)
            dropped = 0
        telemetry.METRICS_DROPPED.inc(dropped)
