"""Whether a device's session is alive, from one Lease per gateway replica rather than a
status write per device.

A gateway knows when each of its sessions begins and ends and writes both at once;
what it cannot write is its own sudden death. Kubernetes answers the same question for
nodes with a Lease each, renewed every few seconds, apart from the Node's status
(written every few minutes). Here the unit that can vanish without a word is the
gateway replica, so each holds one Lease (`GatewayLease`), and the controller
(`GatewayLeases`) judges every device its replica holds by it: a fleet of thousands
costs one renewal per replica every few seconds, and a device's own lastSeen needs
writing only every few minutes.

A Lease is judged by the controller's monotonic clock from when it last saw it change
(as client-go's leader election does), so clocks that disagree never kill a live
gateway. Its `acquireTime` is when this process of the replica began: a session that
began before it belonged to an earlier process under the same name (a restarted
container keeps its pod's name) and is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from edgefleet.operator.kubeapi import API_ERRORS

log = logging.getLogger("edgefleet.operator.liveness")
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "edgefleet-gateway-liveness"
MERGE_PATCH = "application/merge-patch+json"


def leases_at(namespace: str) -> tuple[str, str, str, str]:
    """Where the gateways write their Leases, as the untyped client names it: the typed
    one parses the times it is given and writes a whole second without the
    microseconds the API server requires of a Lease."""
    return "coordination.k8s.io", "v1", namespace, "leases"


# A stopping replica's devices reconnect elsewhere within this (5,000 took 155 s when
# every replica restarted at once on two cores) before they count as Offline.
HANDOVER_S = 180


def lease_name(replica: str) -> str:
    """A DNS-subdomain name for the replica's Lease; the replica itself (a pod's name:
    one per namespace) is the Lease's holderIdentity, kept as it is. A name that had to
    change (a host name may hold characters a Lease's name may not) ends in a hash of
    the replica's, so that two replicas never share a Lease."""
    safe = re.sub(r"[^a-z0-9.-]", "-", replica)[:200].strip("-.")
    if safe != replica:
        safe = f"{safe}-{hashlib.sha256(replica.encode()).hexdigest()[:10]}".lstrip("-.")
    return f"edgefleet-gateway-{safe}"


def micro_time(moment: datetime) -> str:
    """A Lease's times: RFC 3339 with microseconds, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(name: str, replica: str, duration_s: int, started: datetime,
               renewed: datetime) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": {COMPONENT_LABEL: COMPONENT}},
            "spec": {"holderIdentity": replica, "leaseDurationSeconds": duration_s,
                     "acquireTime": micro_time(started), "renewTime": micro_time(renewed)}}


def whole_seconds(moment: datetime) -> datetime:
    """Sessions are stamped in whole seconds; so is the process's start."""
    return moment.replace(microsecond=0)


class GatewayLease:
    """The Lease a gateway replica holds while it serves: created (or taken over from an
    earlier process of the same replica) before the first session, renewed every
    `renew_s`. A replica that stops cleanly renews it a last time for `handover_s`
    (`hand_over`): its devices reconnect to the other replicas meanwhile (thousands of
    them take a while), and turn Offline only if they do not. A renewal after one
    missed for longer than the
    Lease lasts calls `regained`: the controller may have turned the replica's devices
    Offline meanwhile, and their sessions should be written again."""

    def __init__(self, api: client.CustomObjectsApi, *, namespace: str, name: str,
                 replica: str, duration_s: int, renew_s: float,
                 regained: Callable[[], None], handover_s: int = HANDOVER_S) -> None:
        self._api = api
        self._namespace, self._name = namespace, name
        self.replica = replica
        self._duration_s, self._renew_s, self._handover_s = duration_s, renew_s, handover_s
        self._regained = regained
        self.started = whole_seconds(datetime.now(UTC))

    async def take(self) -> None:
        """Holds the Lease as this process; raises the API's error when it cannot."""
        body = lease_body(self._name, self.replica, self._duration_s, self.started,
                          datetime.now(UTC))
        try:
            await asyncio.to_thread(self._api.create_namespaced_custom_object, *leases_at(
                self._namespace), body)
        except ApiException as error:
            if error.status != 409:
                raise
            # An earlier process of this replica left it: this one takes it over.
            await asyncio.to_thread(self._api.patch_namespaced_custom_object,
                                    *leases_at(self._namespace), self._name, body,
                                    _content_type=MERGE_PATCH)
        log.info("gateway lease %s/%s held by %s", self._namespace, self._name, self.replica)

    async def hold(self) -> None:
        """Renews until cancelled; a failure is logged and tried again next time, and a
        Lease deleted by someone else is taken again."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._renew_s)
            lapsed = False
            try:
                await self._renew(self._duration_s)
            except API_ERRORS as error:
                log.warning("gateway lease %s/%s not renewed: %s", self._namespace,
                            self._name, getattr(error, "reason", None) or error)
                if not (isinstance(error, ApiException) and error.status == 404):
                    continue
                try:
                    await self.take()
                except API_ERRORS as again:
                    log.warning("gateway lease %s/%s not taken again: %s", self._namespace,
                                self._name, again)
                    continue
                lapsed = True
            if lapsed or time.monotonic() - renewed > self._duration_s:
                log.warning("gateway lease %s/%s held again after %.0f s: every session's "
                            "status is written again", self._namespace, self._name,
                            time.monotonic() - renewed)
                self._regained()
            renewed = time.monotonic()

    async def hand_over(self) -> None:
        """The replica stops cleanly: its sessions end unwritten, and their devices have
        `handover_s` to reconnect elsewhere before the controller calls them Offline."""
        try:
            await self._renew(self._handover_s)
        except API_ERRORS as error:
            log.warning("gateway lease %s/%s not handed over: %s", self._namespace,
                        self._name, error)

    async def _renew(self, duration_s: int) -> None:
        await asyncio.to_thread(
            self._api.patch_namespaced_custom_object, *leases_at(self._namespace), self._name,
            {"spec": {"renewTime": micro_time(datetime.now(UTC)),
                      "leaseDurationSeconds": duration_s, "holderIdentity": self.replica}},
            _content_type=MERGE_PATCH)


@dataclass
class SeenLease:
    """A gateway's Lease as the controller last saw it change."""

    name: str
    renewed: str  # its renewTime, as written: a change is a renewal
    started: datetime  # its acquireTime: this process of the replica began then
    alive_until: float  # monotonic: a full duration after the renewal was seen
    renewed_at: datetime  # the controller's wall clock when it saw the renewal


class GatewayLeases:
    """The gateway replicas' Leases, read every `poll_s`: which are alive. `run` calls
    `changed` with the replicas whose standing changed (died, came back, began again as
    a new process), so that only their devices are judged again; with None after the
    first read, before which nothing is known (`listed` is False). A replica named by a
    session but not read yet (`unknown`: it may have started since the last read) is
    looked for at once (`look_for`), and judged by what that read finds. A Lease not
    renewed for `forget_s` is deleted (replicas come and go with their pods)."""

    def __init__(self, api: client.CoordinationV1Api, namespace: str, poll_s: float,
                 forget_s: float = 3600.0) -> None:
        self._api = api
        self._namespace = namespace
        self._poll_s, self._forget_s = poll_s, forget_s
        self._seen: dict[str, SeenLease] = {}  # replica -> its Lease
        self._standing: dict[str, datetime] = {}  # the live replicas, and since when
        self._wanted: set[str] = set()  # named by sessions, to be looked for
        self._absent: set[str] = set()  # looked for, and no Lease of theirs found
        self._look_now = asyncio.Event()
        self.listed = False

    def unknown(self, replica: str) -> bool:
        """No Lease of the replica was read, nor looked for since a session named it."""
        return replica not in self._seen and replica not in self._absent

    def look_for(self, replica: str) -> None:
        """A session names the replica: the Leases are read again now, and `changed`
        names it then, whatever was found."""
        self._wanted.add(replica)
        self._look_now.set()

    def alive(self, replica: str, session_since: datetime | None) -> bool:
        """Whether a session the replica began at `session_since` may still be alive
        (judged once `listed`)."""
        started = self._standing.get(replica)
        return started is not None and (session_since is None or session_since >= started)

    def last_alive(self, replica: str) -> datetime | None:
        """When the controller last saw the replica renew its Lease."""
        seen = self._seen.get(replica)
        return seen.renewed_at if seen else None

    async def run(self, changed: Callable[[set[str] | None], None]) -> None:
        while True:
            await self.look(changed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._look_now.wait(), self._poll_s)

    async def look(self, changed: Callable[[set[str] | None], None]) -> None:
        """Reads the Leases once, and tells `changed` whose standing that changed."""
        self._look_now.clear()
        wanted, self._wanted = self._wanted, set()
        try:
            leases = await asyncio.to_thread(
                self._api.list_namespaced_lease, self._namespace,
                label_selector=f"{COMPONENT_LABEL}={COMPONENT}")
        except API_ERRORS as error:  # judged on what was seen: they expire meanwhile
            log.warning("gateway leases not read: %s", error)
            self._wanted |= wanted
            if self.listed:
                self._judge(changed, set())
            return
        self._observe(leases.items)
        for replica in sorted(wanted - self._seen.keys() - self._absent):
            log.info("gateway %s holds no Lease: the sessions it held are over", replica)
        self._absent = (self._absent | wanted) - self._seen.keys()
        self._judge(changed, wanted)
        await self._forget_old()

    def _observe(self, leases: list[client.V1Lease]) -> None:
        now, wall = time.monotonic(), datetime.now(UTC)
        seen: dict[str, SeenLease] = {}  # a deleted Lease is gone here too
        for lease in leases:
            spec = lease.spec
            replica = spec.holder_identity
            if not replica or spec.renew_time is None or spec.acquire_time is None:
                continue
            renewed = spec.renew_time.isoformat()
            before = self._seen.get(replica)
            seen[replica] = before if before is not None and before.renewed == renewed else (
                SeenLease(lease.metadata.name, renewed, whole_seconds(spec.acquire_time),
                          now + (spec.lease_duration_seconds or 0), wall))
        self._seen = seen

    def _judge(self, changed_to: Callable[[set[str] | None], None], looked_for: set[str]
               ) -> None:
        now = time.monotonic()
        standing = {replica: lease.started for replica, lease in self._seen.items()
                    if lease.alive_until > now}
        first, self.listed = not self.listed, True
        changed = {replica for replica in standing.keys() | self._standing.keys()
                   if standing.get(replica) != self._standing.get(replica)}
        self._standing = standing
        if first:
            changed_to(None)
            return
        for replica in sorted(changed):
            log.info("gateway %s %s", replica, "alive" if replica in standing else
                     "gone: its devices are Offline")
        if changed | looked_for:
            changed_to(changed | looked_for)

    async def _forget_old(self) -> None:
        now = time.monotonic()
        for replica, lease in list(self._seen.items()):
            if now - lease.alive_until < self._forget_s:
                continue
            try:
                await asyncio.to_thread(self._api.delete_namespaced_lease, lease.name,
                                        self._namespace)
            except API_ERRORS as error:
                if getattr(error, "status", None) != 404:
                    log.warning("gateway lease %s not deleted: %s", lease.name, error)
                    continue
            log.info("gateway %s silent for %.0f s: its Lease %s deleted", replica,
                     now - lease.alive_until, lease.name)
            del self._seen[replica]
