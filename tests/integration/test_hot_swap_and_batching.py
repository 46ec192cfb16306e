"""Hot swap under load and dynamic batching, on a real runtime process."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import testmodels
import tritonclient.grpc as triton_grpc

from tests.conftest import EdgeProcess, StartEdge
from tests.helpers import eventually
from tests.integration.test_inference import DTYPES, infer, tensor

pytestmark = pytest.mark.integration


def write_atomically(root: Path, model: str, version: str, data: bytes) -> None:
    """As a careful operator would: the version directory appears complete."""
    staging = root / f".{model}-{version}"
    (staging / version).mkdir(parents=True)
    (staging / version / "model.onnx").write_bytes(data)
    os.rename(staging / version, root / model / version)
    staging.rmdir()


def test_swapping_versions_ten_times_under_load_fails_no_request(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    testmodels.write_model(tmp_path, "scaled", "1", testmodels.scaled(1.0))
    edge = start_edge(tmp_path, "--poll-seconds", "0.1")
    stop = threading.Event()
    outcomes: list[tuple[bool, float]] = []
    x = np.ones((1, 4), dtype=np.float32)

    def client_loop() -> None:
        stock = triton_grpc.InferenceServerClient(edge.grpc_url)
        item = triton_grpc.InferInput("x", [1, 4], "FP32")
        item.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                outcomes.append((True, float(stock.infer("scaled", [item]).as_numpy("y")[0, 0])))
            except Exception as error:  # any failure is what the test counts
                outcomes.append((False, 0.0))
                print(f"request failed: {error}")

    metadata = triton_grpc.InferenceServerClient(edge.grpc_url)
    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client_loop) for _ in range(4)]
        try:
            for version in range(2, 12):
                factor = 2.0 if version % 2 == 0 else 1.0
                write_atomically(tmp_path, "scaled", str(version), testmodels.scaled(factor))
                shutil.rmtree(tmp_path / "scaled" / str(version - 1))
                eventually(lambda v=version: metadata.get_model_metadata(
                    "scaled", as_json=True)["versions"] == [str(v)],
                    timeout=30, what=f"version {version} alone serving")
                seen = len(outcomes)
                eventually(lambda f=factor, n=seen: len(outcomes) > n + 20
                           and outcomes[-1][1] == f, what=f"answers from factor {factor}")
        finally:
            stop.set()
            for future in clients:
                future.result()

    failures = [o for o in outcomes if not o[0]]
    assert failures == []
    assert {value for _, value in outcomes} == {1.0, 2.0}
    assert len(outcomes) > 400


def batch_sizes(edge: EdgeProcess, model: str) -> tuple[float, float]:
    """(batches run, rows in them) from the runtime's batch size histogram."""
    count = total = 0.0
    for line in edge.metrics().splitlines():
        if line.startswith(f'edgefleet_inference_batch_size_count{{model="{model}"'):
            count = float(line.rsplit(" ", 1)[1])
        if line.startswith(f'edgefleet_inference_batch_size_sum{{model="{model}"'):
            total = float(line.rsplit(" ", 1)[1])
    return count, total


class Reference:
    """The model run directly in ONNX Runtime, one request at a time."""

    def __init__(self, data: bytes) -> None:
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: (np.vectorize(bytes.decode, otypes=[object])(v)
                     if v.dtype == object else v) for k, v in arrays.items()}
        results = self.session.run(None, feeds)
        return {name: (np.vectorize(str.encode, otypes=[object])(r) if r.dtype == object
                       else r) for name, r in zip(self.output_names(), results,
                                                  strict=True)}


def test_batched_results_are_identical_to_unbatched_runs(start_edge: StartEdge,
                                                         tmp_path: Path) -> None:
    batching = {"runtime": {"batching": {"maxBatchSize": 16, "maxDelayMicros": 20000}}}
    models = {"mlp": testmodels.mlp(), "int_affine": testmodels.int_affine(),
              "types": testmodels.identity_all_types(), "fixed": testmodels.fixed_batch()}
    for name, data in models.items():
        testmodels.write_model(tmp_path, name, "1", data, batching)
    edge = start_edge(tmp_path)
    rng = np.random.default_rng(7)
    requests: list[tuple[str, dict[str, np.ndarray]]] = []
    for rows in [1, 2, 3] * 6:
        requests.append(("mlp", {"x": rng.standard_normal((rows, 64)).astype(np.float32)}))
        requests.append(("int_affine",
                         {"x": rng.integers(-1000, 1000, (rows, 4)).astype(np.int32)}))
        requests.append(("types", {f"in_{d}": np.repeat(tensor(d)[:1], rows, axis=0)
                                   for d in DTYPES}))
        requests.append(("fixed", {"x": rng.standard_normal((4, 8)).astype(np.float32)}))

    def ask(request: tuple[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        model, arrays = request
        result = infer(edge, "grpc", model, arrays,
                       {name: name.removeprefix("in_") for name in arrays if name[:3] == "in_"})
        return {out: result.as_numpy(out) for out in reference[model].output_names()}

    reference = {name: Reference(data) for name, data in models.items()}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, requests))
    for (model, arrays), answer in zip(requests, answers, strict=True):
        expected = reference[model].run(arrays)
        for name, value in expected.items():
            np.testing.assert_array_equal(answer[name], value, err_msg=f"{model}/{name}")

    for model in ("mlp", "int_affine", "types"):
        batches, rows = batch_sizes(edge, model)
        assert 0 < batches < rows, f"{model}: {batches} batches for {rows} rows"
    assert batch_sizes(edge, "fixed") == (0.0, 0.0)  # fixed batch dimension: never batched
