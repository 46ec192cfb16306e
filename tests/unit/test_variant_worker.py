"""The variant build worker: real worker processes for the job/result contract, the
builds and their determinism; in-process calls for the dataset format and the metrics."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.operator.variant_worker import (
    WorkerError,
    evaluate,
    load_dataset,
    optimize,
    parse_job,
    session,
)

FEATURES, CLASSES, ROWS = 16, 4, 200
GIB = 2**30


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def classifier(path: Path) -> Path:
    """softmax(x @ w + b), [batch, 16] -> [batch, 4], seeded weights."""
    rng = np.random.default_rng(1)
    return _save(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Add", ["h", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["scores"], axis=-1)], "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((FEATURES, CLASSES)).astype(np.float32),
                                    "w"),
            numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "b")]),
        path)


def identity(path: Path, width: int) -> Path:
    """y = x on [batch, width]: its scores are whatever the dataset says."""
    return _save(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])]), path)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return classifier(tmp_path / "classifier.onnx")


@pytest.fixture
def dataset(tmp_path: Path, model: Path) -> Path:
    """Seeded inputs, labelled with the source's own predictions (it scores 1.0)."""
    pixels = np.random.default_rng(2).standard_normal((ROWS, FEATURES)).astype(np.float32)
    labels = session(model).run(None, {"x": pixels})[0].argmax(axis=-1)
    np.savez(tmp_path / "dataset.npz", x=pixels, labels=labels)
    return tmp_path / "dataset.npz"


def job(source: Path, output: Path, **fields: object) -> dict[str, object]:
    return {"source": str(source), "output": str(output), "optimize": {}, "calibration": None,
            "validation": None, "latencySamples": 20, "memoryLimitBytes": 4 * GIB, **fields}


def start(request: dict[str, object]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "edgefleet.operator.variant_worker"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert process.stdin is not None
    process.stdin.write(json.dumps(request).encode())
    process.stdin.close()
    return process


def result(process: subprocess.Popen[bytes]) -> dict[str, object]:
    """The one JSON line the worker writes, checked to be all of its stdout."""
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout.read(), process.stderr.read()
    assert process.wait(timeout=60) == 0, stderr.decode()
    assert stdout.count(b"\n") == 1 and stdout.endswith(b"\n"), stdout
    answer = json.loads(stdout)
    assert isinstance(answer, dict)
    return answer


def work(request: dict[str, object]) -> dict[str, object]:
    return result(start(request))


def elem_types(path: Path) -> list[int]:
    graph = onnx.load(path).graph
    return [value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]]


def test_dynamic_int8_variant_scores_close_to_its_source(tmp_path: Path, model: Path,
                                                        dataset: Path) -> None:
    output = tmp_path / "int8.onnx"
    answer = work(job(model, output, optimize={"quantization": "dynamicInt8"},
                      validation={"dataset": str(dataset), "metric": "accuracy", "k": 5}))

    data = output.read_bytes()
    assert answer["ok"] is True
    assert answer["bytes"] == len(data)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert isinstance(answer["buildSeconds"], float) and answer["buildSeconds"] >= 0
    report = answer["validation"]
    assert isinstance(report, dict)
    assert (report["metric"], report["samples"]) == ("accuracy", ROWS)
    assert report["source"]["score"] == 1.0
    assert 0.95 <= report["variant"]["score"] <= 1.0
    assert report["variant"]["latencyMs"] > 0 and report["source"]["latencyMs"] > 0
    quantized = onnx.load(output)
    assert "MatMulInteger" in {node.op_type for node in quantized.graph.node}
    assert elem_types(output) == [TensorProto.FLOAT, TensorProto.FLOAT]


def test_every_transformation_builds_the_same_bytes_in_another_process(
        tmp_path: Path, model: Path, dataset: Path) -> None:
    variants = {"copy": {}, "dynamicInt8": {"quantization": "dynamicInt8"},
                "staticInt8": {"quantization": "staticInt8"}, "fp16": {"fp16": True},
                "all": {"graphOptimizationLevel": "all"}}
    # Both builds of every variant at once: the suite's time budget is small.
    running = {(name, attempt): start(job(model, tmp_path / f"{name}-{attempt}.onnx",
                                          optimize=spec, calibration=str(dataset)))
               for name, spec in variants.items() for attempt in (1, 2)}
    answers = {key: result(process) for key, process in running.items()}

    digests = {}
    for name in variants:
        first, second = answers[name, 1], answers[name, 2]
        assert first["ok"] is True and second["ok"] is True, (first, second)
        assert first["sha256"] == second["sha256"], name
        assert (tmp_path / f"{name}-1.onnx").read_bytes() == (tmp_path / f"{name}-2.onnx"
                                                              ).read_bytes()
        assert elem_types(tmp_path / f"{name}-1.onnx") == [TensorProto.FLOAT] * 2, name
        digests[name] = first["sha256"]
    assert digests["copy"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert len(set(digests.values())) == len(variants)  # each one did transform
    static_ops = {node.op_type for node in onnx.load(tmp_path / "staticInt8-1.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= static_ops
    fp16_weights = onnx.load(tmp_path / "fp16-1.onnx").graph.initializer
    assert {tensor.data_type for tensor in fp16_weights} == {TensorProto.FLOAT16}


def test_dataset_of_the_wrong_shape_is_refused_naming_the_input(tmp_path: Path,
                                                                model: Path) -> None:
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((50, FEATURES - 1), np.float32),
             labels=np.zeros(50, np.int64))
    output = tmp_path / "int8.onnx"
    answer = work(job(model, output, optimize={"quantization": "dynamicInt8"},
                      validation={"dataset": str(tmp_path / "bad.npz"), "metric": "accuracy",
                                  "k": 5}))

    assert answer == {"ok": False, "reason": "InvalidDataset", "message": (
        "validation dataset: array 'inputs' has shape (50, 15), the model's input 'x' "
        "takes [batch, 16]")}
    assert not output.exists()  # refused before any build


def test_a_file_that_is_not_onnx_fails_the_build(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"PK\x03\x04 certainly not a protobuf model")

    answer = work(job(source, tmp_path / "out.onnx", optimize={"quantization": "dynamicInt8"}))

    assert answer["ok"] is False and answer["reason"] == "BuildFailed"
    assert isinstance(answer["message"], str) and "\n" not in answer["message"]
    assert "does not load in ONNX Runtime" in answer["message"]


def test_quantization_with_fp16_is_an_invalid_job(tmp_path: Path) -> None:
    with pytest.raises(WorkerError) as refused:
        parse_job(json.dumps(job(tmp_path / "m.onnx", tmp_path / "o.onnx",
                                 optimize={"quantization": "dynamicInt8", "fp16": True})))
    assert refused.value.reason == "InvalidJob"
    assert refused.value.message == "job: quantization and fp16 do not go together"


def report_on(tmp_path: Path, x: np.ndarray, labels: np.ndarray, metric: str,
              k: int = 5) -> dict[str, object]:
    """The validation report of y = x against itself, computed in-process."""
    model = session(identity(tmp_path / "identity.onnx", x.shape[1]))
    np.savez(tmp_path / "data.npz", inputs=x, labels=labels)
    request = parse_job(json.dumps(job(
        tmp_path / "identity.onnx", tmp_path / "out.onnx",
        validation={"dataset": str(tmp_path / "data.npz"), "metric": metric, "k": k})))
    rows = load_dataset(tmp_path / "data.npz", model.get_inputs(), "validation dataset",
                        labels=True)
    return evaluate(model, model, rows, request)


SCORES = np.array([[0.1, 0.5, 0.4],     # label 2: one class above it
                   [0.9, 0.05, 0.05],   # label 1: one above, one tied
                   [0.2, 0.3, 0.5]], np.float32)  # label 0: two above
LABELS = np.array([2, 1, 0])


@pytest.mark.parametrize(("k", "expected"), [(1, 0.0), (2, 2 / 3), (3, 1.0), (50, 1.0)])
def test_top_k_counts_a_row_right_when_fewer_than_k_classes_score_above_its_label(
        tmp_path: Path, k: int, expected: float) -> None:
    report = report_on(tmp_path, SCORES, LABELS, "topK", k)
    assert report["source"]["score"] == pytest.approx(expected)
    assert report["variant"]["score"] == pytest.approx(expected)


def test_accuracy_compares_the_argmax_with_the_labels(tmp_path: Path) -> None:
    report = report_on(tmp_path, SCORES, np.array([1, 1, 2]), "accuracy")
    assert report["source"]["score"] == pytest.approx(2 / 3)


def test_mean_squared_error_averages_over_every_element(tmp_path: Path) -> None:
    x = np.array([[1, 2], [3, 4]], np.float32)
    report = report_on(tmp_path, x, np.array([[1, 2], [3, 6]], np.float64), "meanSquaredError")
    assert report["source"]["score"] == pytest.approx(1.0)  # (0 + 0 + 0 + 2**2) / 4


def test_mean_squared_error_labels_must_be_shaped_like_the_output(tmp_path: Path) -> None:
    with pytest.raises(WorkerError) as refused:
        report_on(tmp_path, SCORES, np.zeros((3, 2)), "meanSquaredError")
    assert refused.value.reason == "InvalidDataset"
    assert "'labels' has shape (3, 2)" in refused.value.message
    assert "'y' (float32, shape (3, 3))" in refused.value.message


def test_arrays_with_different_row_counts_are_refused(tmp_path: Path) -> None:
    model = session(identity(tmp_path / "identity.onnx", 3))
    np.savez(tmp_path / "data.npz", x=SCORES, labels=np.array([0, 1]))
    with pytest.raises(WorkerError) as refused:
        load_dataset(tmp_path / "data.npz", model.get_inputs(), "validation dataset",
                     labels=True)
    assert refused.value.reason == "InvalidDataset"
    assert refused.value.message == ("validation dataset: array 'labels' has 2 rows, expected "
                                     "the same number as 'x' (3), between 1 and 100000")


def test_graph_optimization_leaves_out_the_host_specific_nchwc_layout(tmp_path: Path) -> None:
    weights = np.random.default_rng(3).standard_normal((8, 1, 3, 3)).astype(np.float32)
    source = _save(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])],
        initializer=[numpy_helper.from_array(weights, "w")]), tmp_path / "conv.onnx")
    spec = parse_job(json.dumps(job(source, tmp_path / "out.onnx", optimize={
        "graphOptimizationLevel": "all"}))).optimize
    (tmp_path / "work").mkdir()

    optimize(source, tmp_path / "out.onnx", spec, None, tmp_path / "work", 256)

    nodes = [(node.op_type, node.domain) for node in onnx.load(tmp_path / "out.onnx").graph.node]
    assert nodes == [("FusedConv", "com.microsoft")]  # optimized, and in no NCHWc layout
