"""How the gateway forwards a session's metrics batches: acknowledged only once stored,
a failed one left to the device. The remote writer is a stand-in recording calls; the
real one is exercised against a real Prometheus in the integration tests."""

from __future__ import annotations

import asyncio
from typing import Any

from edgefleet.operator.gateway import server
from edgefleet.operator.gateway.directory import DeviceEntry
from edgefleet.operator.gateway.remote_write import RemoteWriteError
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb


class FlakyWriter:
    def __init__(self, failing: set[int]) -> None:
        self.failing, self.written = failing, []

    async def write(self, namespace: str, device: str, batch: pb.MetricsBatch) -> None:
        if batch.sequence in self.failing:
            raise RemoteWriteError("503 Service Unavailable")
        self.written.append(batch.sequence)


def test_a_batch_prometheus_did_not_take_is_never_acknowledged(monkeypatch: Any) -> None:
    monkeypatch.setattr(server, "FORWARD_RETRY_S", 0.001)
    writer = FlakyWriter(failing={2})

    async def scenario() -> list[int]:
        batches: asyncio.Queue[pb.MetricsBatch] = asyncio.Queue()
        acks: asyncio.Queue[int] = asyncio.Queue()
        for sequence in (1, 2, 3):
            batches.put_nowait(pb.MetricsBatch(sequence=sequence))
        task = asyncio.create_task(server.forward_metrics(
            writer, DeviceEntry("fleet", "cam-1", "cam-1-token"), batches, acks))  # type: ignore[arg-type]
        acked = [await asyncio.wait_for(acks.get(), 5) for _ in range(2)]
        task.cancel()
        return acked

    assert asyncio.run(scenario()) == [1, 3]
    assert writer.written == [1, 3]
