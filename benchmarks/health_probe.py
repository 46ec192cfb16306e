"""Health probe benchmark: what one HealthProbe.sample() costs on this machine, next to
building and serializing a heartbeat-sized protobuf message, measured in the same run.

    .venv/bin/python benchmarks/health_probe.py [--samples 2000]

The probe reads this machine's own /proc and /sys (with its cgroup limits, if any) and
statvfs's a temporary data directory; the heartbeat is one ModelState, as a device with
one model sends. Prints p50 and mean microseconds per call of each, their ratio, the
share of one core a probe every 10 s costs, and the size of the Health message. Timings
on a shared machine are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.edge_runtime.agent import health_message
from edgefleet.edge_runtime.health import HealthProbe, HealthSample
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

PROBE_PERIOD_S = 10.0
WARM_UP = 50
FULL = HealthSample(100.0, 100.0, 2**63 - 1, 2**63 - 1, 2**63 - 1, 2**63 - 1, 199.9, 3e9)


@dataclass
class Figures:
    p50_us: float
    mean_us: float


def timed(call: Callable[[], object], samples: int) -> Figures:
    for _ in range(WARM_UP):
        call()
    durations = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        call()
        durations.append((time.perf_counter_ns() - started) / 1000)
    return Figures(statistics.median(durations), statistics.fmean(durations))


def heartbeat() -> bytes:
    return pb.Heartbeat(models=[pb.ModelState(name="digits", version="1.0.0",
                                              digest="sha256:" + "0" * 64,
                                              state=pb.ModelState.READY)]
                        ).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="timed calls of each")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data_dir:
        probe = HealthProbe(Path(data_dir))
        probe_figures = timed(probe.sample, args.samples)
        time.sleep(1)  # back-to-back samples see no jiffies move: cpu_percent None
        last = probe.sample()
    heartbeat_figures = timed(heartbeat, args.samples)

    print(f"\nHealth probe benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"Python {platform.python_version()}, {args.samples} samples each")
    print(f"{'call':<28} {'p50 us':>9} {'mean us':>9}")
    print(f"{'HealthProbe.sample()':<28} {probe_figures.p50_us:9.1f} {probe_figures.mean_us:9.1f}")
    print(f"{'Heartbeat build+serialize':<28} {heartbeat_figures.p50_us:9.1f} "
          f"{heartbeat_figures.mean_us:9.1f}")
    print(f"\nprobe / heartbeat: {probe_figures.p50_us / heartbeat_figures.p50_us:.1f}x at p50, "
          f"{probe_figures.mean_us / heartbeat_figures.mean_us:.1f}x mean")
    share = probe_figures.mean_us / 1e6 / PROBE_PERIOD_S * 100
    print(f"a probe every {PROBE_PERIOD_S:.0f} s: {share:.5f}% of one core")
    print(f"a sample 1 s after the last: {last}")
    size = health_message(last, restarts=3).ByteSize()
    print(f"its Health message in a heartbeat: {size} bytes (every figure set: "
          f"{health_message(FULL, restarts=2**32 - 1).ByteSize()} bytes at most, less "
          "the OS and kernel texts)")


if __name__ == "__main__":
    main()
