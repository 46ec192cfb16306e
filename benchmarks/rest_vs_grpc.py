"""REST against gRPC on one edge runtime: the server's own time per request, and the
end-to-end latency with the stock tritonclient clients.

    .venv/bin/python benchmarks/rest_vs_grpc.py [--seconds 2]

One `edgefleet-edge serve` process serves a small MLP (x [-1, 64] FP32 -> logits [-1, 10],
cheap to run). Requests of 64, 1024 and 4096 rows (16 KiB, 256 KiB and 1 MiB of FP32) go
one at a time through the stock gRPC client, the stock HTTP client with JSON tensors and
the stock HTTP client with binary tensors. For each: the p50 end to end (until the client
holds the output as numpy), and the server's time per request from the runtime's own
edgefleet_inference_request_duration_seconds (the change of its sum over the change of its
count across the phase, scraped from /metrics before and after). On both transports that
metric runs from the request's bytes in hand to the outputs computed: decode, routing and
the run; encoding the response and the transport's own framing are outside it on both.

Then the converter cost of the case the REST speed issue names, in process: decoding a
64x64 FP32 request as the stock HTTP client writes it in JSON, and encoding a 64x10 FP32
JSON response, the way the runtime did it before orjson (kept below as a reference) and
now.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import rapidjson
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.edge_runtime.engine import InferResponse, OutputTensor
from edgefleet.edge_runtime.serving import converters

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))
sys.path.insert(0, str(REPO_ROOT))
import testmodels  # noqa: E402

from tests.conftest import EdgeProcess, launch_edge, stop_edge  # noqa: E402

MODEL, FEATURES, CLASSES = "mlp", 64, 10
ROWS = {"16 KiB": 64, "256 KiB": 1024, "1 MiB": 4096}
CLIENTS = ("grpc", "http json", "http binary")
REQUEST_SECONDS = "edgefleet_inference_request_duration_seconds"
TARGET = 1.5


@dataclass
class Phase:
    p50_ms: float
    server_ms: float
    requests: int


def server_totals(edge: EdgeProcess) -> tuple[float, float]:
    """The request-duration histogram's sum and count for the model."""
    for family in text_string_to_metric_families(edge.metrics()):
        if family.name == REQUEST_SECONDS:
            values = {sample.name: sample.value for sample in family.samples
                      if sample.labels.get("model") == MODEL
                      and sample.name in (f"{REQUEST_SECONDS}_sum", f"{REQUEST_SECONDS}_count")}
            return values[f"{REQUEST_SECONDS}_sum"], values[f"{REQUEST_SECONDS}_count"]
    raise RuntimeError(f"/metrics has no {REQUEST_SECONDS}")


def measure(edge: EdgeProcess, call: Callable[[], np.ndarray], seconds: float) -> Phase:
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    for _ in range(3):
        call()
    while time.perf_counter() < warm_until:
        call()
    sum_before, count_before = server_totals(edge)
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    sum_after, count_after = server_totals(edge)
    served = count_after - count_before
    assert served == len(samples), f"{served} requests counted, {len(samples)} sent"
    return Phase(float(np.percentile(samples, 50)) * 1000,
                 (sum_after - sum_before) / served * 1000, len(samples))


def stock_call(edge: EdgeProcess, kind: str, x: np.ndarray) -> Callable[[], np.ndarray]:
    """One inference with a stock client, its input prepared once as a client reusing
    it would; the call ends with the output as numpy."""
    if kind == "grpc":
        grpc_client = triton_grpc.InferenceServerClient(edge.grpc_url)
        grpc_input = triton_grpc.InferInput("x", list(x.shape), "FP32")
        grpc_input.set_data_from_numpy(x)
        return lambda: grpc_client.infer(MODEL, [grpc_input]).as_numpy("logits")
    binary = kind == "http binary"
    http_client = triton_http.InferenceServerClient(edge.http_url)
    http_input = triton_http.InferInput("x", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x, binary_data=binary)
    output = triton_http.InferRequestedOutput("logits", binary_data=binary)
    return lambda: http_client.infer(MODEL, [http_input], outputs=[output]).as_numpy("logits")


# ---------------------------------------------------------------- converter cost


def _flatten_before(data: Any) -> list[Any]:
    """converters._flatten as it was."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten_before(item))
    return flat


def decode_before(body: bytes) -> np.ndarray:
    """The JSON request decode before orjson, reduced to what took the time: Python's
    json, the hand-written flatten, numpy over the flat list to probe its type, then again
    to convert it."""
    tensor = json.loads(body)["inputs"][0]
    values = _flatten_before(tensor["data"])
    np.asarray(values)
    return np.asarray(values, dtype=np.float32).reshape(tensor["shape"])


def encode_before(response: InferResponse) -> bytes:
    """The JSON response encode before orjson: tolist, then Python's json."""
    outputs = [{"name": o.name, "datatype": o.datatype, "shape": list(o.data.shape),
                "data": np.asarray(o.data).reshape(-1).tolist()} for o in response.outputs]
    return json.dumps({"model_name": response.model, "model_version": response.version,
                       "outputs": outputs}).encode()


def microseconds(call: Callable[[], object]) -> float:
    number = 200
    return min(timeit.repeat(call, number=number, repeat=7)) / number * 1e6


def converter_costs() -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, FEATURES)).astype(np.float32)
    # As tritonclient.http writes it: one Python float per element, through rapidjson.
    body = rapidjson.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                        "data": [v.item() for v in x.reshape(-1)]}]}).encode()
    logits = rng.standard_normal((64, CLASSES)).astype(np.float32)
    response = InferResponse(MODEL, "1", [OutputTensor("logits", "FP32", logits)])

    request, _, _ = converters.infer_request_from_json(MODEL, None, body, b"")
    assert np.array_equal(request.inputs["x"], decode_before(body))
    header, _ = converters.infer_response_to_json(response, False, set())
    # orjson writes a float32's shortest digits, Python's json its float64 ones: both read
    # back as the same float32.
    now, before = (np.array(json.loads(text)["outputs"][0]["data"], dtype=np.float32)
                   for text in (header, encode_before(response)))
    assert np.array_equal(now, before)
    return {
        "decode 64x64 FP32 request": (
            microseconds(lambda: decode_before(body)),
            microseconds(lambda: converters.infer_request_from_json(MODEL, None, body, b""))),
        "encode 64x10 FP32 response": (
            microseconds(lambda: encode_before(response)),
            microseconds(lambda: converters.infer_response_to_json(response, False, set()))),
    }


# ---------------------------------------------------------------- run and report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="per figure (9 figures, each with a short warm-up)")
    args = parser.parse_args()
    seconds = args.seconds

    results: dict[tuple[str, str], Phase] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        testmodels.write_model(root / "models", MODEL, "1",
                               testmodels.mlp(features=FEATURES, hidden=16, classes=CLASSES))
        # 1 MiB of FP32 as JSON text is about 5 MB; the default limit is 8 MiB.
        edge = launch_edge(root / "edge.log", "serve", "--model-repository",
                           str(root / "models"), "--max-request-bytes", str(64 * 2**20))
        try:
            for size, rows in ROWS.items():
                x = np.random.default_rng(rows).standard_normal((rows, FEATURES)).astype(
                    np.float32)
                calls = {kind: stock_call(edge, kind, x) for kind in CLIENTS}
                answers = [call() for call in calls.values()]
                assert all(np.allclose(answer, answers[0], rtol=1e-6) for answer in answers)
                for kind, call in calls.items():
                    results[size, kind] = measure(edge, call, seconds)
        finally:
            stop_edge(edge)
    costs = converter_costs()

    print(f"\nREST vs gRPC, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, orjson "
          f"{orjson.__version__}; {seconds:g} s per figure, concurrency 1")
    print("server ms: the runtime's request duration (decode, routing, run; not encode)")
    print(f"{'request':<8} {'client':<12} {'p50 ms':>8} {'server ms':>10} {'requests':>9}")
    for (size, kind), phase in results.items():
        print(f"{size:<8} {kind:<12} {phase.p50_ms:8.3f} {phase.server_ms:10.3f} "
              f"{phase.requests:9d}")
    print(f"\nRatios REST/gRPC (target <= {TARGET}):")
    print(f"{'request':<8} {'server json':>12} {'server binary':>14} {'e2e binary':>11}")
    for size in ROWS:
        grpc = results[size, "grpc"]
        ratios = (results[size, "http json"].server_ms / grpc.server_ms,
                  results[size, "http binary"].server_ms / grpc.server_ms,
                  results[size, "http binary"].p50_ms / grpc.p50_ms)
        cells = [f"{ratio:.2f}{'' if ratio <= TARGET else ' !'}" for ratio in ratios]
        print(f"{size:<8} {cells[0]:>12} {cells[1]:>14} {cells[2]:>11}")
    print("\nConverter cost in process, us (before: Python json and the hand-written "
          "flatten; now: orjson and numpy):")
    for what, (before, now) in costs.items():
        print(f"  {what:<28} before {before:8.1f}   now {now:8.1f}   ({before / now:.1f}x)")


if __name__ == "__main__":
    main()
