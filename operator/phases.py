"""The controller's part of every EdgeDevice's status (planner.device_status_due says
what it is), kept for the whole fleet by a few tasks instead of one per device: a
device's own watch events say what it is now, and its gateway's Lease (liveness.py)
whether the session it names is alive; a gateway that dies wakes only its devices. A
task and a finalizer per device cost hundreds of megabytes and a write each at start
for a fleet of thousands; this costs a dict entry per device.

Writes are merge patches of the due fields alone, one device at a time, retried after
a failure; the watch brings each back, and a device whose status is as it should be
costs no write at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from kubernetes import client

from edgefleet.operator import device_health, kubeapi, metrics, planner
from edgefleet.operator.gateway.policy import TokenBucket
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
                                        "identity", "conditions", "observedGeneration",
                                        "health", "models")  # of its status

    approved: bool
    revoked: bool
    status: Mapping[str, Any]
    generation: int | None = None
    uid: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The version the decision read: the write applies only to it (a gateway may have
    # written the device since, e.g. a new session's hello).
    resource_version: str = ""


class Gateways(planner.GatewayStanding, Protocol):
    """The gateway replicas as liveness.GatewayLeases knows them."""

    listed: bool  # their Leases were read: no device is judged before

    def unknown(self, replica: str) -> bool: ...

    def look_for(self, replica: str) -> None: ...


class DevicePhases:
    """Every device's controller-written status, from its watch events and its gateway's
    standing (`gateway_changed`)."""

    def __init__(self, api: client.CustomObjectsApi, gateways: Gateways,
                 core: client.CoreV1Api | None = None) -> None:
        """`core`: for the Events of devices turned Offline (none without it)."""
        self._api = api
        self._core = core
        # Events within the fleet's rate, posted apart from the writes.
        self._events = TokenBucket(device_health.EVENTS_PER_SECOND, device_health.EVENT_BURST)
        self._posting: set[asyncio.Task[None]] = set()
        self._gateways = gateways
        self._facts: dict[Key, DeviceFacts] = {}
        self._by_gateway: dict[str, set[Key]] = defaultdict(set)  # replica -> its devices
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()

    def observe(self, namespace: str, name: str, facts: DeviceFacts) -> None:
        """A watch event of the device: decides at once, writes soon if anything is due."""
        key = (namespace, name)
        self._index(key, self._facts.get(key), facts)
        self._facts[key] = facts
        self._decide(key)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self._index(key, self._facts.pop(key, None), None)
        metrics.DEVICE_PHASES.discard(namespace, name)
        metrics.DEVICES.discard(namespace, name)

    def gateway_changed(self, replicas: set[str] | None) -> None:
        """These gateway replicas died, came back or began again (None: the first look at
        all of them): their devices are judged again."""
        keys = (list(self._facts) if replicas is None else
                [key for replica in replicas for key in self._by_gateway.get(replica, ())])
        for key in keys:
            self._decide(key)

    def _index(self, key: Key, before: DeviceFacts | None, after: DeviceFacts | None) -> None:
        was, now = gateway_of(before), gateway_of(after)
        if was == now:
            return
        if was is not None:
            self._by_gateway[was].discard(key)
            if not self._by_gateway[was]:
                del self._by_gateway[was]
        if now is not None:
            self._by_gateway[now].add(key)

    def _due(self, key: Key) -> planner.DeviceStatusDue | None:
        facts = self._facts.get(key)
        if facts is None:
            return None
        return planner.device_status_due(approved=facts.approved, revoked=facts.revoked,
                                         status=facts.status, gateways=self._gateways,
                                         generation=facts.generation)

    def _decide(self, key: Key) -> None:
        """Queues the device for a write if anything is due, once its gateway's Lease
        was looked for (until then a session's standing is not known)."""
        if not self._gateways.listed:
            return
        gateway = gateway_of(self._facts.get(key))
        if gateway is not None and self._gateways.unknown(gateway):
            # A replica begun since the last read of the Leases, most likely: looked for
            # now, and its devices judged by what is found.
            self._gateways.look_for(gateway)
            return
        started = time.perf_counter()
        due = self._due(key)
        if due is None:
            return
        metrics.DEVICE_PHASES.set(*key, due.phase)
        facts = self._facts[key]
        metrics.DEVICES.set(*key, device_series(facts, due.phase, metrics.DEVICES.label_keys))
        if not due.patch:  # a reconcile that found nothing to write
            metrics.RECONCILES.labels("EdgeDevice", "unchanged").inc()
            metrics.RECONCILE_SECONDS.labels("EdgeDevice").observe(time.perf_counter() - started)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def run(self) -> None:
        writers = [asyncio.create_task(self._write_due()) for _ in range(WRITERS)]
        try:
            await asyncio.gather(*writers)
        finally:
            for writer in writers:
                writer.cancel()

    async def _write_due(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            started = time.perf_counter()
            due = self._due(key)  # what is due now, events since the queueing included
            if due is None or not due.patch:
                continue
            facts = self._facts.get(key)
            precondition = ({"metadata": {"resourceVersion": facts.resource_version}}
                            if facts and facts.resource_version else {})
            try:
                await kubeapi.call(self._api.patch_namespaced_custom_object_status, GROUP,
                                   VERSION, key[0], "edgedevices", key[1],
                                   {**precondition, "status": dict(due.patch)})
            except API_ERRORS as error:
                if getattr(error, "status", None) == 404:  # deleted meanwhile
                    self.forget(*key)
                    continue
                if getattr(error, "status", None) == 409:
                    # Written since it was read: the watch brings that version, and the
                    # decision is made again on it.
                    metrics.RECONCILES.labels("EdgeDevice", "conflict").inc()
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
                self._facts[key] = dataclasses.replace(facts,
                                                       status={**facts.status, **due.patch})
            for transition in due.transitions:
                self._post(key, facts.uid if facts else "", transition)
            log.info("status resource=EdgeDevice namespace=%s name=%s %s", key[0], key[1],
                     " ".join(f"{field}={value}" if field != "identity" else "identity=Revoked"
                              for field, value in due.patch.items()))


    def _post(self, key: Key, uid: str, transition: device_health.Transition) -> None:
        if self._core is None:
            return
        if not self._events.available():
            metrics.EVENTS_DROPPED.labels("controller").inc()
            return
        self._events.take()
        posting = asyncio.create_task(kubeapi.post_device_event(
            self._core, namespace=key[0], name=key[1], uid=uid,
            reason=device_health.event_reason(transition),
            message=device_health.event_message(key[1], transition, None),
            kind="Warning" if transition.bad else "Normal", component="edgefleet-operator"))
        self._posting.add(posting)
        posting.add_done_callback(self._posting.discard)


def gateway_of(facts: DeviceFacts | None) -> str | None:
    return planner.session_gateway(facts.status) if facts else None


def device_series(facts: DeviceFacts, phase: str,
                  label_keys: tuple[str, ...]) -> metrics.DeviceSeries:
    """The per-device series of a device as watched, in the phase the controller judged.
    An offline device's conditions are its last word, not news: no condition series (its
    offline alert says it all)."""
    status = facts.status
    conditions = status.get("conditions")
    health = status.get("health")
    models = status.get("models")
    return metrics.DeviceSeries(
        up=None if phase == "Pending" else phase == "Online",
        conditions=tuple(str(c.get("type")) for c in (conditions or [])
                         if phase == "Online" and isinstance(c, Mapping)
                         and c.get("status") == "True"
                         and c.get("type") in device_health.HEALTH_CONDITIONS),
        runtime_version=str(health.get("runtimeVersion") or "")
        if isinstance(health, Mapping) else "",
        labels=tuple(facts.labels.get(key, "") for key in label_keys),
        failed=tuple((str(m.get("name")), str(m.get("version"))) for m in (models or [])
                     if isinstance(m, Mapping) and m.get("state") == "Failed"))
