"""Warm-up on real ONNX Runtime sessions: a model that cannot run on zeros still serves
and is timed by its first requests; config.json's samples warm it up instead; a sample
that does not fit the model is a configuration error that names the field."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import testmodels
from pydantic import ValidationError

from edgefleet.edge_runtime import engine as engine_module
from edgefleet.edge_runtime.config import ModelConfig, RuntimeConfig, WarmupSample
from edgefleet.edge_runtime.engine import WARMUP_RUNS, Engine, InferRequest, ModelVersion
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.repository import RepositorySync

X = {"datatype": "FP32", "shape": [3], "data": [1.0, 2.0, 3.0]}
SHAPE = {"datatype": "INT64", "shape": [2], "data": [2, 3]}


def sample(**inputs: dict[str, Any]) -> WarmupSample:
    return WarmupSample.model_validate({"inputs": inputs})


def with_engine(body: Callable[[Engine], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        engine = Engine(threads=1)
        try:
            return await body(engine)
        finally:
            await engine.close()
    return asyncio.run(run())


def expand_request(shape: list[int]) -> InferRequest:
    return InferRequest("expand", None, {"x": np.array([1, 2, 3], dtype=np.float32),
                                         "shape": np.array(shape, dtype=np.int64)},
                        {"x": "FP32", "shape": "INT64"})


def test_a_model_that_fails_warm_up_on_zeros_serves_and_its_first_runs_set_the_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = testmodels.write_model(tmp_path, "expand", "1", testmodels.expand_to_shape())
    threads: list[str] = []
    run_session = engine_module._run_session

    def recording(model: ModelVersion, feeds: dict[str, np.ndarray]) -> Any:
        threads.append(threading.current_thread().name)
        return run_session(model, feeds)

    monkeypatch.setattr(engine_module, "_run_session", recording)

    async def body(engine: Engine) -> None:
        with caplog.at_level(logging.WARNING):
            loaded = await engine.load("expand", "1", path, RuntimeConfig())
        engine.route("expand", {"1": 1.0})
        assert math.isinf(loaded.warmup_s)  # unknown: nothing timed yet
        response = await engine.infer(expand_request([2, 1]), 0.0)
        assert np.array_equal(response.outputs[0].data, [[1, 2, 3], [1, 2, 3]])
        assert 0 < loaded.warmup_s < math.inf and loaded.warmup_elements == 5
        for _ in range(WARMUP_RUNS):
            await engine.infer(expand_request([4, 3]), 0.0)
        assert loaded.runs_to_time == 0

    with_engine(body)
    warned = [r.getMessage() for r in caplog.records if "warm-up on zeros failed" in r.message]
    assert len(warned) == 1
    assert "model=expand version=1" in warned[0] and "invalid expand shape" in warned[0]
    # Unknown cost goes to the pool; once timed, a tiny run alone stays on the loop.
    assert threads[0].startswith("onnxruntime")
    assert threads[-1] == threading.main_thread().name


def test_config_samples_warm_up_a_model_that_zeros_cannot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    testmodels.write_model(tmp_path, "expand", "1", testmodels.expand_to_shape(),
                           {"warmup": [{"inputs": {"x": X, "shape": SHAPE}}]})

    async def body(engine: Engine) -> ModelVersion:
        await RepositorySync(engine, tmp_path).sync()
        return engine.resolve("expand", None)

    with caplog.at_level(logging.WARNING):
        loaded = with_engine(body)
    assert 0 < loaded.warmup_s < math.inf
    assert loaded.warmup_elements == 5  # the sample's 3 + 2 elements, not zeros' ones
    assert loaded.runs_to_time == 0
    assert "warm-up on zeros failed" not in caplog.text


@pytest.mark.parametrize(("inputs", "reason"), [
    ({"x": X, "shap": SHAPE}, r"expects inputs \['shape', 'x'\]; missing \['shape'\], "
                              r"unexpected \['shap'\]"),
    ({"x": X, "shape": {**SHAPE, "datatype": "INT32"}},
     "input 'shape': expected datatype INT64, got INT32"),
    ({"x": X, "shape": {**SHAPE, "shape": [1, 2]}},
     r"input 'shape': expected shape \[2\] \(-1: any\), got \[1, 2\]"),
])
def test_a_sample_that_does_not_fit_the_model_is_refused_naming_the_field(
    tmp_path: Path, inputs: dict[str, dict[str, Any]], reason: str,
) -> None:
    path = testmodels.write_model(tmp_path, "expand", "1", testmodels.expand_to_shape())
    fits = sample(x=X, shape=SHAPE)
    with pytest.raises(InferenceError) as refused:
        with_engine(lambda engine: engine.load("expand", "1", path, RuntimeConfig(),
                                               warmup=[fits, sample(**inputs)]))
    message = refused.value.message
    assert "model 'expand' version '1': warmup[1] does not fit the model: " in message
    assert re.search(reason, message), message


def test_a_sample_onnx_runtime_cannot_run_is_refused_with_its_reason(tmp_path: Path) -> None:
    path = testmodels.write_model(tmp_path, "expand", "1", testmodels.expand_to_shape())
    cannot_broadcast = sample(x=X, shape={**SHAPE, "data": [2, 2]})
    with pytest.raises(InferenceError, match=r"model 'expand' version '1': warmup\[0\] fails "
                                             r"in ONNX Runtime: .*invalid expand shape"):
        with_engine(lambda engine: engine.load("expand", "1", path, RuntimeConfig(),
                                               warmup=[cannot_broadcast]))


def test_a_repository_model_with_a_bad_sample_is_not_served_and_the_log_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    testmodels.write_model(tmp_path, "expand", "1", testmodels.expand_to_shape(),
                           {"warmup": [{"inputs": {"x": X}}]})

    async def body(engine: Engine) -> list[str]:
        await RepositorySync(engine, tmp_path).sync()
        return engine.models()

    with caplog.at_level(logging.ERROR):
        assert with_engine(body) == []
    assert "warmup[0] does not fit the model" in caplog.text
    assert "missing ['shape']" in caplog.text


@pytest.mark.parametrize(("warmup", "where", "reason"), [
    ([{"inputs": {"x": {**X, "datatype": "FP128"}}}], "warmup.0",
     "input 'x': unsupported datatype 'FP128'"),
    ([{"inputs": {"x": {**X, "shape": [4]}}}], "warmup.0",
     r"input 'x': 3 values given, shape \[4\] needs 4"),
    ([{"inputs": {"shape": {**SHAPE, "data": [2.5, 3]}}}], "warmup.0",
     "input 'shape': values do not fit INT64: fractional values"),
    ([{"inputs": {"x": {**X, "data": ["1", 2, 3]}}}], "warmup.0",
     "input 'x': values do not fit FP32: values must be numbers"),
    ([{"inputs": {"x": {"datatype": "FP32", "shape": [(1 << 18) + 1],
                        "data": [0.0] * ((1 << 18) + 1)}}}], "warmup.0.inputs.x.data",
     "at most 262144 items"),
    ([{"inputs": {"a": {"datatype": "FP32", "shape": [1 << 17], "data": [0.0] * (1 << 17)},
                  "b": {"datatype": "FP32", "shape": [1 << 17], "data": [0.0] * (1 << 17)},
                  "c": X}}], "warmup.0",
     "inputs hold 262147 elements together; a warm-up sample holds at most 262144"),
    ([{"inputs": {"x": X}}] * 5, "warmup", "at most 4 items"),
    ([{"inputs": {"x": {**X, "values": [1]}}}], "warmup.0.inputs.x.values",
     "Extra inputs are not permitted"),
])
def test_samples_that_do_not_decode_are_refused_in_the_config_naming_the_field(
    warmup: list[dict[str, Any]], where: str, reason: str,
) -> None:
    with pytest.raises(ValidationError) as refused:
        ModelConfig.model_validate({"warmup": warmup})
    errors = refused.value.errors()
    assert [".".join(str(part) for part in error["loc"]) for error in errors] == [where]
    assert re.search(reason, errors[0]["msg"]), errors[0]["msg"]
