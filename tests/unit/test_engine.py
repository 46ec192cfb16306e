"""Engine policy that needs no session: provider fallback and where runs happen."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgefleet.edge_runtime.config import RuntimeConfig
from edgefleet.edge_runtime.engine import Engine, InferRequest, choose_providers, runs_inline


def test_missing_providers_fall_back_to_cpu_with_a_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"],
                                  ["CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text


def test_available_providers_keep_their_order_and_cpu_comes_last() -> None:
    assert choose_providers(["OpenVINOExecutionProvider"],
                            ["OpenVINOExecutionProvider", "CPUExecutionProvider"]) == [
        "OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_cheap_runs_stay_on_the_loop_and_long_ones_only_when_alone() -> None:
    runtime = RuntimeConfig(inline_below_micros=150, inline_alone_below_micros=2000)
    assert runs_inline(100e-6, runtime, alone=False)
    assert not runs_inline(500e-6, runtime, alone=False)
    assert runs_inline(500e-6, runtime, alone=True)
    assert not runs_inline(3e-3, runtime, alone=True)


def test_zero_limits_send_every_run_to_the_pool() -> None:
    runtime = RuntimeConfig(inline_below_micros=0, inline_alone_below_micros=0)
    assert not runs_inline(1e-6, runtime, alone=True)
    # Turning the lone-request rule off keeps the always-inline threshold.
    assert runs_inline(100e-6, RuntimeConfig(inline_alone_below_micros=0), alone=True)


def test_a_model_of_scalars_answers_and_counts_one_inference_a_request(tmp_path: Path) -> None:
    """No batch dimension to count rows by: the statistics count each request once."""
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "scalar",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, path)

    async def run() -> tuple[float, int, int]:
        engine = Engine(threads=1)
        try:
            loaded = await engine.load("scalar", "1", path, RuntimeConfig())
            engine.route("scalar", {"1": 1.0})
            request = InferRequest("scalar", None, {"x": np.array(3.0, np.float32)},
                                   {"x": "FP32"})
            answer = await engine.infer(request, time.perf_counter())
            await engine.infer(request, time.perf_counter())
            return (float(answer.outputs[0].data), loaded.statistics.inference_count,
                    loaded.statistics.success.count)
        finally:
            await engine.close()

    assert asyncio.run(run()) == (-3.0, 2, 2)
