"""How the gateway turns a session's reports into EdgeDevice status writes: when a write
is due (StatusSchedule, on a fake clock), and what DeviceStatusWriter writes against an
API object that applies merge and JSON patches as the API server does (the real one is
exercised by tests/integration/test_gateway_liveness.py)."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from edgefleet.operator.device_health import Transition
from edgefleet.operator.gateway.directory import DeviceEntry
from edgefleet.operator.gateway.policy import GatewayLimits, Refusal, StatusSchedule, TokenBucket
from edgefleet.operator.gateway.server import DeviceStatusWriter
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

DIGEST = "sha256:" + "a" * 64
# Short intervals, so that the writer's own clock runs the scenarios in a second or two.
FAST = replace(GatewayLimits(), status_settle_seconds=0.15, status_max_delay_seconds=0.5,
               status_progress_seconds=0.5,
               status_retry_seconds=0.05, status_max_retry_seconds=0.2)


# ---------------------------------------------------------------- when a write is due


def test_a_change_of_what_a_device_holds_is_due_once_it_has_settled() -> None:
    schedule = StatusSchedule(GatewayLimits(), heartbeat_s=60)
    schedule.written(0.0)
    for at in (10.0, 10.1, 10.3):  # Downloading, Verifying, Loading within 0.3 s
        schedule.changed(at)
    assert schedule.due() == pytest.approx(10.8)  # 0.5 s after the last change


def test_a_state_that_keeps_changing_is_due_within_the_max_delay() -> None:
    schedule = StatusSchedule(GatewayLimits(), heartbeat_s=60)
    schedule.written(0.0)
    for step in range(30):
        schedule.changed(10.0 + 0.3 * step)
    assert schedule.due() == pytest.approx(15.0)  # 5 s after the first unwritten change


def test_a_model_on_its_way_is_written_every_progress_interval_and_its_end_at_once() -> None:
    schedule = StatusSchedule(GatewayLimits(), heartbeat_s=60)
    schedule.written(0.0)
    schedule.changed(10.0, passing=True)  # Downloading, slow: thousands of devices fetch
    assert schedule.due() == pytest.approx(40.0)
    schedule.changed(32.0, passing=False)  # Ready after 22 s: one write for the whole way
    assert schedule.due() == pytest.approx(15.0)  # overdue: written at once


def test_a_device_heard_from_is_due_once_per_heartbeat_interval() -> None:
    schedule = StatusSchedule(GatewayLimits(), heartbeat_s=60)
    schedule.written(0.0)
    assert schedule.due() is None  # nothing heard, nothing changed: nothing to write
    schedule.heard(5.0)
    assert schedule.due() == 60.0
    schedule.written(60.0)
    assert schedule.due() is None


def test_new_statistics_are_due_per_heartbeat_interval_a_last_seen_alone_less_often() -> None:
    schedule = StatusSchedule(GatewayLimits(), heartbeat_s=60, last_seen_s=300)
    schedule.written(0.0)
    schedule.heard(5.0)  # the same figures as written: only lastSeen would move
    assert schedule.due() == 300.0
    schedule.heard(7.0)
    schedule.news()  # its versions answered requests since
    assert schedule.due() == 60.0
    schedule.written(60.0)
    schedule.heard(65.0)
    assert schedule.due() == 360.0


def test_what_changed_while_a_write_was_on_its_way_stays_due() -> None:
    schedule = StatusSchedule(GatewayLimits(), heartbeat_s=60)
    schedule.changed(10.0)
    schedule.changed(10.7)  # after the write below took its state
    schedule.written(10.5)
    assert schedule.due() == pytest.approx(11.2)
    schedule.written(11.2)
    assert schedule.due() is None


def test_failed_writes_back_off_doubling_up_to_the_maximum() -> None:
    limits = GatewayLimits()
    schedule = StatusSchedule(limits, heartbeat_s=60)
    schedule.at_once()
    assert schedule.due() == -math.inf
    retries = []
    for _ in range(7):
        schedule.failed(100.0)
        retries.append(schedule.due())
    assert retries == [101.0, 102.0, 104.0, 108.0, 116.0, 130.0, 130.0]
    schedule.written(130.0)
    schedule.at_once()
    schedule.failed(200.0)
    assert schedule.due() == 201.0  # a success starts the backoff over


# ---------------------------------------------------------------- what is written


def unprocessable(details: dict[str, Any]) -> ApiException:
    error = ApiException(status=422, reason="Unprocessable Entity")
    error.body = json.dumps({"kind": "Status", "code": 422, "details": details,
                             "message": "the server rejected our request"})
    return error


class FakeApi:
    """One EdgeDevice's status, patched as the API server patches it: a merge patch
    merges, a JSON patch applies all its ops or none (a failed `test` is a 422 naming no
    cause); `invalid` names what the schema refuses (a 422 with causes), and `failures`
    are errors to answer the next calls with."""

    def __init__(self, invalid: Callable[[dict[str, Any]], str | None] = lambda _: None
                 ) -> None:
        self.status: dict[str, Any] = {}
        self.writes: list[tuple[Any, str]] = []  # (patch, content type), applied or not
        self.failures: list[Exception] = []
        self.invalid = invalid
        self._lock = threading.Lock()

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str,
                                              plural: str, name: str, body: Any, *,
                                              _content_type: str) -> dict[str, Any]:
        with self._lock:
            self.writes.append((copy.deepcopy(body), _content_type))
            if self.failures:
                raise self.failures.pop(0)
            if _content_type == "application/merge-patch+json":
                status = {**self.status, **copy.deepcopy(body["status"])}
            else:
                status = copy.deepcopy(self.status)
                for op in body:
                    key = op["path"].removeprefix("/status/")
                    if op["op"] == "test" and status.get(key) != op["value"]:
                        raise unprocessable({})
                    if op["op"] == "add":
                        status[key] = op["value"]
                    if op["op"] == "remove":
                        if key not in status:
                            raise unprocessable({})
                        del status[key]
            problem = self.invalid(status)
            if problem:
                raise unprocessable({"name": name, "causes": [{"message": problem}]})
            self.status = status
            return {"metadata": {"uid": "uid-1"}, "status": status}

    def applied(self) -> list[Any]:
        """The patches of the writes so far (each a merge patch's status or JSON ops)."""
        return [body["status"] if isinstance(body, dict) else body for body, _ in self.writes]


def held(state: int, message: str = "") -> list[pb.ModelState]:
    return [pb.ModelState(name="digits", version="1", digest=DIGEST, state=state,
                          message=message)]


def stats(requests: int) -> list[pb.VersionStats]:
    return [pb.VersionStats(model="digits", version="1", requests=requests)]


def writer_for(api: FakeApi, limits: GatewayLimits = FAST, heartbeat_s: float = 3600,
               writes: TokenBucket | None = None, entry: DeviceEntry | None = None,
               refused: list[Refusal] | None = None,
               last_seen_s: float | None = None,
               told: list[Transition] | None = None) -> DeviceStatusWriter:
    async def tell(refusal: Refusal) -> None:
        assert refused is not None
        refused.append(refusal)

    return DeviceStatusWriter(api, entry or DeviceEntry("fleet", "cam-1", "cam-1-token"),  # type: ignore[arg-type]
                              heartbeat_s, writes, last_seen_write_s=last_seen_s,
                              gateway="gw-0", limits=limits, refused=tell,
                              transitions=None if told is None
                              else lambda moved, _: told.extend(moved))


def ops(patch: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON patch's `add` ops as {field: value}."""
    return {op["path"].removeprefix("/status/"): op["value"] for op in patch
            if op["op"] == "add"}


def test_hello_is_written_at_once_with_the_connection_that_names_the_replica() -> None:
    api = FakeApi()
    writer = writer_for(api)
    hello = pb.Hello(capabilities=pb.Capabilities(arch="x86_64", cpus=2))
    asyncio.run(writer.hello(hello, held(pb.ModelState.READY)))
    ((patch, content_type),) = api.writes
    assert content_type == "application/merge-patch+json"  # takes over from any session
    status = patch["status"]
    assert status["phase"] == "Online" and status["lastSeen"].endswith("Z")
    assert status["capabilities"]["arch"] == "x86_64"
    assert [m["state"] for m in status["models"]] == ["Ready"] and status["modelCount"] == 1
    connection = status["connection"]
    assert connection["gateway"] == "gw-0" and connection["since"].endswith("Z")
    assert len(connection["session"]) == 8 and int(connection["session"], 16) >= 0
    assert writer.established


def status_writes(cause: str) -> float:
    return REGISTRY.get_sample_value("edgefleet_operator_gateway_status_writes_total",
                                     {"cause": cause}) or 0.0


def test_a_small_model_rolled_out_costs_one_write_of_its_settled_state() -> None:
    api = FakeApi()
    writer = writer_for(api)
    before = {cause: status_writes(cause) for cause in ("Connect", "Models", "Liveness")}

    async def scenario() -> None:
        await writer.hello(pb.Hello(), [])
        task = writer.start()
        for state in (pb.ModelState.DOWNLOADING, pb.ModelState.VERIFYING,
                      pb.ModelState.LOADING, pb.ModelState.READY):
            writer.report("report", held(state), [])
            await asyncio.sleep(0.03)
        for _ in range(5):  # heartbeats that change nothing
            writer.report("heartbeat", held(pb.ModelState.READY), [])
            await asyncio.sleep(0.03)
        await asyncio.sleep(FAST.status_settle_seconds * 2)
        await writer.stop()
        assert task.done()

    asyncio.run(scenario())
    hello, rollout = api.applied()
    assert hello["models"] == []
    assert rollout[0] == {"op": "test", "path": "/status/connection",
                          "value": writer.connection}
    written = ops(rollout)
    assert [m["state"] for m in written["models"]] == ["Ready"]
    assert (written["phase"], written["modelCount"]) == ("Online", 1)
    assert api.status["models"][0]["state"] == "Ready"
    # Counted by cause, for the fleet's dashboards and benchmark.
    assert {cause: status_writes(cause) - was for cause, was in before.items()} == {
        "Connect": 1, "Models": 1, "Liveness": 0}


def test_a_download_that_keeps_progressing_is_written_once_per_progress_interval() -> None:
    api = FakeApi()
    writer = writer_for(api)

    async def scenario() -> None:
        await writer.hello(pb.Hello(), [])
        writer.start()
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < 1.2:  # a change every 50 ms, never settling
            writer.report("report", held(pb.ModelState.DOWNLOADING, f"{step} bytes"), [])
            step += 1
            await asyncio.sleep(0.05)
        await writer.stop()

    asyncio.run(scenario())
    # One write per progress interval (0.5 s) of the 1.2 s, not one per change (24).
    assert 2 <= len(api.writes) - 1 <= 3


def test_quiet_heartbeats_refresh_last_seen_and_statistics_once_per_interval() -> None:
    api = FakeApi()
    writer = writer_for(api, heartbeat_s=0.3)

    async def scenario() -> None:
        await writer.hello(pb.Hello(), held(pb.ModelState.READY))
        writer.start()
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            writer.report("heartbeat", held(pb.ModelState.READY), stats(4))
            await asyncio.sleep(0.05)
        await writer.stop()

    asyncio.run(scenario())
    beats = [ops(patch) for patch in api.applied()[1:]]
    assert 2 <= len(beats) <= 4  # one per 0.3 s, not one per heartbeat (20)
    assert beats[0]["inference"][0]["requests"] == 4  # statistics ride on the first
    assert all("models" not in beat and "inference" not in beat for beat in beats[1:])
    assert all(beat["phase"] == "Online" and beat["modelCount"] == 1 for beat in beats)


def test_a_quiet_device_costs_no_write_until_its_last_seen_is_due() -> None:
    api = FakeApi()
    writer = writer_for(api, heartbeat_s=0.2, last_seen_s=3600)

    async def scenario() -> None:
        await writer.hello(pb.Hello(), held(pb.ModelState.READY))
        writer.start()
        for requests in (4, 4, 4, 4, 4, 4, 9, 9, 9, 9, 9, 9):  # figures move once
            writer.report("heartbeat", held(pb.ModelState.READY), stats(requests))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        await writer.stop()

    asyncio.run(scenario())
    beats = [ops(patch) for patch in api.applied()[1:]]
    # The figures as they first came and as they moved: two writes in 1.5 s, not seven.
    assert [beat["inference"][0]["requests"] for beat in beats] == [4, 9]


def test_an_api_error_is_retried_with_backoff_and_loses_nothing_due() -> None:
    api = FakeApi()
    writer = writer_for(api)

    async def scenario() -> None:
        await writer.hello(pb.Hello(), [])
        writer.start()
        api.failures = [ApiException(status=500, reason="etcd unavailable"),
                        ApiException(status=429, reason="Too Many Requests")]
        writer.report("report", held(pb.ModelState.READY), [])
        await asyncio.sleep(FAST.status_settle_seconds + 0.05 + 0.1 + 0.2)
        await writer.stop()

    asyncio.run(scenario())
    assert len(api.writes) == 4  # hello, two failures, then the same patch written
    assert api.writes[-1] == api.writes[-2]
    assert api.status["models"][0]["state"] == "Ready"


def test_an_api_error_at_hello_leaves_it_to_be_written_by_the_session_task() -> None:
    api = FakeApi()
    api.failures = [ApiException(status=503, reason="Service Unavailable")]
    writer = writer_for(api)

    async def scenario() -> None:
        await writer.hello(pb.Hello(capabilities=pb.Capabilities(arch="arm64")), [])
        assert not writer.established
        writer.start()
        await asyncio.sleep(0.15)
        await writer.stop()

    asyncio.run(scenario())
    assert writer.established and api.status["connection"] == writer.connection
    assert api.status["capabilities"]["arch"] == "arm64"


def test_a_status_the_api_server_refuses_is_told_to_the_device_and_not_sent_again() -> None:
    api = FakeApi(invalid=lambda status: "a rule the policy missed" if any(
        m["message"] == "bad" for m in status.get("models", [])) else None)
    refused: list[Refusal] = []
    writer = writer_for(api, refused=refused)

    async def scenario() -> None:
        await writer.hello(pb.Hello(), [])
        writer.start()
        for _ in range(4):
            writer.report("heartbeat", held(pb.ModelState.FAILED, "bad"), [])
            await asyncio.sleep(FAST.status_settle_seconds + 0.05)
        writer.report("report", held(pb.ModelState.READY), [])
        await asyncio.sleep(FAST.status_settle_seconds + 0.1)
        await writer.stop()

    asyncio.run(scenario())
    (refusal,) = refused
    assert (refusal.kind, refusal.reason) == ("heartbeat", "Malformed")
    assert "the API server refused the status it makes" in str(refusal)
    with_models = [patch for patch in api.applied()[1:] if "models" in ops(patch)]
    assert [ops(patch)["models"][0]["state"] for patch in with_models] == ["Failed", "Ready"]
    assert api.status["models"][0]["state"] == "Ready"


def test_a_session_another_took_over_writes_nothing_more_not_even_its_end() -> None:
    api = FakeApi()
    entry = DeviceEntry("fleet", "cam-1", "cam-1-token")
    old, new = writer_for(api, entry=entry), writer_for(api, entry=entry)

    async def scenario() -> None:
        await old.hello(pb.Hello(), [])
        task = old.start()
        await new.hello(pb.Hello(), [])  # the device came back, at another replica
        old.report("heartbeat", held(pb.ModelState.READY), [])
        await asyncio.wait_for(task, timeout=2)  # the old session's writer gives up
        await old.stop()
        await old.end()

    asyncio.run(scenario())
    assert old.standing == "superseded"
    assert api.status["connection"] == new.connection and api.status["phase"] == "Online"
    assert api.status["models"] == []
    assert len(api.writes) == 3  # two hellos and the one refused change


def test_the_end_of_a_session_writes_offline_and_removes_its_connection_at_once() -> None:
    api = FakeApi()
    writer = writer_for(api)
    disconnects = status_writes("Disconnect")

    async def scenario() -> None:
        await writer.hello(pb.Hello(), [])
        writer.start()
        writer.report("report", held(pb.ModelState.READY), [])  # not settled yet
        await writer.stop()
        await writer.end()

    asyncio.run(scenario())
    assert len(api.writes) == 2
    assert status_writes("Disconnect") == disconnects + 1
    (end, content_type) = api.writes[-1]
    assert content_type == "application/json-patch+json"
    assert end[0] == {"op": "test", "path": "/status/connection", "value": writer.connection}
    assert end[-1] == {"op": "remove", "path": "/status/connection"}
    assert "connection" not in api.status
    assert (api.status["phase"], api.status["modelCount"]) == ("Offline", 1)
    assert api.status["models"][0]["state"] == "Ready"  # what was due goes with it


def test_the_end_of_a_session_another_took_over_changes_nothing() -> None:
    api = FakeApi()
    entry = DeviceEntry("fleet", "cam-1", "cam-1-token")
    old, new = writer_for(api, entry=entry), writer_for(api, entry=entry)

    async def scenario() -> None:
        await old.hello(pb.Hello(), [])
        await new.hello(pb.Hello(), [])
        await old.end()

    asyncio.run(scenario())
    assert api.status["phase"] == "Online" and api.status["connection"] == new.connection


def test_a_device_that_reconnects_in_a_loop_is_written_at_a_bounded_rate() -> None:
    """Each hello is written, a burst at once, then no faster than the device's
    allowance refills, across its sessions."""
    api = FakeApi()
    entry = DeviceEntry("fleet", "cam-1", "cam-1-token")
    writes = TokenBucket(rate=20, burst=2)

    async def scenario() -> float:
        started = time.monotonic()
        for _ in range(6):
            writer = writer_for(api, entry=entry, writes=writes)
            await writer.hello(pb.Hello(), [])
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert len(api.writes) == 6
    assert took >= (6 - 2) / 20 * 0.99  # four writes past the burst, at 20 a second


def test_health_conditions_are_written_once_settled_and_their_transitions_told() -> None:
    api = FakeApi()
    told: list[Transition] = []
    writer = writer_for(api, told=told)
    roomy = pb.Health(disk_free_bytes=50, disk_total_bytes=100, memory_available_bytes=3,
                      memory_total_bytes=4, time_ms=int(time.time() * 1000))

    async def scenario() -> None:
        await writer.hello(pb.Hello(runtime_version="1.2.3", health=roomy), [])
        writer.start()
        for _ in range(3):  # the same figures: nothing new to write
            writer.report("heartbeat", [], [], roomy)
        await asyncio.sleep(0.4)
        full = pb.Health()
        full.CopyFrom(roomy)
        full.disk_free_bytes = 4
        writer.report("heartbeat", [], [], full)
        await asyncio.sleep(0.4)  # settled (0.15 s): written
        await writer.stop()
        await writer.end()

    asyncio.run(scenario())
    hello, disk, end = api.applied()
    assert hello["healthSummary"] == "Healthy"
    assert hello["health"]["runtimeVersion"] == "1.2.3"
    assert abs(hello["health"]["clockOffsetSeconds"]) < 5
    assert {c["type"]: c["status"] for c in hello["conditions"]}["Ready"] == "True"
    assert ops(disk)["healthSummary"] == "DiskPressure"
    assert ops(disk)["health"]["diskFreeBytes"] == 4
    assert {c["type"]: c["reason"] for c in ops(end)["conditions"]}["Ready"] == "Disconnected"
    assert [(t.type, t.bad) for t in told] == [("Ready", False), ("DiskPressure", True),
                                               ("Ready", True)]


def test_a_runtime_without_health_reads_not_reported() -> None:
    api = FakeApi()
    writer = writer_for(api)
    asyncio.run(writer.hello(pb.Hello(runtime_version="0.9.0"), []))
    (hello,) = api.applied()
    assert hello["healthSummary"] == "NotReported"
    assert hello["health"] == {"runtimeVersion": "0.9.0"}
