"""Simulated edge devices for benchmarks/fleet_scale.py: many devices in one process,
each running the edge runtime's own cloud client (edgefleet.edge_runtime.agent.
CloudAgent: one gRPC connection with mutual TLS, hello, heartbeats, reports, renewals,
downloads, sha256 checks, a Store of its own on disk) with an engine that loads nothing.

    fleet_sim.py --root DIR --cloud HOST:PORT --namespace NS --devices dev-0 dev-1 ...

Each device's data directory is ROOT/NAME and must already hold its identity
(identity/identity.pem, trust.pem, signing.pub), as an enrolled device's does.
The process talks to its parent on stdin and stdout, one line at a time:

    out: `ready N`                once the N devices are built (identities read)
    in:  `go`                     starts them all at once
    out: `session NAME UNIXTIME`  a device received its first desired state in a session
    in:  `where NAME...`          prints to stderr where each named device's loop waits
    in:  `stop` or end of input   exits
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

# A runtime built without ONNX Runtime: `import onnxruntime` fails, so the hello
# reports no execution providers, and no device here carries its ~100 MB.
sys.modules["onnxruntime"] = None  # type: ignore[assignment]

from edgefleet.edge_runtime.agent import CloudAgent  # noqa: E402
from edgefleet.edge_runtime.config import RuntimeConfig  # noqa: E402
from edgefleet.edge_runtime.engine import Engine  # noqa: E402
from edgefleet.edge_runtime.settings import RunSettings  # noqa: E402
from edgefleet.edge_runtime.stats import VersionStats  # noqa: E402
from edgefleet.edge_runtime.store import Store  # noqa: E402
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb  # noqa: E402


@dataclass(frozen=True)
class Loaded:
    digest: str


class NullEngine:
    """What CloudAgent asks of the Engine, with nothing loaded: versions are recorded
    as loaded, routes are accepted, stats are empty (no inference runs)."""

    def __init__(self) -> None:
        self._versions: dict[str, dict[str, Loaded]] = {}

    def models(self) -> list[str]:
        return list(self._versions)

    def versions(self, name: str) -> list[str]:
        return list(self._versions.get(name, {}))

    def stats(self) -> list[tuple[str, str, VersionStats]]:
        return []

    def resolve(self, name: str, version: str | None) -> Loaded:
        return self._versions[name][version or next(iter(self._versions[name]))]

    async def load(self, name: str, version: str, path: Path, runtime: RuntimeConfig,
                   digest: str) -> None:
        self._versions.setdefault(name, {})[version] = Loaded(digest)

    def route(self, name: str, weights: dict[str, float]) -> None:
        pass

    async def unload(self, name: str, version: str) -> None:
        self._versions.get(name, {}).pop(version, None)
        if not self._versions.get(name, True):
            del self._versions[name]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class SimulatedDevice(CloudAgent):
    """CloudAgent as is, telling the parent when a session's first desired state
    arrives (the gateway sends it once it has written the device's hello)."""

    def __init__(self, settings: RunSettings, engine: Any, store: Store) -> None:
        super().__init__(settings, cast(Engine, engine), store)
        self._fresh = False

    async def _session(self) -> None:
        self._fresh = True
        await super()._session()

    def _start_apply(self, desired: pb.DesiredState) -> None:
        if self._fresh:
            self._fresh = False
            say(f"session {self.settings.device} {time.time():.3f}")
        super()._start_apply(desired)


def where(task: asyncio.Task[None]) -> str:
    """The chain of awaits a device's task is suspended in, outermost first, or how
    it ended."""
    if task.done():
        return f"nothing: it ended with {task.exception()!r}"
    steps, awaited = [], cast(Any, task.get_coro())
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            steps.append(repr(awaited)[:200])
            break
        steps.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} "
                     f"{frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return " > ".join(steps)


def build(root: Path, cloud: str, namespace: str, names: list[str]) -> list[SimulatedDevice]:
    devices = []
    for name in names:
        data_dir = root / name
        settings = RunSettings(cloud=cloud, namespace=namespace, device=name,
                               data_dir=data_dir,
                               tls_ca_file=data_dir / "identity" / "trust.pem")
        devices.append(SimulatedDevice(settings, NullEngine(), Store(data_dir)))
    return devices


async def run(devices: list[SimulatedDevice]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say(f"ready {len(devices)}")
    while (line := (await reader.readline()).decode().strip()) != "go":
        if not line or line == "stop":
            return
    for device in devices:
        await device.start()
    tasks = {device.settings.device: asyncio.create_task(device.run()) for device in devices}
    while (line := (await reader.readline()).decode().strip()) not in ("", "stop"):
        command, *names = line.split()
        if command == "where":
            for name in names:
                if name in tasks:
                    print(f"{name} waits in {where(tasks[name])}", file=sys.stderr, flush=True)
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--cloud", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--devices", nargs="+", required=True)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="time=%(asctime)s level=%(levelname)s logger=%(name)s "
                               "msg=%(message)s")
    asyncio.run(run(build(args.root, args.cloud, args.namespace, args.devices)))


if __name__ == "__main__":
    main()
