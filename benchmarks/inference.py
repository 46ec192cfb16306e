"""Inference benchmark: the edge runtime against in-process ONNX Runtime and against a
bare grpc.aio echo server, all measured in one run on this machine.

    .venv/bin/python benchmarks/inference.py [--seconds 3]

For an MLP and a CNN (both with a dynamic batch dimension), with the stock tritonclient
gRPC client (also against the echo server, so both sides run the same client code):
latency p50/p99 at concurrency 1 and throughput at concurrency 16 for raw `session.run`,
the runtime, and the runtime with dynamic batching; and raw `session.run` on batches of
16, for the gain batching can bring at all on this machine. Prints a table and the ratios the
targets are stated in; timings on a shared machine are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from edgefleet.edge_runtime.config import RuntimeConfig
from edgefleet.edge_runtime.engine import session_options

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))
sys.path.insert(0, str(REPO_ROOT))
import testmodels  # noqa: E402

import localcluster  # noqa: E402
from tests.conftest import EdgeProcess, launch_edge, stop_edge  # noqa: E402

CONCURRENCY = 16


@dataclass
class Figures:
    p50_ms: float
    p99_ms: float
    throughput: float  # requests per second at CONCURRENCY


def percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.array(samples) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def timed_loop(call: Callable[[], object], seconds: float) -> list[float]:
    for _ in range(50):  # warm-up
        call()
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def raw_session(model: bytes, x: np.ndarray, seconds: float) -> Figures:
    # The runtime's own session options (no thread spinning by default), so that the
    # comparison isolates what serving adds.
    session = ort.InferenceSession(model, sess_options=session_options(RuntimeConfig()),
                                   providers=["CPUExecutionProvider"])
    p50, p99 = percentiles(timed_loop(lambda: session.run(None, {"x": x}), seconds))
    done = 0
    deadline = time.perf_counter() + seconds

    def worker() -> int:
        count = 0
        while time.perf_counter() < deadline:
            session.run(None, {"x": x})
            count += 1
        return count

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        done = sum(pool.map(lambda _: worker(), range(CONCURRENCY)))
    return Figures(p50, p99, done / seconds)


def raw_batches(model: bytes, x: np.ndarray, seconds: float) -> float:
    """Rows a second of back-to-back batches of CONCURRENCY rows, one at a time as the
    batcher runs them: with `raw_session`'s throughput, the gain ONNX Runtime itself
    gets from batching on this machine, which bounds what any server's batching gets."""
    session = ort.InferenceSession(model, sess_options=session_options(RuntimeConfig()),
                                   providers=["CPUExecutionProvider"])
    batch = np.concatenate([x] * CONCURRENCY)
    samples = timed_loop(lambda: session.run(None, {"x": batch}), seconds)
    return CONCURRENCY * len(samples) / sum(samples)


def runtime_figures(edge: EdgeProcess, model: str, x: np.ndarray, seconds: float) -> Figures:
    stock = triton_grpc.InferenceServerClient(edge.grpc_url)
    item = triton_grpc.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    p50, p99 = percentiles(timed_loop(lambda: stock.infer(model, [item]), seconds))

    async def load() -> int:
        client = triton_aio.InferenceServerClient(edge.grpc_url)
        aio_item = triton_aio.InferInput("x", list(x.shape), "FP32")
        aio_item.set_data_from_numpy(x)
        deadline = time.perf_counter() + seconds
        counts = [0] * CONCURRENCY

        async def worker(index: int) -> None:
            while time.perf_counter() < deadline:
                await client.infer(model, [aio_item])
                counts[index] += 1

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        await client.close()
        return sum(counts)

    return Figures(p50, p99, asyncio.run(load()) / seconds)


# A bare grpc.aio server that answers ModelInfer with the request's own bytes. The
# stock client parses them as a response (the tensor messages share their field
# numbers), so both sides of the comparison run the same client code. Each model is
# compared with the echo of its own request.
ECHO_SERVER = """
import asyncio, grpc, sys
async def echo(request, context):
    return request
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)}),))
    server.add_insecure_port(sys.argv[1])
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


def echo_round_trip(x: np.ndarray, seconds: float) -> tuple[float, float]:
    address = f"127.0.0.1:{localcluster.free_port()}"
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, address])
    try:
        grpc.channel_ready_future(grpc.insecure_channel(address)).result(timeout=30)
        stock = triton_grpc.InferenceServerClient(address)
        item = triton_grpc.InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        return percentiles(timed_loop(lambda: stock.infer("echo", [item]), seconds))
    finally:
        server.terminate()
        server.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    seconds = args.seconds
    models = {"mlp": (testmodels.mlp(), np.random.default_rng(0).standard_normal(
                  (1, 64)).astype(np.float32)),
              "cnn": (testmodels.cnn(channels=32, size=32), np.random.default_rng(0)
                      .standard_normal((1, 1, 32, 32)).astype(np.float32))}
    batching = {"runtime": {"batching": {"maxBatchSize": CONCURRENCY, "maxDelayMicros": 2000}}}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (model, _) in models.items():
            testmodels.write_model(root / "plain", name, "1", model)
            testmodels.write_model(root / "batched", name, "1", model, batching)
        (root / "empty").mkdir()
        idle = launch_edge(root / "idle.log", "serve", "--model-repository", str(root / "empty"))
        time.sleep(1)
        idle_rss = rss_mb(idle.process.pid)
        stop_edge(idle)

        plain = launch_edge(root / "plain.log", "serve", "--model-repository",
                            str(root / "plain"))
        batched = launch_edge(root / "batched.log", "serve", "--model-repository",
                              str(root / "batched"))
        try:
            rows = []
            for name, (model, x) in models.items():
                raw = raw_session(model, x, seconds)
                raw_batched = raw_batches(model, x, seconds)
                unbatched = runtime_figures(plain, name, x, seconds)
                with_batching = runtime_figures(batched, name, x, seconds)
                echo = echo_round_trip(x, seconds)
                rows.append((name, raw, raw_batched, unbatched, with_batching, echo))
        finally:
            stop_edge(plain)
            stop_edge(batched)

    print(f"\nInference benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"onnxruntime {ort.__version__}; {seconds:.0f} s per figure")
    print("session.run uses the runtime's session options (no thread spinning, the default)")
    print(f"{'model':<6} {'mode':<18} {'p50 ms':>8} {'p99 ms':>8} {'req/s @16':>10}")
    for name, raw, raw_batched, unbatched, with_batching, (echo_p50, echo_p99) in rows:
        print(f"{name:<6} {'session.run':<18} {raw.p50_ms:8.3f} {raw.p99_ms:8.3f} "
              f"{raw.throughput:10.0f}")
        print(f"{name:<6} {'session.run x16':<18} {'':>8} {'':>8} {raw_batched:10.0f}")
        for mode, figures in (("runtime", unbatched), ("runtime+batching", with_batching)):
            print(f"{name:<6} {mode:<18} {figures.p50_ms:8.3f} {figures.p99_ms:8.3f} "
                  f"{figures.throughput:10.0f}")
        print(f"{name:<6} {'grpc.aio echo':<18} {echo_p50:8.3f} {echo_p99:8.3f} {'':>10}")
    print("\nTargets (ratios from this run):")
    for name, raw, raw_batched, unbatched, with_batching, (echo_p50, _) in rows:
        added = (unbatched.p50_ms - raw.p50_ms) / echo_p50
        print(f"  {name}: runtime adds {added:.2f}x the echo round trip at p50 (target <= 1.5)")
        print(f"  {name}: batching gives {with_batching.throughput / unbatched.throughput:.2f}x "
              "the unbatched throughput at concurrency 16 (target >= 1.5 on cnn); "
              f"ONNX Runtime alone gains {raw_batched / raw.throughput:.2f}x from batches "
              "of 16 over 16 concurrent single runs")
    print(f"  idle runtime RSS: {idle_rss:.0f} MB (target < 85)")


if __name__ == "__main__":
    main()
