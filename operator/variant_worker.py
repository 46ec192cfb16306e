"""The variant build worker: makes one optimized variant of a verified ONNX model and
scores it against its source, in a process of its own.

    python -m edgefleet.operator.variant_worker < job.json > result.json

The operator runs it with a timeout, because models and datasets come from tenants
and ONNX Runtime's tools are not hardened against hostile files; it is the only part
of the operator that imports onnx, onnxruntime and numpy. This module owns the job and
result JSON contract, the order of the transformations (quantization or fp16, then
offline graph optimization), the .npz dataset format and the metrics.

Job: {"source", "output", "optimize": {"quantization", "fp16", "graphOptimizationLevel"},
"calibration", "validation": {"dataset", "metric", "k"}, "latencySamples",
"memoryLimitBytes"}, paths absolute. Result: {"ok": true, "bytes", "sha256",
"buildSeconds", "validation"} or {"ok": false, "reason", "message"}; the exit status is
0 whenever a result was written.

Builds are deterministic: the same job on the same files writes the same bytes, since
other operator processes rebuild a variant and compare its digest with the first build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from edgefleet.protocol.onnx_refs import MalformedModelError, external_references, summarize

Reason = Literal["InvalidJob", "InvalidDataset", "BuildFailed", "ValidationFailed"]
Metric = Literal["accuracy", "topK", "meanSquaredError"]

MAX_ROWS = 100_000
CALIBRATION_ROWS = 1000
DYNAMIC_BATCH = 256
WARM_UP_RUNS = 3
MESSAGE_CHARS = 1000
LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
# ONNX Runtime's names for the element types a dataset may feed (numbers only).
NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32), "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16), "tensor(bool)": np.dtype(np.bool_),
    **{f"tensor({name})": np.dtype(name) for name in (
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")}}


class WorkerError(Exception):
    """A job that ends in an {"ok": false} result."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = " ".join(message.split())[:MESSAGE_CHARS]  # one line for a person

    def result(self) -> dict[str, object]:
        return {"ok": False, "reason": self.reason, "message": self.message}


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"expected an absolute path, got {str(path)!r}")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class _JobPart(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, strict=True)


class Optimize(_JobPart):
    quantization: Literal["dynamicInt8", "staticInt8"] | None = None
    fp16: bool = False
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] | None = None


class ValidationJob(_JobPart):
    dataset: AbsolutePath
    metric: Metric = "accuracy"
    k: int = Field(default=5, ge=1)


class Job(_JobPart):
    source: AbsolutePath
    output: AbsolutePath
    optimize: Optimize = Optimize()
    calibration: AbsolutePath | None = None
    validation: ValidationJob | None = None
    latency_samples: int = Field(default=100, ge=1, le=MAX_ROWS)
    memory_limit_bytes: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _buildable(self) -> Job:
        # The resource schema refuses both already; a job that has them anyway is a bug.
        if self.optimize.quantization and self.optimize.fp16:
            raise ValueError("quantization and fp16 do not go together")
        if self.optimize.quantization == "staticInt8" and self.calibration is None:
            raise ValueError("staticInt8 needs a calibration dataset, got none")
        return self


def parse_job(text: str | bytes) -> Job:
    try:
        return Job.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        where = f"job field {field!r}" if field else "job"
        # Quote the value of a field only: the job's own checks (value_error) quote theirs,
        # and a whole job is too long for the message.
        got = ("" if not first["loc"] or first["type"] in ("missing", "value_error")
               else f" (got {str(first['input'])[:100]!r})")
        message = first["msg"].removeprefix("Value error, ")
        raise WorkerError("InvalidJob", f"{where}: {message}{got}") from error


def limit_memory(limit: int | None) -> None:
    """Caps what a hostile model or dataset can make this process allocate.

    RLIMIT_DATA, not RLIMIT_AS: RLIMIT_AS counts address space reserved and never used,
    and ONNX Runtime reserves a lot of it (glibc keeps up to 8 malloc arenas of 64 MiB
    per core, plus 8 MiB stacks, for its thread pools, which quantize_static's
    calibration session sizes to the host's cores). With 64 threads and 512 arenas (a
    64-core host's defaults) session creation went past 4 GiB of address space with
    under 100 MB resident, and under RLIMIT_AS it then hung instead of failing.
    RLIMIT_DATA (Linux >= 4.7) counts private writable memory, the heap and anonymous
    mappings that tensors and decompressed arrays live in: numpy and ONNX Runtime both
    fail cleanly at it."""
    if limit is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)  # only root may raise a hard limit
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def session(path: Path, level: str | None = None, optimized: Path | None = None
            ) -> ort.InferenceSession:
    """One thread, for the latency figures' sake and so that a build takes one core of
    the operator's node; CPU only, as every device has it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    if level is not None:
        options.graph_optimization_level = LEVELS[level]
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    # Offline, the NCHWc layout ('all') is left out: its block size follows the host's
    # vector width (8 with AVX2, 16 with AVX-512), so the variant would differ from one
    # operator host to the next, and a device with other NCHWc kernels, or none, might
    # not run it. The device's ONNX Runtime applies it as it loads the model, if it can.
    disabled = ["NchwcTransformer"] if optimized is not None else []
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]  # by model input name, cast to its element type
    labels: np.ndarray | None
    rows: int

    def head(self, rows: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:rows]
        return Dataset({name: array[:rows] for name, array in self.inputs.items()}, labels,
                       min(rows, self.rows))


def _dims(dims: Sequence[object]) -> str:
    shown = [str(d) if isinstance(d, int | str) else "N" if i == 0 else "?"
             for i, d in enumerate(dims)]
    return f"[{', '.join(shown)}]"


def fixed_batch(inputs: Sequence[ort.NodeArg]) -> int | None:
    """The first input dimension the model fixes, if any: it is fed that many rows at a
    time; otherwise (a symbolic or unknown first dimension) up to DYNAMIC_BATCH."""
    for arg in inputs:
        if arg.shape and isinstance(arg.shape[0], int) and arg.shape[0] > 0:
            return int(arg.shape[0])
    return None


def _checked(role: str, key: str, array: np.ndarray, arg: ort.NodeArg) -> np.ndarray:
    dtype = NUMPY_TYPES.get(arg.type)
    if dtype is None:
        raise WorkerError("InvalidDataset", f"{role}: the model's input '{arg.name}' takes "
                          f"{arg.type}, datasets feed numeric tensors only")
    if array.dtype.kind not in "biuf":
        raise WorkerError("InvalidDataset", f"{role}: array '{key}' holds {array.dtype}, "
                          f"the model's input '{arg.name}' takes {arg.type}")
    if not _fits(arg.shape, array.shape):
        raise WorkerError("InvalidDataset", f"{role}: array '{key}' has shape {array.shape}, "
                          f"the model's input '{arg.name}' takes {_dims(arg.shape)}")
    return array.astype(dtype, copy=False)


def _fits(dims: Sequence[object], shape: tuple[int, ...]) -> bool:
    """Whether rows of `shape` feed an input of `dims`: symbolic and unknown dimensions
    take anything, and a fixed first one a multiple of its size (fed that many rows at a
    time)."""
    if not shape:
        return False
    if not dims:  # ONNX Runtime's [] is an unknown rank (or a scalar, which it refuses)
        return True
    first, *rest = dims
    return (len(dims) == len(shape)
            and all(not isinstance(d, int) or d == n
                    for d, n in zip(rest, shape[1:], strict=True))
            and (not isinstance(first, int) or first <= 0 or shape[0] % first == 0))


def load_dataset(path: Path, inputs: Sequence[ort.NodeArg], role: str,
                 labels: bool) -> Dataset:
    """The .npz at `path` as the model's inputs (and labels): one array per input named
    after it, or `inputs` for a one-input model; all with the same number of rows."""
    keys = {arg.name: arg.name for arg in inputs}
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = set(npz.files)
            if len(inputs) == 1 and inputs[0].name not in files:
                keys[inputs[0].name] = "inputs"
            wanted = [*keys.values(), *(["labels"] if labels else [])]
            missing = [key for key in wanted if key not in files]
            if missing:
                raise WorkerError("InvalidDataset", (
                    f"{role}: no array {missing[0]!r} (it holds {sorted(files)}); it needs one "
                    f"array per model input ({', '.join(repr(a.name) for a in inputs)}), or "
                    f"'inputs' for a one-input model{', and labels' if labels else ''}"))
            arrays = {key: npz[key] for key in wanted}
    except WorkerError:
        raise
    except Exception as error:  # numpy, zipfile and zlib raise many types for a bad file
        raise WorkerError("InvalidDataset", f"{role}: cannot read {path.name} as an .npz "
                          f"file of numeric arrays: {type(error).__name__}: {error}") from error
    row_counts = {key: array.shape[0] if array.ndim else 0 for key, array in arrays.items()}
    rows = row_counts[wanted[0]]
    for key, count in row_counts.items():
        if count != rows or not 0 < count <= MAX_ROWS:
            raise WorkerError("InvalidDataset", (
                f"{role}: array {key!r} has {count} rows, expected the same number as "
                f"{wanted[0]!r} ({rows}), between 1 and {MAX_ROWS}"))
    if labels and arrays["labels"].dtype.kind not in "biuf":
        raise WorkerError("InvalidDataset", f"{role}: array 'labels' holds "
                          f"{arrays['labels'].dtype}, expected numbers")
    return Dataset({arg.name: _checked(role, keys[arg.name], arrays[keys[arg.name]], arg)
                    for arg in inputs}, arrays["labels"] if labels else None, rows)


def check_labels(dataset: Dataset, metric: Metric) -> None:
    """What can be told of the labels before any model runs (their shape against the
    output's waits for the source's predictions)."""
    labels = dataset.labels
    assert labels is not None  # load_dataset(labels=True) made sure
    if metric != "meanSquaredError" and (labels.dtype.kind not in "iu" or labels.ndim != 1):
        raise WorkerError("InvalidDataset", (
            f"validation dataset: {metric} reads class ids from 'labels', expected integers "
            f"of shape ({dataset.rows},), got {labels.dtype} of shape {labels.shape}"))


def batches(dataset: Dataset, size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of `size` rows, in file order."""
    for start in range(0, dataset.rows, size):
        yield {name: array[start:start + size] for name, array in dataset.inputs.items()}


class _Calibration(CalibrationDataReader):
    """The calibration rows in file order, so that MinMax ranges (and the variant's
    bytes) depend on nothing but the file."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def optimize(source: Path, output: Path, spec: Optimize, calibration: Dataset | None,
             work: Path, batch: int) -> None:
    """Writes the variant of `source` that `spec` asks for to `output`, using `work`
    (an empty private directory) for the steps in between."""
    # Quantization writes '<name>-inferred.onnx' beside its input: beside a private copy,
    # never in the operator's cache, where concurrent builds of one source would collide.
    current = work / "source.onnx"
    shutil.copyfile(source, current)
    if spec.quantization == "dynamicInt8":
        quantize_dynamic(current, work / "quantized.onnx", weight_type=QuantType.QInt8)
        current = work / "quantized.onnx"
    elif spec.quantization == "staticInt8":
        assert calibration is not None  # Job made sure
        quantize_static(current, work / "quantized.onnx",
                        _Calibration(batches(calibration.head(CALIBRATION_ROWS), batch)),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        current = work / "quantized.onnx"
    if spec.fp16:
        # keep_io_types: clients keep sending FP32 to a device that gets this variant.
        onnx.save(convert_float_to_float16(onnx.load(current), keep_io_types=True),
                  work / "fp16.onnx")
        current = work / "fp16.onnx"
    if spec.graph_optimization_level is not None:
        session(current, spec.graph_optimization_level, work / "optimized.onnx")
        current = work / "optimized.onnx"
    shutil.copyfile(current, output)


def check_variant(output: Path, source: ort.InferenceSession) -> ort.InferenceSession:
    """The variant as devices will load it, refused unless it is one self-contained file
    with the source's inputs and outputs (names and element types)."""
    try:
        references = external_references(output)
    except MalformedModelError as error:
        raise WorkerError("BuildFailed", f"the variant is not an ONNX model: {error}") from error
    if references:
        raise WorkerError("BuildFailed", "the variant keeps data outside its file: "
                          + summarize(references))
    try:
        variant = session(output)
    except Exception as error:  # ONNX Runtime's errors have no common base of their own
        raise WorkerError("BuildFailed", f"the variant does not load in ONNX Runtime: "
                          f"{error}") from error
    for kind, expected, actual in (("input", source.get_inputs(), variant.get_inputs()),
                                   ("output", source.get_outputs(), variant.get_outputs())):
        wanted = [(arg.name, arg.type) for arg in expected]
        got = [(arg.name, arg.type) for arg in actual]
        if wanted != got:
            raise WorkerError("BuildFailed", f"the variant's {kind}s are {got}, expected the "
                              f"source's {wanted}")
    return variant


def predict(model: ort.InferenceSession, dataset: Dataset, batch: int, which: str
            ) -> np.ndarray:
    """The model's first output on every row of the dataset."""
    outputs = []
    for start, feed in zip(range(0, dataset.rows, batch), batches(dataset, batch),
                           strict=True):
        try:
            outputs.append(np.asarray(model.run(None, feed)[0]))
        except Exception as error:  # ONNX Runtime's errors have no common base of their own
            raise WorkerError("ValidationFailed", (
                f"the {which} model failed on validation rows {start} to "
                f"{min(start + batch, dataset.rows) - 1}: {error}")) from error
    return np.concatenate(outputs)


def score(metric: Metric, output: np.ndarray, labels: np.ndarray, k: int, name: str) -> float:
    """The metric of the first output `name` against the labels: accuracy and topK as a
    fraction of rows right, meanSquaredError as it says."""
    described = f"the first output '{name}' ({output.dtype}, shape {output.shape})"
    if metric == "meanSquaredError":
        if labels.shape != output.shape:
            raise WorkerError("InvalidDataset", f"validation dataset: 'labels' has shape "
                              f"{labels.shape}, expected that of {described}")
        return float(np.mean((output.astype(np.float64) - labels.astype(np.float64)) ** 2))
    if metric == "accuracy" and output.dtype.kind in "iu" and output.shape == labels.shape:
        predicted = output  # a classifier's label output, as skl2onnx writes first
    elif output.dtype.kind == "f" and output.ndim >= 2 and output.shape[:-1] == labels.shape:
        classes = output.shape[-1]
        if metric == "accuracy":
            predicted = output.argmax(axis=-1)
        else:
            if labels.min() < 0 or labels.max() >= classes:
                raise WorkerError("InvalidDataset", (
                    f"validation dataset: 'labels' holds class ids from {labels.min()} to "
                    f"{labels.max()}, {described} scores classes 0 to {classes - 1}"))
            # Right when fewer than k classes score above the label's: ties count for it.
            label_scores = np.take_along_axis(output, labels[..., None], axis=-1)
            return float(np.mean((output > label_scores).sum(axis=-1) < min(k, classes)))
    else:
        raise WorkerError("ValidationFailed", (
            f"{metric} needs class scores ([N, classes] floats) or, for accuracy, class ids "
            f"([N] integers) first; the model has {described} for {labels.shape[0]} labels"))
    return float(np.mean(predicted == labels))


def latency_ms(model: ort.InferenceSession, dataset: Dataset, rows: int, samples: int) -> float:
    """Median wall time of one `rows`-row run (one row, unless the model fixes its batch)
    over the first `samples` of them, after warm-up runs."""
    feeds = list(batches(dataset.head(rows * samples), rows))
    for _ in range(WARM_UP_RUNS):
        model.run(None, feeds[0])
    durations = []
    for feed in feeds:
        started = time.perf_counter_ns()
        model.run(None, feed)
        durations.append(time.perf_counter_ns() - started)
    return statistics.median(durations) / 1e6


def evaluate(source: ort.InferenceSession, variant: ort.InferenceSession, dataset: Dataset,
             job: Job) -> dict[str, object]:
    """The validation report: both models' scores and single-row latencies."""
    validation = job.validation
    assert validation is not None and dataset.labels is not None
    fixed = fixed_batch(source.get_inputs())
    name = source.get_outputs()[0].name
    report: dict[str, object] = {"metric": validation.metric, "samples": dataset.rows}
    for which, model in (("source", source), ("variant", variant)):
        output = predict(model, dataset, fixed or DYNAMIC_BATCH, which)
        value = score(validation.metric, output, dataset.labels, validation.k, name)
        if not np.isfinite(value):
            raise WorkerError("ValidationFailed", f"the {which} model's {validation.metric} is "
                              f"{value}: its first output '{name}' holds non-finite values")
        report[which] = {"score": value, "latencyMs": latency_ms(
            model, dataset, fixed or 1, job.latency_samples)}
    return report


def run(job: Job) -> dict[str, object]:
    """The job's result, or a WorkerError saying why there is none."""
    limit_memory(job.memory_limit_bytes)
    try:
        source = session(job.source)
    except Exception as error:  # ONNX Runtime's errors have no common base of their own
        raise WorkerError("BuildFailed", f"the source model does not load in ONNX Runtime: "
                          f"{error}") from error
    inputs = source.get_inputs()
    calibration = validation = None
    if job.optimize.quantization == "staticInt8":
        assert job.calibration is not None  # Job made sure
        calibration = load_dataset(job.calibration, inputs, "calibration dataset", labels=False)
    if job.validation is not None:
        validation = load_dataset(job.validation.dataset, inputs, "validation dataset",
                                  labels=True)
        check_labels(validation, job.validation.metric)

    started = time.perf_counter()
    # Beside the output: on the filesystem the caller chose and cleans, not in a /tmp
    # that may be small or read-only; ONNX Runtime's own temporary files go there too.
    with tempfile.TemporaryDirectory(dir=job.output.parent, prefix=".variant-") as work:
        tempfile.tempdir = work
        try:
            optimize(job.source, job.output, job.optimize, calibration, Path(work),
                     fixed_batch(inputs) or DYNAMIC_BATCH)
        except Exception as error:  # quantization and ONNX Runtime raise anything
            raise WorkerError("BuildFailed", f"{type(error).__name__}: {error}") from error
        finally:
            tempfile.tempdir = None
    build_seconds = time.perf_counter() - started
    variant = check_variant(job.output, source)
    data = job.output.read_bytes()
    return {"ok": True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "buildSeconds": build_seconds,
            "validation": None if validation is None else evaluate(source, variant,
                                                                   validation, job)}


def main() -> int:
    # The result is the only thing on stdout: whatever else Python or native code writes
    # there (ONNX Runtime, protobuf, the quantization tools) lands on stderr.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    ort.set_default_logger_severity(3)  # errors only; they reach the result anyway
    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
    warnings.simplefilter("ignore")
    try:
        result = run(parse_job(sys.stdin.buffer.read()))
    except WorkerError as error:
        result = error.result()
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
