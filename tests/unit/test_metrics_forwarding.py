"""How the gateway screens and forwards a session's metrics batches: only the families
the edge runtime emits, with the device's identity forced; acknowledged only once
stored and never ahead of a batch not yet stored. The remote writer is a stand-in
recording calls; the real one is exercised against a real Prometheus in the
integration tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from edgefleet.operator.gateway import server
from edgefleet.operator.gateway.directory import DeviceEntry
from edgefleet.operator.gateway.policy import ByteBudget, GatewayLimits, SessionBudget
from edgefleet.operator.gateway.remote_write import (
    RemoteWriteError,
    RemoteWriter,
    screen_batch,
    write_request,
)
from edgefleet.protocol.device_metrics import ALLOWED_SAMPLES
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

LIMITS = GatewayLimits()
REQUESTS = "edgefleet_inference_requests_total"


class FlakyWriter:
    def __init__(self, failures: dict[int, int]) -> None:
        self.failures, self.written = failures, []

    async def write(self, namespace: str, device: str, batch: pb.MetricsBatch) -> None:
        if self.failures.get(batch.sequence, 0) > 0:
            self.failures[batch.sequence] -= 1
            raise RemoteWriteError("503 Service Unavailable")
        self.written.append(batch.sequence)


def test_a_batch_prometheus_did_not_take_is_retried_before_any_later_one(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(server, "FORWARD_RETRY_S", 0.001)
    writer = FlakyWriter(failures={2: 3})
    budget = SessionBudget(LIMITS, ByteBudget(LIMITS.gateway_queue_bytes))

    async def scenario() -> list[int]:
        batches: asyncio.Queue[tuple[pb.MetricsBatch, int]] = asyncio.Queue()
        outbox: asyncio.Queue[pb.CloudMessage] = asyncio.Queue()
        for sequence in (1, 2, 3):
            batch = pb.MetricsBatch(sequence=sequence)
            assert budget.try_queue(batch.ByteSize())
            batches.put_nowait((batch, batch.ByteSize()))
        task = asyncio.create_task(server.forward_metrics(
            writer, DeviceEntry("fleet", "cam-1", "cam-1-token"), batches, budget, outbox))  # type: ignore[arg-type]
        acked = [(await asyncio.wait_for(outbox.get(), 5)).metrics_ack.sequence
                 for _ in range(3)]
        task.cancel()
        return acked

    assert asyncio.run(scenario()) == [1, 2, 3]
    assert writer.written == [1, 2, 3] and budget.queued == 0


def batch(*samples: pb.MetricSample) -> pb.MetricsBatch:
    return pb.MetricsBatch(sequence=7, timestamp_ms=int(time.time() * 1000), samples=samples)


def test_remote_write_forces_the_devices_identity_on_every_series() -> None:
    screened = screen_batch(batch(pb.MetricSample(
        name=REQUESTS, labels={"model": "m", "version": "1", "outcome": "success"},
        value=1.5)), LIMITS)
    (series,) = write_request("fleet", "cam-1", screened.batch).timeseries
    assert {(label.name, label.value) for label in series.labels} == {
        ("__name__", REQUESTS), ("model", "m"), ("version", "1"), ("outcome", "success"),
        ("namespace", "fleet"), ("device", "cam-1"), ("instance", "fleet/cam-1"),
        ("job", "edgefleet-edge")}
    assert [label.name for label in series.labels] == sorted(label.name for label in series.labels)
    assert series.samples[0].value == 1.5


@pytest.mark.parametrize(("sample", "reason", "said"), [
    # The forgery: an operator series that would silence the offline alert.
    (pb.MetricSample(name="edgefleet_operator_devices",
                     labels={"namespace": "prod", "phase": "Offline"}, value=-1e9),
     "NotAllowed", "not a metric the edge runtime emits"),
    (pb.MetricSample(name=REQUESTS, labels={"model": "m", "version": "1",
                                            "outcome": "x" * 100_000}, value=1),
     "TooLarge", "label 'outcome' has 100000 characters, at most 256"),
    (pb.MetricSample(name=REQUESTS, labels={"model": "m", "job": "edgefleet-operator"},
                     value=1),
     "NotAllowed", "label 'job' is not one of"),
    (pb.MetricSample(name=REQUESTS, labels={"__name__": "up"}, value=1),
     "NotAllowed", "label '__name__'"),
    (pb.MetricSample(name=REQUESTS, labels={f"l{i}": "v" for i in range(9)}, value=1),
     "TooLarge", "9 labels, at most 8"),
    (pb.MetricSample(name=REQUESTS, labels={"model": "m"}, value=-1),
     "Malformed", "is a count: -1.0 is not one"),
    (pb.MetricSample(name="edgefleet_cloud_connected", value=float("inf")),
     "Malformed", "is inf"),
    (pb.MetricSample(name="bad name", value=1), "NotAllowed", "'bad name'"),
])
def test_samples_the_runtime_never_emits_are_refused_and_the_rest_go_on(
    sample: pb.MetricSample, reason: str, said: str,
) -> None:
    good = pb.MetricSample(name="edgefleet_cloud_connected", value=1)
    screened = screen_batch(batch(good, sample), LIMITS)
    assert list(screened.batch.samples) == [good]
    assert dict(screened.refused) == {reason: 1}
    refusal = screened.first_refusal
    assert refusal is not None
    assert (refusal.kind, refusal.field, refusal.reason) == ("metrics", "metrics.samples[1]",
                                                             reason)
    assert said in str(refusal) and refusal.sequence == 7


RUNTIME_FAMILIES = """
import json
from prometheus_client import REGISTRY
import edgefleet.edge_runtime.__main__, edgefleet.edge_runtime.agent, edgefleet.edge_runtime.server
from edgefleet.edge_runtime.metrics_buffer import sample_registry
from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.health import HealthSample
telemetry.HEALTH.sample = HealthSample(*[1] * 8)  # a device that reads every figure
# A labelled family exposes samples only once it has a child: give each one.
for collector in list(REGISTRY._collector_to_names):
    names = getattr(collector, "_labelnames", ())
    if names:
        collector.labels(*["x"] * len(names))
print(json.dumps(sorted({(s.name, tuple(sorted(s.labels))) for s in sample_registry()})))
"""


def test_the_allowlist_is_what_the_edge_runtimes_registry_exposes() -> None:
    """Every sample a runtime sends passes, with no label to spare, and the allowlist
    names no family the runtime does not have (it would be a way in for forgeries)."""
    result = subprocess.run([sys.executable, "-c", RUNTIME_FAMILIES], capture_output=True,
                            text=True, check=True)
    exposed = {name: frozenset(labels) for name, labels in json.loads(result.stdout)}
    assert exposed == ALLOWED_SAMPLES
    assert "edgefleet_edge_requests_rejected_total" in exposed


def test_errors_of_the_remote_writer_never_show_the_urls_credentials() -> None:
    writer = RemoteWriter("http://user:s3cret@127.0.0.1:1/api/v1/write?token=abc123",
                          timeout_s=5)

    async def scenario() -> str:
        try:
            with pytest.raises(RemoteWriteError) as raised:
                await writer.write("fleet", "cam-1", batch(
                    pb.MetricSample(name="edgefleet_cloud_connected", value=1)))
        finally:
            await writer.close()
        return str(raised.value)

    message = asyncio.run(scenario())
    assert "s3cret" not in message and "abc123" not in message and "user" not in message
    assert "http://<redacted>@127.0.0.1:1/api/v1/write?<redacted>" in message
