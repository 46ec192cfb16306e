"""ONNX's own backend test models, served: the first hundred (by name) that ONNX Runtime
itself runs, with tensors the protocol carries and nothing the runtime refuses on
purpose, all load in one real `edgefleet-edge serve` process and answer their test
inputs over gRPC, through the stock client, as the backend tests expect. Among them
are models that cannot run on zeros (an Expand or a split that reads its sizes from an
input), which warm-up once refused."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from onnx import numpy_helper

from edgefleet.edge_runtime.engine import tensor_specs, warmup_inputs
from edgefleet.edge_runtime.tensors import ONNX_TYPES
from edgefleet.protocol.onnx_refs import MalformedModelError, external_references
from tests.conftest import StartEdge

pytestmark = pytest.mark.integration
BACKEND_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SELECTED = 100
# As onnx.backend.test.runner compares outputs.
RTOL, ATOL = 1e-3, 1e-7


@dataclass(frozen=True)
class BackendCase:
    """A backend test model and its first data set, keyed by tensor name."""

    name: str
    model: Path
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    expected: dict[str, np.ndarray]
    fails_on_zeros: bool


def read_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def check_output(actual: np.ndarray, expected: np.ndarray) -> None:
    if expected.dtype == object:  # ONNX strings; the protocol carries them as UTF-8 bytes
        as_bytes = np.vectorize(lambda s: s if isinstance(s, bytes) else s.encode(),
                                otypes=[object])
        np.testing.assert_array_equal(as_bytes(actual), as_bytes(expected))
        return
    assert actual.dtype == expected.dtype, f"datatype {actual.dtype}, expected {expected.dtype}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def backend_case(model: Path) -> BackendCase | None:
    """The case, when the runtime must serve the model: self-contained (the runtime
    refuses external data on purpose), every tensor of a protocol datatype, and ONNX
    Runtime itself answering the test inputs as expected. None otherwise."""
    try:
        if external_references(model):
            return None
    except MalformedModelError:
        return None
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 4  # models ONNX Runtime cannot run are skipped, not logged
    try:
        session = ort.InferenceSession(str(model), quiet, providers=["CPUExecutionProvider"])
    except Exception:  # an operator version it lacks, a locale the machine lacks
        return None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not all(arg.type in ONNX_TYPES for arg in [*inputs, *outputs]):
        return None  # sequences, maps, optionals, bfloat16 and the like
    data = model.parent / "test_data_set_0"
    feeds = {arg.name: read_tensor(data / f"input_{i}.pb") for i, arg in enumerate(inputs)}
    expected = {arg.name: read_tensor(data / f"output_{i}.pb") for i, arg in enumerate(outputs)}
    run_quietly = ort.RunOptions()
    run_quietly.log_severity_level = 4
    try:
        for arg, actual in zip(outputs, session.run(None, feeds, run_quietly), strict=True):
            check_output(actual, expected[arg.name])
        session.run(None, warmup_inputs(tensor_specs(inputs)), run_quietly)
        fails_on_zeros = False
    except AssertionError:
        return None
    except Exception:  # ONNX Runtime's own types: the zeros run is the only one left
        fails_on_zeros = True
    return BackendCase(model.parent.name, model, feeds,
                       {arg.name: ONNX_TYPES[arg.type] for arg in inputs}, expected,
                       fails_on_zeros)


def select_cases() -> list[BackendCase]:
    """The first SELECTED cases by name, always with every one that fails on zeros."""
    models = sorted(BACKEND_DATA.glob("*/*/model.onnx"), key=lambda path: path.parent.name)
    cases = [case for model in models if (case := backend_case(model)) is not None]
    on_zeros = [case for case in cases if case.fails_on_zeros]
    others = [case for case in cases if not case.fails_on_zeros]
    return sorted([*on_zeros, *others[:SELECTED - len(on_zeros)]], key=lambda c: c.name)


def test_backend_models_onnx_runtime_runs_all_load_and_answer_as_expected(
    start_edge: StartEdge, tmp_path: Path,
) -> None:
    cases = select_cases()
    assert len(cases) == SELECTED, f"only {len(cases)} backend models qualify"
    assert len({case.name for case in cases}) == SELECTED, "two suites share a model name"
    on_zeros = [case.name for case in cases if case.fails_on_zeros]
    print(f"{len(on_zeros)} of {SELECTED} selected models fail warm-up on zeros: "
          f"{', '.join(on_zeros)}")
    assert on_zeros, "no selected model fails on zeros: the fallback goes untested"
    repository = tmp_path / "repository"
    for case in cases:
        (repository / case.name / "1").mkdir(parents=True)
        shutil.copyfile(case.model, repository / case.name / "1" / "model.onnx")

    edge = start_edge(repository)
    stock = triton_grpc.InferenceServerClient(edge.grpc_url)
    failures = []
    for case in cases:
        if not stock.is_model_ready(case.name):
            failures.append(f"{case.name}: not ready")
            continue
        inputs = []
        for name, array in case.inputs.items():
            item = triton_grpc.InferInput(name, list(array.shape), case.datatypes[name])
            item.set_data_from_numpy(array)
            inputs.append(item)
        try:
            result = stock.infer(case.name, inputs)
            for name, expected in case.expected.items():
                check_output(result.as_numpy(name), expected)
        except Exception as error:  # every model's failure is reported, not the first only
            failures.append(f"{case.name}: {error}")
    assert not failures, "\n".join(failures) + f"\nruntime log:\n{edge.log()[-3000:]}"
    log = edge.log()
    for name in on_zeros:
        assert f"model={name} version=1: warm-up on zeros failed" in log, name
