"""The edge's on-disk buffer of metric samples (the gateway's side of them is in
test_metrics_forwarding.py)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.metrics_buffer import MetricsBuffer, sample_registry
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb


def samples(count: int) -> list[pb.MetricSample]:
    return [pb.MetricSample(name="edgefleet_x", labels={"i": str(i)}, value=i)
            for i in range(count)]


def test_batches_wait_on_disk_until_acknowledged_and_survive_a_restart(tmp_path: Path) -> None:
    buffer = MetricsBuffer(tmp_path, max_bytes=2**20)
    first, second = buffer.append(samples(2), 1000), buffer.append(samples(3), 2000)
    assert [b.sequence for b in buffer.pending()] == [first, second]
    assert [b.sequence for b in buffer.pending(after=first)] == [second]
    buffer.acknowledge(first)
    restarted = MetricsBuffer(tmp_path, max_bytes=2**20)
    (kept,) = restarted.pending()
    assert (kept.sequence, kept.timestamp_ms, len(kept.samples)) == (second, 2000, 3)
    restarted.acknowledge(second)
    # Sequences keep growing after a restart, even with nothing left on disk.
    assert MetricsBuffer(tmp_path, max_bytes=2**20).append(samples(1)) == second + 1


def test_past_its_bound_the_oldest_batches_go_and_are_counted(tmp_path: Path) -> None:
    dropped_before = telemetry.METRICS_DROPPED._value.get()
    buffer = MetricsBuffer(tmp_path, max_bytes=2**16)
    for _ in range(40):
        buffer.append(samples(100))
    kept = buffer.pending()
    assert sum(path.stat().st_size for path in tmp_path.glob("*.batch")) <= 2**16
    assert kept[-1].sequence == 40 and len(kept) < 40
    assert telemetry.METRICS_DROPPED._value.get() - dropped_before == (40 - len(kept)) * 100


def test_the_registry_is_sampled_without_created_timestamps() -> None:
    registry = CollectorRegistry()
    Counter("edgefleet_things", "things", ["kind"], registry=registry).labels("a").inc(3)
    (sample,) = sample_registry(registry)
    assert (sample.name, dict(sample.labels), sample.value) == (
        "edgefleet_things_total", {"kind": "a"}, 3.0)


def test_an_unreadable_batch_is_set_aside_and_a_lagging_counter_never_reuses_a_number(
    tmp_path: Path,
) -> None:
    buffer = MetricsBuffer(tmp_path, max_bytes=2**20)
    first = buffer.append(samples(1))
    second = buffer.append(samples(1))
    (tmp_path / f"{first:012d}.batch").write_bytes(b"\xff\xff not a batch")
    assert [b.sequence for b in buffer.pending()] == [second]
    assert (tmp_path / f"{first:012d}.unreadable").exists()
    (tmp_path / "next-sequence").write_text(str(second))  # as after a crash between writes
    assert MetricsBuffer(tmp_path, max_bytes=2**20).append(samples(1)) == second + 1
