"""Small ONNX models for tests, benchmarks and examples/models, built with onnx.helper
(deterministic weights, no downloads).

    python hack/testmodels.py examples/models    # writes a model repository
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]

# Protocol datatype -> ONNX element type, for every type the runtime serves.
ONNX_ELEMENT_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="edgefleet-tests")
    model.ir_version = 8  # readable by every ONNX Runtime release of the last years
    onnx.checker.check_model(model)
    return model.SerializeToString()


def identity(datatype: str) -> bytes:
    """y = x on [-1, 3] of one datatype."""
    element = ONNX_ELEMENT_TYPES[datatype]
    return _model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", element, ["batch", 3])],
        [helper.make_tensor_value_info("y", element, ["batch", 3])]))


def identity_all_types() -> bytes:
    """One Identity per datatype: input `in_<TYPE>` [-1, 3] -> output `out_<TYPE>`."""
    inputs, outputs, nodes = [], [], []
    for datatype, element in ONNX_ELEMENT_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{datatype}", element, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{datatype}", element, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{datatype}"], [f"out_{datatype}"]))
    return _model(helper.make_graph(nodes, "types", inputs, outputs))


def scaled(factor: float, width: int = 4) -> bytes:
    """y = x * factor on [-1, width] FP32: versions that answer differently."""
    k = numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")
    return _model(helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[k]))


def flaky_scaled(factor: float) -> bytes:
    """y = x * factor on [-1, 4] FP32, like `scaled`, except that a row whose first
    element is 4 or more fails inside ONNX Runtime (it indexes a 4-row table)."""
    table = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "table")
    k = numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")
    first = numpy_helper.from_array(np.array([0], dtype=np.int64), "first")
    return _model(helper.make_graph([
        helper.make_node("Gather", ["x", "first"], ["column"], axis=1),  # [batch, 1]
        helper.make_node("Cast", ["column"], ["index"], to=TensorProto.INT64),
        helper.make_node("Squeeze", ["index", "one"], ["rows"]),
        helper.make_node("Gather", ["table", "rows"], ["ones"], axis=0),  # [batch, 4]
        helper.make_node("Mul", ["x", "ones"], ["same"]),
        helper.make_node("Mul", ["same", "k"], ["y"]),
    ], "flaky_scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[table, k, first,
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "one")]))


def slow_scaled(factor: float, width: int = 2048, matmuls: int = 400) -> bytes:
    """y = x * factor on [-1, 4] FP32, like `scaled`, after `matmuls` products of a
    `width`-wide row by a square matrix, whose result is added times zero: the same
    answers, much later (about 50 ms a row on the development machine)."""
    weights = numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")
    k = numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    repeats = numpy_helper.from_array(np.array([1, width // 4], dtype=np.int64), "repeats")
    nodes = [helper.make_node("Tile", ["x", "repeats"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(matmuls)]
    nodes += [helper.make_node("ReduceMean", [f"h{matmuls}"], ["mean"], axes=[1]),
              helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
              helper.make_node("Mul", ["x", "k"], ["scaled"]),
              helper.make_node("Add", ["scaled", "nothing"], ["y"])]
    return _model(helper.make_graph(
        nodes, "slow_scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights, k, zero, repeats]))


def mlp(features: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0) -> bytes:
    """A two-layer perceptron with a dynamic batch dimension."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["logits"]),
    ]
    return _model(helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=weights))


def cnn(channels: int = 16, size: int = 28, classes: int = 10, seed: int = 0) -> bytes:
    """Conv -> Relu -> Conv -> Relu -> global average pool -> Gemm, batch dynamic."""
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32),
                                       name)

    weights = [tensor("c1", channels, 1, 3, 3), tensor("c2", channels, channels, 3, 3),
               tensor("fc", channels, classes), tensor("fb", classes)]
    nodes = [
        helper.make_node("Conv", ["x", "c1"], ["a1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2"], ["a2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"]),
    ]
    return _model(helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=weights))


def int_affine() -> bytes:
    """y = x * 3 + 7 on [-1, 4] INT32: batching must give bit-identical results."""
    three = numpy_helper.from_array(np.array(3, dtype=np.int32), "three")
    seven = numpy_helper.from_array(np.array(7, dtype=np.int32), "seven")
    return _model(helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["t"]),
         helper.make_node("Add", ["t", "seven"], ["y"])], "int_affine",
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 4])],
        initializer=[three, seven]))


def fixed_batch() -> bytes:
    """[4, 8] FP32 plus one: its batch dimension is fixed, so it is never batched."""
    one = numpy_helper.from_array(np.array(1, dtype=np.float32), "one")
    return _model(helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], initializer=[one]))


def faulty() -> bytes:
    """Gathers row `index` of a 4-row table: an index past 3 fails inside ONNX Runtime."""
    table = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "table")
    return _model(helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["rows"])], "faulty",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 2])],
        initializer=[table]))


def expand_to_shape() -> bytes:
    """y = Expand(x, shape): x [3] FP32 broadcast to the INT64 `shape` [2] a request
    gives. All-zero shapes are invalid, so it cannot be warmed up on zeros."""
    return _model(helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])], "expand_to_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "columns"])]))


def large(megabytes: int) -> bytes:
    """y = x + sum(w) with a `megabytes`-sized w: a big artifact that still loads."""
    weights = numpy_helper.from_array(np.zeros(megabytes * 2**20 // 4, dtype=np.float32), "w")
    return _model(helper.make_graph(
        [helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
         helper.make_node("Add", ["x", "s"], ["y"])], "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weights]))


def write_model(root: Path, name: str, version: str, model: bytes,
                config: dict[str, object] | None = None) -> Path:
    path = root / name / version / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def write_examples(root: Path) -> None:
    """The `edgefleet-edge serve` example of docs/models-and-serving.md serves."""
    write_model(root, "types", "1", identity_all_types())
    write_model(root, "mlp", "1", mlp(), {"runtime": {
        "batching": {"maxBatchSize": 32, "maxDelayMicros": 500}}})
    write_model(root, "cnn", "1", cnn(), {"runtime": {
        "batching": {"maxBatchSize": 16, "maxDelayMicros": 2000}}})
    write_model(root, "scaled", "1", scaled(1.0))
    write_model(root, "scaled", "2", scaled(2.0), {"versionWeights": {"1": 90, "2": 10}})


if __name__ == "__main__":
    write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/models"))
