"""Fuzzing the fleet gateway through real sessions: 2,000 randomized malformed device
reports and metric batches from four devices at once, while another device's session
goes on. Real API server, operator process, Prometheus and gRPC on loopback."""

from __future__ import annotations

import os
import random
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from tests.conftest import Fleet, Kube, StartOperator, StartPrometheus
from tests.helpers import eventually
from tests.integration.test_gateway_security import (
    FakeDevice,
    connect_fake,
    memory_kib,
    written,
)
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration
MESSAGES = 2000
# Sessions sending them side by side: each session is read at most 50 messages a second
# (GatewayLimits), so one alone would spend most of the test waiting on its limit.
ATTACKERS = ("cam-1", "cam-4", "cam-5", "cam-6")
DIGEST = "sha256:" + "0" * 64
REASONS = {"TooLarge", "Malformed", "Implausible", "NotAllowed"}
# What one session may hold (GatewayLimits: 4 MiB of queued metrics, 1 MiB messages,
# an outbox of 256 small messages) with room for the interpreter's own churn.
MEMORY_BUDGET_KIB = 128 * 1024


def text(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-._/ !é\n", k=length))


def state(rng: random.Random, **fields: object) -> pb.ModelState:
    defaults: dict[str, object] = {"name": "digits", "version": "1", "digest": DIGEST,
                                   "state": pb.ModelState.READY}
    return pb.ModelState(**{**defaults, **fields})


def stats(rng: random.Random, **fields: object) -> pb.VersionStats:
    defaults: dict[str, object] = {"model": "digits", "version": "1", "requests": 10,
                                   "errors": 1}
    return pb.VersionStats(**{**defaults, **fields})


def sample(rng: random.Random, **fields: object) -> pb.MetricSample:
    defaults: dict[str, object] = {"name": "edgefleet_inference_requests_total", "labels": {
        "model": "digits", "version": "1", "outcome": "success"}, "value": rng.random()}
    return pb.MetricSample(**{**defaults, **fields})


def report(rng: random.Random, models: list[pb.ModelState] | None = None,
           entries: list[pb.VersionStats] | None = None) -> pb.DeviceMessage:
    if rng.random() < 0.5:
        return pb.DeviceMessage(heartbeat=pb.Heartbeat(models=models or [],
                                                       stats=entries or []))
    return pb.DeviceMessage(report=pb.StateReport(models=models or [], stats=entries or [],
                                                  applied_revision=text(rng, 8)))


Mutation = Callable[[random.Random], pb.DeviceMessage]
REPORTS: list[Mutation] = [
    lambda rng: report(rng, models=[state(rng)] * rng.randint(65, 3000)),
    lambda rng: report(rng, models=[state(rng, name=text(rng, rng.randint(1, 300)) + "!")]),
    lambda rng: report(rng, models=[state(rng, version=text(rng, rng.randint(257, 50_000)))]),
    lambda rng: report(rng, models=[state(rng, message=text(rng, rng.randint(2049, 200_000)))]),
    lambda rng: report(rng, models=[state(rng, digest="sha256:" + text(rng, rng.randint(0, 90)))]),
    lambda rng: report(rng, models=[state(rng, state=rng.randint(8, 2**31 - 1))]),
    lambda rng: report(rng, entries=[stats(rng, requests=rng.randint(0, 10**6),
                                           errors=10**6 + rng.randint(1, 10**9))]),
    lambda rng: report(rng, entries=[stats(rng, requests=rng.randint(2**63, 2**64 - 1),
                                           errors=0)]),
    lambda rng: report(rng, entries=[stats(rng, requests=rng.randint(2**58, 2**62))]),
    lambda rng: report(rng, entries=[stats(rng, latency_bounds_seconds=[0.1, 0.2],
                                           latency_counts=[1] * rng.choice([1, 2, 4, 40]))]),
    lambda rng: report(rng, entries=[stats(rng, latency_bounds_seconds=[
        rng.choice([float("nan"), -1.0, 0.0, float("inf")]), 0.5], latency_counts=[1, 1, 1])]),
    lambda rng: report(rng, entries=[stats(rng)] * rng.randint(2, 64)),
    lambda rng: report(rng, entries=[stats(rng, version=str(i)) for i in range(65, 200)]),
    lambda rng: report(rng, entries=[stats(rng, top_class_counts=[1] * rng.randint(65, 5000))]),
    lambda rng: report(rng, entries=[stats(rng, model=text(rng, rng.randint(254, 2000)))]),
    lambda rng: pb.DeviceMessage(hello=pb.Hello(runtime_version=text(rng, 20))),
    lambda rng: pb.DeviceMessage(),
]


class Batches:
    """Metrics batches each of which breaks a rule, with growing sequence numbers."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, rng: random.Random, samples: list[pb.MetricSample],
                 timestamp_ms: int | None = None) -> pb.DeviceMessage:
        self.sequence += 1
        if rng.random() < 0.5:  # some good samples beside the bad
            samples = [*samples, sample(rng, name="edgefleet_cloud_connected", labels={})]
        rng.shuffle(samples)
        return pb.DeviceMessage(metrics=pb.MetricsBatch(
            sequence=self.sequence, samples=samples,
            timestamp_ms=timestamp_ms or int(time.time() * 1000)))

    def mutations(self) -> list[Mutation]:
        return [
            lambda rng: self(rng, [sample(rng, name=rng.choice([
                "edgefleet_operator_devices", "up", "ALERTS", text(rng, 30)]),
                labels={"namespace": "prod", "phase": "Offline"}, value=-1e9)]),
            lambda rng: self(rng, [sample(rng, labels={
                "model": "digits", "version": "1", "outcome": text(rng, rng.randint(257,
                                                                                   100_000))})]),
            lambda rng: self(rng, [sample(rng, labels={rng.choice(
                ["job", "device", "namespace", "instance", "__name__", text(rng, 12)]): "x"})]),
            lambda rng: self(rng, [sample(rng, labels={f"l{i}": "v" for i in range(9, 30)})]),
            lambda rng: self(rng, [sample(rng, value=rng.choice(
                [-1.0, float("nan"), float("-inf"), -1e9]))]),
            lambda rng: self(rng, [sample(rng)] * rng.randint(5001, 8000)),
            lambda rng: self(rng, [sample(rng)],
                             int(time.time() * 1000) + rng.randint(11 * 60_000, 10**12)),
        ]


def expected_kind(message: pb.DeviceMessage) -> str:
    return message.WhichOneof("kind") or "unknown"


def test_2000_malformed_reports_and_batches_are_each_refused_and_harm_no_one_else(
    kube: Kube, namespace: str, start_operator: StartOperator, prometheus: StartPrometheus,
    tmp_path: Path,
) -> None:
    server = prometheus([])
    fleet = Fleet(kube, namespace, lambda *extra, **kw: start_operator(
        *extra, "--metrics-remote-write-url", f"{server.url}/api/v1/write", **kw), tmp_path)
    devices: list[FakeDevice] = []
    seed = int(os.environ.get("EDGEFLEET_FUZZ_SEED", time.time()))
    print(f"\nseed {seed} (EDGEFLEET_FUZZ_SEED={seed} replays it)")
    rng = random.Random(seed)
    try:
        for name in (*ATTACKERS, "cam-2", "cam-3"):
            fleet.add_device(name, site="plant-7")
        fleet.start("cam-3")  # a real runtime beside them
        wait_status(kube, "edgedevices", namespace, "cam-3", {"phase": "Online"})
        attackers = [connect_fake(fleet, devices, name) for name in ATTACKERS]
        neighbour = connect_fake(fleet, devices, "cam-2")
        batches = [Batches() for _ in attackers]  # sequence numbers are per session
        sent: list[list[pb.DeviceMessage]] = [[] for _ in attackers]
        for index in range(MESSAGES):
            own = index % len(attackers)
            sent[own].append(rng.choice([*REPORTS, *batches[own].mutations()])(rng))

        sessions_ended = fleet.edges["cam-3"].log().count("cloud session ended")
        before = memory_kib(fleet.operator)
        peak = Peak(fleet)
        with peak:
            for attacker, messages in zip(attackers, sent, strict=True):
                for message in messages:
                    attacker.send(message)
            # Meanwhile the neighbour's reports are written as they change.
            for step in range(6):
                held = state(rng, state=pb.ModelState.LOADING if step % 2 else
                             pb.ModelState.READY, version=str(step))
                written(fleet, neighbour, pb.DeviceMessage(report=pb.StateReport(models=[held])),
                        lambda status, v=str(step): (status.get("models") or [{}])[0].get(
                            "version") == v, f"cam-2's report {step} written")
            eventually(lambda: sum(len(a.refusals()) for a in attackers) >= MESSAGES,
                       timeout=300, what=f"{MESSAGES} refusals (now "
                       f"{sum(len(a.refusals()) for a in attackers)})")
        after = memory_kib(fleet.operator)
        print(f"operator memory (KiB): {before} before, peak sampled {peak.kib}, {after} after")

        for attacker, messages, numbered in zip(attackers, sent, batches, strict=True):
            refusals = attacker.refusals()
            assert len(refusals) == len(messages)
            assert [r.kind for r in refusals] == [expected_kind(m) for m in messages]
            assert {r.reason for r in refusals} <= REASONS
            assert all(r.message.startswith(f"{r.field}: ") and r.field for r in refusals)
            assert all(r.sequence for r in refusals if r.kind == "metrics")
            # Batches refused for good are acknowledged, in order: sending them again
            # is futile.
            eventually(lambda a=attacker, n=numbered: a.acks()[-1:] == [n.sequence],
                       timeout=60, what=f"every batch of {attacker.name} acknowledged")
            assert attacker.acks() == sorted(attacker.acks())
            assert attacker.alive  # the session itself goes on
        assert after["VmHWM"] - before["VmRSS"] < MEMORY_BUDGET_KIB
        assert not server.query('{__name__=~"edgefleet_operator_.*|up|ALERTS"}')

        # The neighbours are unaffected: cam-2's metrics are taken and stored, and the
        # real runtime's session never dropped.
        neighbour.send(pb.DeviceMessage(metrics=pb.MetricsBatch(
            sequence=1, timestamp_ms=int(time.time() * 1000),
            samples=[sample(rng, name="edgefleet_cloud_connected", labels={}, value=1)])))
        eventually(lambda: neighbour.acks() == [1], what="cam-2's batch acknowledged")
        assert neighbour.refusals() == []
        eventually(lambda: server.query('edgefleet_cloud_connected{device="cam-2"}'),
                   what="cam-2's sample in Prometheus")
        assert fleet.edges["cam-3"].log().count("cloud session ended") == sessions_ended
        wait_status(kube, "edgedevices", namespace, "cam-3", {"phase": "Online"})
    finally:
        for device in devices:
            device.close()
        fleet.stop()


class Peak:
    """Samples the operator's resident memory while the fuzzing runs."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.kib = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.kib = max(self.kib, memory_kib(self._fleet.operator)["VmRSS"])

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
