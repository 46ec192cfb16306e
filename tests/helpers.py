"""Shared helpers of the test suite (fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import yaml
from tritonclient.utils import InferenceServerException

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as fleet

EXAMPLES = Path(__file__).parent / "examples"
MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    name: str
    body: dict[str, Any]
    # For invalid examples: the field path the rejection must name.
    error_at: str | None

    @property
    def kind(self) -> str:
        return str(self.body["kind"])


def load_examples(kind: str) -> list[Example]:
    """The shared valid/ or invalid/ examples that both the pydantic models and the
    real API server must judge alike."""
    examples = []
    for path in sorted((EXAMPLES / kind).glob("*.yaml")):
        text = path.read_text()
        first = text.splitlines()[0]
        marker = "# expect-error-at:"
        error_at = first.removeprefix(marker).strip() if first.startswith(marker) else None
        examples.append(Example(path.stem, yaml.safe_load(text), error_at))
    return examples


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers (not listening yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def eventually(check: Callable[[], T | None], *, timeout: float = 30.0,
               interval: float = 0.2, what: str = "condition") -> T:
    """Polls `check` until it returns something truthy; fails with the last value seen.
    A deadline for waiting on a real system, not a timing assertion."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def printed_row(table: str, row: int = 0) -> dict[str, str]:
    """A row of `kubectl get` output by column header. Cells are cut at the headers'
    offsets: a printer column with no value prints as an empty cell."""
    header, line = table.splitlines()[0], table.splitlines()[1 + row]
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    bounds = [*starts[1:], None]
    return {header[start:end].strip(): line[start:end].strip()
            for start, end in zip(starts, bounds, strict=True)}


class Senders:
    """One thread per target, each running `_send(target)` from the start of a `with`
    block until its end (`_stop` is set then)."""

    def __init__(self, targets: Sequence[object]) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(target,))
                         for target in targets]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _send(self, target: Any) -> None:
        raise NotImplementedError


class Traffic(Senders):
    """A stock gRPC client per URL sending unpinned requests for `model` (input x
    [1, width]) until stopped, counting answers and failures. The first element of each
    row cycles through 0..7: `flaky_scaled` fails on 4 and above, `scaled` never."""

    def __init__(self, urls: list[str], model: str = "digits", width: int = 4) -> None:
        super().__init__(urls)
        self._model, self._width = model, width
        self.answered = self.failed = 0

    def _send(self, url: str) -> None:
        stock = triton_grpc.InferenceServerClient(url)
        sent = 0
        while not self._stop.wait(0.02):
            item = triton_grpc.InferInput("x", [1, self._width], "FP32")
            row = np.ones((1, self._width), dtype=np.float32)
            row[0, 0] = sent % 8
            item.set_data_from_numpy(row)
            sent += 1
            try:
                stock.infer(self._model, [item])
            except InferenceServerException:
                with self._lock:
                    self.failed += 1
            else:
                with self._lock:
                    self.answered += 1


def serve_fleet_gateway(
    connect: Callable[[Iterator[fleet.DeviceMessage], Any], Iterator[fleet.CloudMessage]],
    fetch: Callable[[fleet.ArtifactRequest, Any], Iterator[fleet.ArtifactChunk]],
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int]:
    """A stand-in fleet gateway on a free loopback port, for tests that need to say
    what a gateway (a broken or hostile one) sends; started, with its port. Plaintext
    unless `credentials` are given."""
    server = grpc.server(ThreadPoolExecutor(8))
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            connect, request_deserializer=fleet.DeviceMessage.FromString,
            response_serializer=fleet.CloudMessage.SerializeToString),
        "FetchArtifact": grpc.unary_stream_rpc_method_handler(
            fetch, request_deserializer=fleet.ArtifactRequest.FromString,
            response_serializer=fleet.ArtifactChunk.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "edgefleet.v1.FleetGateway", handlers),))
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials
            else server.add_insecure_port("127.0.0.1:0"))
    server.start()
    return server, port


class TcpBalancer:
    """A Service in front of several gateway replicas, on loopback: each connection goes
    to the next backend that accepts it (round robin), bytes pass through untouched (TLS
    ends at the replica). A replica that dies takes its connections with it."""

    def __init__(self, backends: list[int], bytes_per_second: float | None = None) -> None:
        """`bytes_per_second`: what each connection carries towards the client at most
        (a slow uplink)."""
        self.backends = list(backends)
        self._rate = bytes_per_second
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _run(self, started: threading.Event) -> None:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1",
                                                                                 port)
            except OSError:
                continue
            await asyncio.gather(self._pipe(reader, upstream_writer),
                                 self._pipe(upstream_reader, writer, self._rate))
            return
        writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    rate: float | None = None) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        """Stops serving, ends every connection, and the loop's thread with them."""
        async def stop() -> None:
            if self._server:
                self._server.close()
            pipes = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def alert_expressions() -> dict[str, str]:
    """Every alert of monitoring/alerts.yaml by name, with its expression."""
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
