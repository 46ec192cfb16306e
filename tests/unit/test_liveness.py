"""How the controller judges gateway replicas by their Leases (on a fake clock; the real
API server is exercised by tests/integration/test_operator.py and
test_gateway_replicas.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from edgefleet.operator import liveness

STARTED = datetime(2026, 11, 30, 12, 0, 0, 250000, tzinfo=UTC)


def lease(replica: str, renewed: datetime, duration_s: int = 15,
          started: datetime = STARTED) -> client.V1Lease:
    return client.V1Lease(metadata=client.V1ObjectMeta(name=liveness.lease_name(replica)),
                          spec=client.V1LeaseSpec(holder_identity=replica,
                                                  lease_duration_seconds=duration_s,
                                                  acquire_time=started, renew_time=renewed))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(liveness.time, "monotonic", fake)
    return fake


def test_a_lease_name_is_a_dns_subdomain_whatever_the_host_is_called() -> None:
    for replica in ("Edge_Gateway.Plant-7-4711" + "x" * 300, "_", "gw_1", "GW-1"):
        name = liveness.lease_name(replica)
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", name) and len(name) <= 253
    assert liveness.lease_name("gw-0") == "edgefleet-gateway-gw-0"
    # Names that had to change stay apart.
    assert len({liveness.lease_name(r) for r in ("gw_1", "gw-1", "GW-1", "gw.1")}) == 4


class Listing:
    """What listing the Leases answers (the API server's part, as data)."""

    def __init__(self) -> None:
        self.items: list[client.V1Lease] = []

    def list_namespaced_lease(self, namespace: str, label_selector: str) -> client.V1LeaseList:
        assert label_selector == f"{liveness.COMPONENT_LABEL}={liveness.COMPONENT}"
        return client.V1LeaseList(items=list(self.items))


def test_a_replica_is_alive_for_a_duration_after_a_renewal_is_seen(clock: Clock) -> None:
    listing = Listing()
    leases = liveness.GatewayLeases(listing, "fleet", poll_s=1)  # type: ignore[arg-type]
    changes: list[set[str] | None] = []

    def look(*items: client.V1Lease) -> None:
        listing.items = list(items)
        asyncio.run(leases.look(changes.append))

    since = STARTED + timedelta(seconds=5)
    assert not leases.listed  # nothing read yet: no device is judged
    look(lease("gw-a", STARTED), lease("gw-b", STARTED))
    assert changes == [None] and leases.listed  # the first look: every device is judged
    assert leases.alive("gw-a", since) and not leases.alive("gw-z", since)
    # A session of an earlier process of the same replica (stamped in whole seconds).
    assert leases.alive("gw-a", STARTED.replace(microsecond=0))
    assert not leases.alive("gw-a", STARTED - timedelta(seconds=1))

    clock.now += 14  # gw-a renews; gw-b does not
    look(lease("gw-a", STARTED + timedelta(seconds=14)), lease("gw-b", STARTED))
    assert changes == [None]
    clock.now += 2  # past gw-b's 15 s, seen by this clock, whatever the Lease's times say
    look(lease("gw-a", STARTED + timedelta(seconds=14)), lease("gw-b", STARTED))
    assert changes[-1] == {"gw-b"}
    assert leases.alive("gw-a", since) and not leases.alive("gw-b", since)
    assert leases.last_alive("gw-b") is not None

    # gw-b comes back as a new process; gw-a's Lease is deleted.
    restarted = STARTED + timedelta(minutes=1)
    look(lease("gw-b", restarted, started=restarted))
    assert changes[-1] == {"gw-a", "gw-b"}
    assert not leases.alive("gw-b", since) and leases.alive("gw-b", restarted)
    assert not leases.alive("gw-a", since)


def test_a_replica_a_session_names_before_its_lease_was_read_is_looked_for(
        clock: Clock) -> None:
    listing = Listing()
    leases = liveness.GatewayLeases(listing, "fleet", poll_s=1)  # type: ignore[arg-type]
    changes: list[set[str] | None] = []
    asyncio.run(leases.look(changes.append))
    # A replica that started after the read: not judged, but looked for at once.
    assert leases.unknown("gw-new")
    leases.look_for("gw-new")
    listing.items = [lease("gw-new", STARTED)]
    asyncio.run(leases.look(changes.append))
    assert changes[-1] == {"gw-new"} and leases.alive("gw-new", STARTED)
    # One that holds no Lease when looked for: known as absent, its sessions over.
    leases.look_for("gw-gone")
    asyncio.run(leases.look(changes.append))
    assert changes[-1] == {"gw-gone"}
    assert not leases.unknown("gw-gone") and not leases.alive("gw-gone", STARTED)
