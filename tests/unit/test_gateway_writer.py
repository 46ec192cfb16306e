"""How the gateway coalesces a device's reports into status writes (pure policy; the
API client is a recorder, the real one is exercised by the integration tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from edgefleet.operator.gateway.directory import DeviceEntry
from edgefleet.operator.gateway.policy import TokenBucket
from edgefleet.operator.gateway.server import DeviceStatusWriter
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb


class RecordingApi:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    def patch_namespaced_custom_object_status(self, *args: Any) -> None:
        self.writes.append(args[-1]["status"])


def state(state: int) -> list[pb.ModelState]:
    return [pb.ModelState(name="digits", version="1", digest="sha256:x", state=state)]


def test_changes_are_written_at_once_and_quiet_heartbeats_at_most_once_per_interval() -> None:
    api = RecordingApi()
    writer = DeviceStatusWriter(api, DeviceEntry("fleet", "cam-1", "cam-1-token"),  # type: ignore[arg-type]
                                heartbeat_write_s=3600)

    async def scenario() -> None:
        await writer.hello(pb.Capabilities(arch="x86_64", cpus=2), [])
        await writer.models(state(pb.ModelState.LOADING), [])
        for _ in range(5):  # nothing changes: no writes within the interval
            await writer.models(state(pb.ModelState.LOADING), [])
        await writer.models(state(pb.ModelState.READY), [])

    asyncio.run(scenario())
    assert len(api.writes) == 3
    assert api.writes[0]["capabilities"]["arch"] == "x86_64" and api.writes[0]["models"] == []
    assert [w["models"][0]["state"] for w in api.writes[1:]] == ["Loading", "Ready"]
    assert all("lastSeen" in w for w in api.writes)


def test_a_quiet_heartbeat_after_the_interval_refreshes_only_last_seen() -> None:
    api = RecordingApi()
    writer = DeviceStatusWriter(api, DeviceEntry("fleet", "cam-1", "cam-1-token"),  # type: ignore[arg-type]
                                heartbeat_write_s=0)

    async def scenario() -> None:
        await writer.models(state(pb.ModelState.READY), [])
        await writer.models(state(pb.ModelState.READY), [])

    asyncio.run(scenario())
    assert len(api.writes) == 2
    assert "models" in api.writes[0] and set(api.writes[1]) == {"lastSeen"}


def stats(requests: int, **fields: Any) -> pb.VersionStats:
    return pb.VersionStats(model="digits", version="1", requests=requests, errors=1,
                           latency_bounds_seconds=[0.001, 0.01], latency_counts=[3, 1, 0],
                           **fields)


def test_statistics_ride_on_interval_writes_and_only_when_they_changed() -> None:
    api = RecordingApi()
    writer = DeviceStatusWriter(api, DeviceEntry("fleet", "cam-1", "cam-1-token"),  # type: ignore[arg-type]
                                heartbeat_write_s=0)

    async def scenario() -> None:
        await writer.models(state(pb.ModelState.READY), [stats(4)])
        await writer.models(state(pb.ModelState.READY), [stats(4)])
        await writer.models(state(pb.ModelState.READY), [stats(9)])

    asyncio.run(scenario())
    assert [w.get("inference", [{}])[0].get("requests") for w in api.writes] == [4, None, 9]
    assert api.writes[0]["inference"][0]["latencyCounts"] == [3, 1, 0]


def test_a_device_changing_state_in_a_loop_is_written_at_a_bounded_rate() -> None:
    """Each change is written: a burst at once, then no faster than the device's
    allowance refills, across its sessions."""
    api = RecordingApi()
    entry = DeviceEntry("fleet", "cam-1", "cam-1-token")
    writes = TokenBucket(rate=20, burst=2)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for session in range(2):  # a reconnect does not reset the allowance
            writer = DeviceStatusWriter(api, entry, heartbeat_write_s=3600,  # type: ignore[arg-type]
                                        writes=writes)
            for i in range(3):
                await writer.models(state(pb.ModelState.LOADING + (i + session) % 2), [])
        return loop.time() - started

    took = asyncio.run(scenario())
    assert len(api.writes) == 6
    assert took >= (6 - 2) / 20 * 0.99  # four writes past the burst, at 20 a second
