"""What the gateway spends on one steady heartbeat, with and without the device's health,
side by side in one run: the policy's checks and DeviceStatusWriter.report (status
fields, conditions, the write schedule), as a connected device's heartbeat costs them
when nothing changes (no status write falls due).

    .venv/bin/python benchmarks/heartbeat_cost.py [--heartbeats 20000]

Prints microseconds per heartbeat at p50 and mean for each kind, their ratio, and what
5,000 devices heartbeating every 10 s cost in share of one core. Timings on a shared
machine are noisy; the ratio less so.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from edgefleet.operator.gateway.directory import DeviceEntry
from edgefleet.operator.gateway.policy import GatewayLimits, check_health, check_models
from edgefleet.operator.gateway.server import DeviceStatusWriter
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

FLEET, PERIOD_S = 5000, 10.0
MODELS = [pb.ModelState(name="digits", version="1.0.0", digest="sha256:" + "0" * 64,
                        state=pb.ModelState.READY)]
STATS = [pb.VersionStats(model="digits", version="1.0.0", requests=1000, errors=1,
                         latency_bounds_seconds=[0.001, 0.01, 0.1],
                         latency_counts=[900, 90, 9, 1], top_class_counts=[500, 500])]
HEALTH = pb.Health(cpu_percent=37.5, memory_available_bytes=3 * 2**30,
                   memory_total_bytes=4 * 2**30, disk_free_bytes=50 * 2**30,
                   disk_total_bytes=100 * 2**30, temperature_celsius=52.0,
                   uptime_seconds=86400.0, restarts=1, os="Linux", kernel="6.1.0-18-arm64")


class NoApi:
    """The writer's API client: the hello is the only write a steady session makes."""

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> dict[
            str, Any]:
        return {"metadata": {"uid": "u"}}


async def per_heartbeat_us(with_health: bool, heartbeats: int) -> list[float]:
    limits = GatewayLimits()
    writer = DeviceStatusWriter(NoApi(), DeviceEntry("fleet", "cam-1", "t"),  # type: ignore[arg-type]
                                60.0, last_seen_write_s=300.0, limits=limits)
    health = HEALTH if with_health else None
    hello = pb.Hello(runtime_version="0.1.0", health=health)
    await writer.hello(hello, MODELS)
    durations = []
    for _ in range(heartbeats):
        if health is not None:
            health.time_ms = int(time.time() * 1000)
        started = time.perf_counter_ns()
        check_models("heartbeat", MODELS, limits)
        if health is not None:
            check_health("heartbeat", health, limits)
        writer.report("heartbeat", MODELS, STATS, health)
        durations.append((time.perf_counter_ns() - started) / 1000)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeats", type=int, default=20000)
    args = parser.parse_args()
    figures = {}
    for label, with_health in (("without health", False), ("with health", True),
                               ("without health again", False)):
        durations = asyncio.run(per_heartbeat_us(with_health, args.heartbeats))
        figures[label] = (statistics.median(durations), statistics.fmean(durations))
    print(f"\nGateway cost of a steady heartbeat, {time.strftime('%Y-%m-%d')}, "
          f"{args.heartbeats} heartbeats each")
    print(f"{'heartbeat':<22} {'p50 us':>8} {'mean us':>8} {'5,000 devices / 10 s':>22}")
    for label, (p50, mean) in figures.items():
        share = mean / 1e6 * FLEET / PERIOD_S * 100
        print(f"{label:<22} {p50:8.1f} {mean:8.1f} {share:20.2f} %")
    base = min(figures["without health"][0], figures["without health again"][0])
    print(f"\nwith / without health at p50: {figures['with health'][0] / base:.2f}x")


if __name__ == "__main__":
    main()
