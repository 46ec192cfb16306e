"""Sends what the collector kept (capture.py) to the cloud's dataset over the gateway
session, after everything else the session carries.

Each model's journal goes up in batches of consecutive records (at most BATCH_BYTES, so
that a batch fits the gateway's message limit), at most IN_FLIGHT batches a model
waiting for the cloud's acknowledgement. A record is forgotten only once a DataAck
covers it: the cloud sends one when its dataset holds the record durably. After a cut
or a restart the next session starts again from the first record not acknowledged;
the cloud stores nothing twice (operator/dataset.py).

Uploads never crowd out what the device is for: they go at most `bytes_per_second`
(the link's share a device gives them), within each model's `maxBytesPerDay` (counted
per UTC day, kept on disk across restarts), one batch a time through the session's
writer, which sends reports and heartbeats first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.edge_runtime.capture import Collector
from edgefleet.edge_runtime.store import write_atomically
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

logger = logging.getLogger(__name__)
# Below the gateway's 1 MiB message limit, with room for the batch's own fields.
BATCH_BYTES = 960 << 10
BATCH_RECORDS = 256
IN_FLIGHT = 2
IDLE_POLL_S = 1.0


class DailyBudget:
    """Bytes uploaded per model on the current UTC day, kept in one small file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            document = json.loads(path.read_text())
            self._day, self._bytes = str(document["day"]), dict(document["bytes"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            self._day, self._bytes = "", {}

    def _today(self) -> str:
        return datetime.now(UTC).date().isoformat()

    def used(self, model: str) -> int:
        if self._day != self._today():
            self._day, self._bytes = self._today(), {}
        return int(self._bytes.get(model, 0))

    def spend(self, model: str, size: int) -> None:
        self._bytes[model] = self.used(model) + size
        write_atomically(self._path, json.dumps({"day": self._day,
                                                 "bytes": self._bytes}).encode())


class Uploader:
    def __init__(self, collector: Collector, bytes_per_second: float) -> None:
        self.collector = collector
        self._rate = bytes_per_second
        self._budget = DailyBudget(collector.directory / ".uploaded-today.json")
        # Per model, this session: the last sequence sent, and batches not acknowledged.
        self._sent: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._next_send = 0.0  # monotonic time the pace allows the next batch
        self._told_over_budget: set[str] = set()

    async def run(self, outbox: asyncio.Queue[pb.DeviceMessage]) -> None:
        """Uploads for one session, until it is cancelled with the session."""
        self.restart()
        while True:
            progressed = False
            for model in self.collector.models_with_records():
                batch = await self._next_batch(model, self._sent.get(model, 0))
                if batch is None:
                    continue
                size = sum(len(record.data) for record in batch.records)
                await asyncio.sleep(max(0.0, self._next_send - time.monotonic()))
                self._next_send = max(self._next_send, time.monotonic()) + size / self._rate
                await outbox.put(pb.DeviceMessage(data=batch))
                await asyncio.to_thread(self._budget.spend, model, size)
                self._sent[model] = batch.records[-1].sequence
                self._in_flight[model] = self._in_flight.get(model, 0) + 1
                progressed = True
            if not progressed:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                except TimeoutError:
                    pass

    async def _next_batch(self, model: str, after: int) -> pb.DataBatch | None:
        if self._in_flight.get(model, 0) >= IN_FLIGHT:
            return None
        limit = self.collector.policy(model).max_bytes_per_day
        if self._budget.used(model) >= limit:
            if model not in self._told_over_budget:
                logger.info("model=%s: today's upload budget (%d bytes) is spent; kept "
                            "samples wait for tomorrow", model, limit)
                self._told_over_budget.add(model)
            return None
        self._told_over_budget.discard(model)
        pending = await asyncio.to_thread(self.collector.journal(model).pending, after,
                                          BATCH_RECORDS, BATCH_BYTES)
        batch = pb.DataBatch(model=model)
        for sequence, data in pending:
            batch.records.add(sequence=sequence, data=data)
        return batch if batch.records else None

    def restart(self) -> None:
        """Sends again from the first record not acknowledged (a new session, or one
        that did not take a batch: the cloud stores nothing twice)."""
        self._sent, self._in_flight = {}, {}
        self._wake.set()

    async def acknowledged(self, ack: pb.DataAck) -> None:
        """The cloud holds every record of the model up to the sequence: forget them."""
        if ack.model not in self.collector.models_with_records():
            return  # not a model this device keeps records of (the name is the cloud's)
        await asyncio.to_thread(self.collector.journal(ack.model).acknowledge, ack.sequence)
        self._in_flight[ack.model] = max(0, self._in_flight.get(ack.model, 0) - 1)
        self._wake.set()
