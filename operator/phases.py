"""The controller's part of every EdgeDevice's status (planner.device_status_due says
what it is), kept for the whole fleet by a few tasks instead of one per device: a
device's own watch events say what it is now, and one timer wakes a silent device when
its grace runs out. A task and a finalizer per device cost hundreds of megabytes and a
write each at start for a fleet of thousands; this costs a dict entry per device.

Writes are merge patches of the due fields alone, one device at a time, retried after
a failure; the watch brings each back, and a device whose status is as it should be
costs no write at all.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from kubernetes import client

from edgefleet.operator import kubeapi, metrics, planner
from edgefleet.operator.kubeapi import API_ERRORS
from edgefleet.operator.resources import GROUP, VERSION

log = logging.getLogger("edgefleet.operator.status")
Key = tuple[str, str]
WRITERS = 8  # devices written at once: the API call pool has room for the gateway too
RETRY_S = 1.0


@dataclass(frozen=True)
class DeviceFacts:
    """What the controller's decision reads of one EdgeDevice, as last watched."""

    READS: ClassVar[tuple[str, ...]] = ("phase", "lastSeen", "connection", "modelCount",
                                        "identity")  # of its status

    approved: bool
    revoked: bool
    status: Mapping[str, Any]


class DevicePhases:
    """Every device's controller-written status, from its watch events and deadlines."""

    def __init__(self, api: client.CustomObjectsApi, grace: timedelta,
                 clock: Callable[[], datetime]) -> None:
        self._api = api
        self._grace = grace
        self._clock = clock
        self._facts: dict[Key, DeviceFacts] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._deadlines: list[tuple[float, Key]] = []  # a heap of (monotonic time, device)
        self._deadline_changed = asyncio.Event()

    def observe(self, namespace: str, name: str, facts: DeviceFacts) -> None:
        """A watch event of the device: decides at once, writes soon if anything is due."""
        key = (namespace, name)
        self._facts[key] = facts
        self._decide(key)

    def forget(self, namespace: str, name: str) -> None:
        self._facts.pop((namespace, name), None)
        metrics.DEVICE_PHASES.discard(namespace, name)

    def _due(self, key: Key) -> planner.DeviceStatusDue | None:
        facts = self._facts.get(key)
        if facts is None:
            return None
        return planner.device_status_due(approved=facts.approved, revoked=facts.revoked,
                                         status=facts.status, now=self._clock(),
                                         grace=self._grace)

    def _decide(self, key: Key) -> None:
        """Queues the device for a write if anything is due, and sets its next deadline."""
        started = time.perf_counter()
        due = self._due(key)
        if due is None:
            return
        metrics.DEVICE_PHASES.set(*key, due.phase)
        if not due.patch:  # a reconcile that found nothing to write
            metrics.RECONCILES.labels("EdgeDevice", "unchanged").inc()
            metrics.RECONCILE_SECONDS.labels("EdgeDevice").observe(time.perf_counter() - started)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
        if due.recheck_after_s is not None:
            # Just past the deadline, so the device is judged Offline on waking.
            heapq.heappush(self._deadlines, (time.monotonic() + due.recheck_after_s + 0.05,
                                             key))
            self._deadline_changed.set()

    async def run(self) -> None:
        writers = [asyncio.create_task(self._write_due()) for _ in range(WRITERS)]
        try:
            await self._wake_at_deadlines()
        finally:
            for writer in writers:
                writer.cancel()

    async def _wake_at_deadlines(self) -> None:
        """Looks again at each device whose deadline passed (a later event may have
        moved it: deciding again is cheap, and writes only what is due)."""
        while True:
            self._deadline_changed.clear()
            now = time.monotonic()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, key = heapq.heappop(self._deadlines)
                self._decide(key)
            wait_s = self._deadlines[0][0] - now if self._deadlines else None
            try:
                await asyncio.wait_for(self._deadline_changed.wait(), wait_s)
            except TimeoutError:
                pass

    async def _write_due(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            started = time.perf_counter()
            due = self._due(key)  # what is due now, events since the queueing included
            if due is None or not due.patch:
                continue
            try:
                await kubeapi.call(self._api.patch_namespaced_custom_object_status, GROUP,
                                   VERSION, key[0], "edgedevices", key[1],
                                   {"status": dict(due.patch)})
            except API_ERRORS as error:
                if getattr(error, "status", None) == 404:  # deleted meanwhile
                    self.forget(*key)
                    continue
                metrics.RECONCILES.labels("EdgeDevice", "error").inc()
                metrics.RECONCILE_SECONDS.labels("EdgeDevice").observe(
                    time.perf_counter() - started)
                log.warning("status write failed resource=EdgeDevice namespace=%s name=%s "
                            "error=%s; retrying", key[0], key[1], error)
                await asyncio.sleep(RETRY_S)
                self._decide(key)
                continue
            metrics.RECONCILES.labels("EdgeDevice", "updated").inc()
            metrics.RECONCILE_SECONDS.labels("EdgeDevice").observe(time.perf_counter() - started)
            facts = self._facts.get(key)
            if facts is not None:  # until the watch brings it back: written, not due again
                self._facts[key] = DeviceFacts(facts.approved, facts.revoked,
                                               {**facts.status, **due.patch})
            log.info("status resource=EdgeDevice namespace=%s name=%s %s", key[0], key[1],
                     " ".join(f"{field}={value}" if field != "identity" else "identity=Revoked"
                              for field, value in due.patch.items()))
