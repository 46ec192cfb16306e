"""Data-from-the-field benchmark, both parts measured in one run on this machine.

    .venv/bin/python benchmarks/field_data.py [--requests 3000] [--megabytes 100]

1. Capture overhead. The runtime's real serving stack in this process (engine,
   collector, gRPC server) answers the stock tritonclient gRPC client at concurrency 1
   (an MLP, 64 inputs and 10 class scores per row), in interleaved rounds: no data
   collection, feedback only (`dataCollection: {}`: every answer remembered), one
   request in a hundred kept, and every request kept (`sampleRate: 1`, outputs
   included, written and synced by the collector's thread in records of what arrives
   within 50 ms). Prints p50 and p99 of each and the ratios.
2. Upload throughput. Records of 256 KiB (one 64x1024 FP32 input each) in a device's
   journal go up through the real uploader, over a gRPC stream on loopback, into the
   real gateway checks (check_data_batch) and dataset writer (a directory: shards,
   manifests and markers written and synced), acknowledged batch by batch; next to a
   raw TCP copy of the same batches, each written and synced by the receiver and
   acknowledged, with the same two batches in flight. Prints MB/s of both and the
   ratio. (A real session also paces uploads, 256 KiB/s by default, and the gateway
   reads at most 1 MiB/s a device: those limits are set out of the way here, to
   measure the path.)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc

from edgefleet.edge_runtime.capture import Collector, encode_record
from edgefleet.edge_runtime.config import CapturePolicy
from edgefleet.edge_runtime.engine import Engine
from edgefleet.edge_runtime.repository import MODEL_FILE, RepositorySync
from edgefleet.edge_runtime.serving import grpc as grpc_server
from edgefleet.edge_runtime.serving.admission import Admission
from edgefleet.edge_runtime.serving.dataplane import DataPlane
from edgefleet.edge_runtime.uploader import BATCH_BYTES, Uploader
from edgefleet.operator.dataset import DatasetWriter, DirectoryStore
from edgefleet.operator.gateway.policy import GatewayLimits, check_data_batch
from edgefleet.operator.planner import Assignment, Capture
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))
import testmodels  # noqa: E402

UNBOUNDED = CapturePolicy(sample_rate=1.0, include_outputs=True, max_bytes_per_device=1 << 40,
                          max_bytes_per_day=1 << 40)
POLICIES = {"off": None, "feedback only": CapturePolicy(),
            "sampleRate 0.01": CapturePolicy(sample_rate=0.01, include_outputs=True),
            "sampleRate 1": UNBOUNDED}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------- capture overhead


def serve(model_path: Path, data_dir: Path, port: int,
          commands: multiprocessing.connection.Connection) -> None:
    """The runtime's serving stack, in a process of its own as on a device; `commands`
    names the policy to apply (a key of POLICIES) and is answered once applied and
    every queued record is written."""
    collector = Collector(data_dir, window=10_000)

    async def run() -> None:
        engine = Engine(threads=1)
        engine.observer = collector.observe
        repository = data_dir / "repository"
        (repository / "mlp" / "1").mkdir(parents=True, exist_ok=True)
        (repository / "mlp" / "1" / MODEL_FILE).write_bytes(model_path.read_bytes())
        source = RepositorySync(engine, repository)
        await source.start()
        dataplane = DataPlane(engine, source, collector)
        dataplane.started = True
        server = grpc_server.create_server(dataplane, Admission(None, 8 << 20, 32),
                                           f"127.0.0.1:{port}", None)
        await server.start()
        loop = asyncio.get_running_loop()
        while True:
            name = await loop.run_in_executor(None, commands.recv)
            await asyncio.to_thread(collector.flush)
            policy = POLICIES[name]
            collector.configure({"mlp": policy} if policy else {})
            commands.send(collector.journal("mlp").records)

    asyncio.run(run())


def capture_overhead(requests: int, rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as scratch:
        model_path = Path(scratch) / "mlp.onnx"
        model_path.write_bytes(testmodels.mlp())
        port = free_port()
        ours, theirs = multiprocessing.Pipe()
        server = multiprocessing.Process(
            target=serve, args=(model_path, Path(scratch) / "capture", port, theirs),
            daemon=True)
        server.start()
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready("mlp"):
                    break
            except triton_grpc.InferenceServerException:
                pass
            time.sleep(0.1)
        item = triton_grpc.InferInput("x", [1, 64], "FP32")
        item.set_data_from_numpy(np.random.default_rng(0).standard_normal(
            (1, 64)).astype(np.float32))
        for _ in range(300):  # warm up
            client.infer("mlp", [item])
        seconds: dict[str, list[float]] = {name: [] for name in POLICIES}
        for _ in range(rounds):
            for name in POLICIES:
                ours.send(name)  # the round starts with no writes pending
                ours.recv()
                for _ in range(requests // rounds):
                    started = time.perf_counter()
                    client.infer("mlp", [item])
                    seconds[name].append(time.perf_counter() - started)
        ours.send("off")
        print(f"  records written in the sampleRate 1 rounds: {ours.recv()}")
        server.terminate()
        return seconds


# ---------------------------------------------------------------- upload throughput


LIMITS = GatewayLimits()
ASSIGNED = [Assignment("bench", "1", "sha256:" + "0" * 64, 1,
                       capture=Capture(1.0, 0.0, False, 1 << 40, 1 << 40))]


async def upload_through_gateway(capture_dir: Path, dataset_dir: Path) -> None:
    writer = DatasetWriter(DirectoryStore(dataset_dir))

    async def gateway_stream(requests: AsyncIterator[pb.DeviceMessage],
                             _: grpc.aio.ServicerContext) -> AsyncIterator[pb.CloudMessage]:
        """The gateway's handling of data batches: checked, stored, acknowledged."""
        async for message in requests:
            batch = message.data
            records = check_data_batch(batch, ASSIGNED, LIMITS)
            marker = await writer.write("bench", "device", batch.model, records)
            yield pb.CloudMessage(data_ack=pb.DataAck(model=batch.model,
                                                      sequence=marker.stored))

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "edgefleet.v1.FleetGateway", {"Connect": grpc.stream_stream_rpc_method_handler(
            gateway_stream,
            request_deserializer=pb.DeviceMessage.FromString,
            response_serializer=pb.CloudMessage.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    collector = Collector(capture_dir, window=10)
    collector.configure({"bench": UNBOUNDED})
    uploader = Uploader(collector, bytes_per_second=1e12)
    outbox: asyncio.Queue[pb.DeviceMessage] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[pb.DeviceMessage]:
        while True:
            yield await outbox.get()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/edgefleet.v1.FleetGateway/Connect",
            request_serializer=pb.DeviceMessage.SerializeToString,
            response_deserializer=pb.CloudMessage.FromString)(outgoing())
        sending = asyncio.create_task(uploader.run(outbox))
        journal = collector.journal("bench")
        async for message in call:
            await uploader.acknowledged(message.data_ack)
            if journal.records == 0:
                break
        sending.cancel()
        call.cancel()
    await server.stop(0)


def raw_tcp(batches: list[bytes], out_dir: Path) -> None:
    """The same batches over one loopback TCP connection: each written to a file and
    synced by the receiver, then acknowledged; two in flight, as the uploader has."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def receive() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as stream:
            for index in range(len(batches)):
                size = int.from_bytes(stream.read(8), "big")
                data = stream.read(size)
                with open(out_dir / f"{index}.bin", "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                conn.sendall(b"k")

    receiver = threading.Thread(target=receive)
    receiver.start()
    with socket.create_connection(("127.0.0.1", port)) as sender:
        acknowledged = 0
        for index, data in enumerate(batches):
            if index - acknowledged >= 2:
                acknowledged += len(sender.recv(1))
            sender.sendall(len(data).to_bytes(8, "big") + data)
        while acknowledged < len(batches):
            acknowledged += len(sender.recv(1))
    receiver.join()
    listener.close()


def upload_throughput(megabytes: int) -> tuple[float, float, int]:
    """MB/s through the gateway path and over raw TCP, and the bytes moved."""
    record = encode_record([(
        {"kind": "sample", "id": "r", "model": "bench", "version": "1", "timeMs": 0,
         "reason": "sampled", "inputs": ["x"], "datatypes": {"x": "FP32"}},
        {"input_0": np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)})])
    count = max(1, megabytes * (1 << 20) // len(record))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        journal = Collector(root / "capture", window=10).journal("bench")
        journal.set_max_bytes(1 << 40)
        for _ in range(count):
            journal.append(record)
        total = journal.stored_bytes
        started = time.perf_counter()
        asyncio.run(upload_through_gateway(root / "capture", root / "dataset"))
        gateway_s = time.perf_counter() - started
        per_batch = max(1, BATCH_BYTES // len(record))
        batches = [record * per_batch for _ in range(count // per_batch)]
        (root / "raw").mkdir()
        started = time.perf_counter()
        raw_tcp(batches, root / "raw")
        raw_s = time.perf_counter() - started
        raw_bytes = sum(len(b) for b in batches)
    return total / gateway_s / 1e6, raw_bytes / raw_s / 1e6, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per configuration, over 5 interleaved rounds")
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("capture overhead (stock gRPC client, concurrency 1, MLP 64->10):")
    seconds = capture_overhead(args.requests, rounds=5)
    base = statistics.median(seconds["off"])
    for name, samples in seconds.items():
        ordered = sorted(samples)
        p50 = statistics.median(ordered)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        print(f"  {name:>15}: p50 {p50 * 1e6:7.0f} us  p99 {p99 * 1e6:7.0f} us  "
              f"p50 ratio to off {p50 / base:.3f}")
    print(f"upload throughput ({args.megabytes} MB of 256 KiB records):")
    gateway, raw, total = upload_throughput(args.megabytes)
    print(f"  through the gateway path: {gateway:7.1f} MB/s ({total / 1e6:.0f} MB)")
    print(f"  raw TCP, same batches:    {raw:7.1f} MB/s")
    print(f"  ratio gateway / raw TCP:  {gateway / raw:.2f}")


if __name__ == "__main__":
    main()
