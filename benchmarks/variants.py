"""Variant benchmark: what each optimization the operator can build does to a model's
size, score and latency, and what the build costs, measured in one run on this machine.

    .venv/bin/python benchmarks/variants.py [--latency-samples 300] [--repeats 3]

For the demo's digit classifier (hack/digits.py, scored by accuracy on its held-out
images) and for a small untrained CNN (two 3x3 convolutions of 8 channels on 28x28,
seeded random weights, scored by agreement: top-1 agreement with its fp32 source on 500
seeded random images), it builds the variants source (a copy), dynamicInt8, staticInt8
(calibrated on the validation inputs), fp16 and graph optimization `all`, each by running
the build worker as the operator does (a child process reading a JSON job), and prints
each one's bytes, size and latency next to the source's, its score and score drop, and
its build time.
Latency is the worker's: the median of single-row runs on one thread; ratios are taken
against the source's latency measured in the same worker run, so they are less noisy
than the milliseconds on a shared machine (the source's own row, a copy timed against
the source, shows how noisy), and each timing is the median of a few builds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.operator import variant_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))
import digits  # noqa: E402

VARIANTS: dict[str, dict[str, object]] = {
    "source": {},
    "dynamicInt8": {"quantization": "dynamicInt8"},
    "staticInt8": {"quantization": "staticInt8"},
    "fp16": {"fp16": True},
    "all": {"graphOptimizationLevel": "all"},
}
CNN_INPUTS = 500
MEMORY_LIMIT = 4 * 2**30  # the operator's default --variant-build-memory-bytes


@dataclass(frozen=True)
class Model:
    name: str
    source: Path
    dataset: Path  # inputs and labels, .npz; also what staticInt8 calibrates on
    score: str  # what its score is, for the header


@dataclass(frozen=True)
class Row:
    model: str
    variant: str
    size: int
    size_ratio: float
    score: float
    drop: float
    latency_ms: float
    latency_ratio: float
    build_s: float
    job_s: float  # the whole worker process: start, build, scoring of both models


def digits_model(root: Path) -> Model:
    built = digits.build(root / "digits")
    version = next(iter(built.versions))  # the first of the demo's versions
    dataset = root / "digits.npz"
    np.savez(dataset, pixels=built.test_pixels, labels=built.test_labels)
    return Model(f"digits {version}", built.versions[version], dataset,
                 f"accuracy on its {len(built.test_labels)} held-out images")


def cnn(channels: int = 8, classes: int = 10, seed: int = 0) -> bytes:
    """Conv 3x3 -> Relu -> Conv 3x3 -> Relu -> global average pool -> Gemm on
    [N, 1, 28, 28], He-scaled seeded weights and no biases. (testmodels.cnn's small
    weights and biases give one class to every input: agreement would say nothing.)"""
    rng = np.random.default_rng(seed)

    def weights(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32), name)

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "c1"], ["a1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a1"], ["r1"]),
         helper.make_node("Conv", ["r1", "c2"], ["a2"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["a2"], ["r2"]),
         helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["logits"])], "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[weights("c1", channels, 1, 3, 3),
                     weights("c2", channels, channels, 3, 3),
                     weights("fc", channels, classes)]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def cnn_images(rows: int, seed: int = 0) -> np.ndarray:
    """Random images of 4x4 blocks of 7x7 pixels, each with an offset of its own, plus
    noise: white noise alone averages out in the pool, and the top-1 hardly varies."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.standard_normal((rows, 1, 4, 4)), np.ones((7, 7)))
    return (rng.standard_normal((rows, 1, 1, 1)) + blocks
            + 0.2 * rng.standard_normal((rows, 1, 28, 28))).astype(np.float32)


def cnn_model(root: Path) -> Model:
    """Untrained: its labels are its own top-1 answers, so accuracy is agreement."""
    source = root / "cnn.onnx"
    source.write_bytes(cnn())
    x = cnn_images(CNN_INPUTS)
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": x})[0].argmax(axis=-1)
    dataset = root / "cnn.npz"
    np.savez(dataset, inputs=x, labels=labels)
    return Model("cnn", source, dataset, (
        f"untrained, so agreement: top-1 agreement with the fp32 source on {CNN_INPUTS} "
        f"seeded random images (it gives them {len(np.unique(labels))} different classes)"))


def build(model: Model, variant: str, output: Path, latency_samples: int
          ) -> tuple[dict[str, object], float]:
    job = {"source": str(model.source), "output": str(output), "optimize": VARIANTS[variant],
           "calibration": str(model.dataset),
           "validation": {"dataset": str(model.dataset), "metric": "accuracy", "k": 5},
           "latencySamples": latency_samples, "memoryLimitBytes": MEMORY_LIMIT}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", variant_worker.__name__],
                          input=json.dumps(job).encode(), capture_output=True, check=True,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})
    took_s = time.perf_counter() - started
    result = json.loads(done.stdout)
    if not result["ok"]:
        raise RuntimeError(f"{model.name} {variant}: {result['reason']}: {result['message']}")
    return result, took_s


def measure(model: Model, root: Path, latency_samples: int, repeats: int) -> list[Row]:
    """Bytes and scores of the first build (every build writes the same), times the
    medians over `repeats` builds."""
    rows = []
    source_size = model.source.stat().st_size
    for variant in VARIANTS:
        jobs = [build(model, variant, root / f"{model.name}-{variant}.onnx", latency_samples)
                for _ in range(repeats)]
        results = [result for result, _ in jobs]
        first = results[0]
        source, built = first["validation"]["source"], first["validation"]["variant"]
        latencies = [(r["validation"]["variant"]["latencyMs"],
                      r["validation"]["source"]["latencyMs"]) for r in results]
        rows.append(Row(model.name, variant, first["bytes"], first["bytes"] / source_size,
                        built["score"], source["score"] - built["score"],
                        statistics.median(ms for ms, _ in latencies),
                        statistics.median(ms / source_ms for ms, source_ms in latencies),
                        statistics.median(r["buildSeconds"] for r in results),
                        statistics.median(took_s for _, took_s in jobs)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-samples", type=int, default=300,
                        help="single-row runs the worker times per model")
    parser.add_argument("--repeats", type=int, default=3,
                        help="builds of each variant, for the median of their timings")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = [digits_model(root), cnn_model(root)]
        rows = [row for model in models
                for row in measure(model, root, args.latency_samples, args.repeats)]

    print(f"\nVariant benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"onnxruntime {ort.__version__}; {args.latency_samples} single-row runs per latency, "
          f"times the median of {args.repeats} builds")
    for model in models:
        print(f"score of {model.name}: {model.score}")
    print("drop: source score - variant score; x: ratio to the source (latency: the source's "
          "in the same worker run); build s: the transformation; job s: the whole worker "
          "process (start, build, scoring both models)")
    print(f"{'model':<13} {'variant':<12} {'bytes':>8} {'size x':>7} {'score':>7} {'drop':>7} "
          f"{'lat ms':>8} {'lat x':>6} {'build s':>8} {'job s':>6}")
    for row in rows:
        print(f"{row.model:<13} {row.variant:<12} {row.size:>8} {row.size_ratio:>7.2f} "
              f"{row.score:>7.4f} {row.drop:>7.4f} {row.latency_ms:>8.4f} "
              f"{row.latency_ratio:>6.2f} {row.build_s:>8.3f} {row.job_s:>6.2f}")


if __name__ == "__main__":
    main()
