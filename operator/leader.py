"""Leader election on a coordination.k8s.io/v1 Lease, so that of several operator
replicas exactly one reconciles. The rules are in leader_policy.py; this module only
reads and writes the Lease (optimistic concurrency on resourceVersion).

A replica that cannot renew within the lease duration has lost leadership: it stops
acting at once and exits, and its supervisor restarts it as a standby.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from edgefleet.operator.kubeapi import API_ERRORS
from edgefleet.operator.leader_policy import LeaseRecord, may_acquire

logger = logging.getLogger(__name__)


class LeadershipLost(Exception):
    pass


class LeaderElector:
    def __init__(
        self,
        api: client.CoordinationV1Api,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_s: float,
        renew_s: float,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration_s = duration_s
        self._renew_s = renew_s
        self._seen: LeaseRecord | None = None
        self._seen_at = 0.0

    async def acquire(self) -> None:
        """Returns once this replica holds the lease; waits as a standby until then."""
        logged_wait = False
        while not await self._try_claim_or_log():
            if not logged_wait:
                holder = self._seen.holder if self._seen else None
                logger.info("standing by: lease=%s/%s holder=%s", self._namespace, self._name,
                            holder)
                logged_wait = True
            await asyncio.sleep(self._renew_s)
        logger.info("leading: lease=%s/%s identity=%s", self._namespace, self._name,
                    self.identity)

    async def hold(self) -> None:
        """Renews the lease until cancelled; raises LeadershipLost if renewal fails for
        longer than the lease lasts (another replica may have taken over by then)."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._renew_s)
            if await self._try_claim_or_log():
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self._duration_s:
                raise LeadershipLost(f"could not renew lease {self._namespace}/{self._name} "
                                     f"for {self._duration_s:.0f}s")
            elif self._seen and self._seen.holder != self.identity:
                raise LeadershipLost(f"lease {self._namespace}/{self._name} is now held by "
                                     f"{self._seen.holder}")

    async def release(self) -> None:
        """Gives the lease up on a clean exit, so a standby takes over at once."""
        try:
            lease = await asyncio.to_thread(self._api.read_namespaced_lease, self._name,
                                            self._namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.renew_time = None
            await asyncio.to_thread(self._api.replace_namespaced_lease, self._name,
                                    self._namespace, lease)
            logger.info("released lease %s/%s", self._namespace, self._name)
        except API_ERRORS as error:
            logger.warning("could not release lease %s/%s: %s", self._namespace, self._name,
                           error)

    async def _try_claim_or_log(self) -> bool:
        try:
            return await self._try_claim()
        except API_ERRORS as error:  # the API server is unreachable or refuses: retry
            logger.warning("lease %s/%s: %s", self._namespace, self._name, error)
            return False

    async def _try_claim(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await asyncio.to_thread(self._api.read_namespaced_lease, self._name,
                                            self._namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            return await self._create(now)
        record = LeaseRecord(
            holder=lease.spec.holder_identity,
            duration_s=float(lease.spec.lease_duration_seconds or self._duration_s),
            resource_version=lease.metadata.resource_version,
        )
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        if not may_acquire(record, self.identity, self._seen_at, time.monotonic()):
            return False
        if record.holder != self.identity:
            lease.spec.acquire_time = now
            lease.spec.lease_transitions = (lease.spec.lease_transitions or 0) + 1
        lease.spec.holder_identity = self.identity
        lease.spec.lease_duration_seconds = int(self._duration_s)
        lease.spec.renew_time = now
        try:
            updated = await asyncio.to_thread(self._api.replace_namespaced_lease, self._name,
                                              self._namespace, lease)
        except ApiException as error:
            if error.status == 409:  # someone else wrote first; judge again next round
                return False
            raise
        self._seen = LeaseRecord(self.identity, self._duration_s,
                                 updated.metadata.resource_version)
        self._seen_at = time.monotonic()
        return True

    async def _create(self, now: datetime) -> bool:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity, lease_duration_seconds=int(self._duration_s),
                acquire_time=now, renew_time=now, lease_transitions=0,
            ),
        )
        try:
            await asyncio.to_thread(self._api.create_namespaced_lease, self._namespace, body)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True
