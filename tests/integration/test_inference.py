"""The edge runtime as users drive it: a real `edgefleet-edge serve` process on loopback,
real ONNX Runtime sessions, and the stock tritonclient gRPC and HTTP clients."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import testmodels
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from edgefleet.edge_runtime.serving.converters import CONTENTS_FIELD
from edgefleet.edge_runtime.tensors import from_raw
from edgefleet.protocol.inference import grpc_service_pb2 as pb
from tests.conftest import EdgeProcess, StartEdge

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]
DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}
CLIENTS = {"grpc": triton_grpc, "http": triton_http}


def client(edge: EdgeProcess, kind: str) -> Any:
    if kind == "grpc":
        return triton_grpc.InferenceServerClient(edge.grpc_url)
    return triton_http.InferenceServerClient(edge.http_url)


def tensor(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"edge", b"", "fleet \xe9".encode()], [b"a", b"bb", b"ccc"]],
                        dtype=np.object_)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, True, True]])
    return (np.arange(6).reshape(2, 3) * 5 + 1).astype(DTYPES[datatype])


def infer(edge: EdgeProcess, kind: str, model: str, arrays: dict[str, np.ndarray],
          datatypes: dict[str, str] | None = None, version: str = "") -> Any:
    module = CLIENTS[kind]
    inputs = []
    for name, array in arrays.items():
        datatype = (datatypes or {}).get(name) or triton_grpc.np_to_triton_dtype(array.dtype)
        item = module.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        inputs.append(item)
    return client(edge, kind).infer(model, inputs, model_version=version)


@pytest.fixture
def examples(start_edge: StartEdge) -> EdgeProcess:
    return start_edge(REPO_ROOT / "examples" / "models")


@pytest.mark.parametrize("kind", CLIENTS)
def test_every_datatype_round_trips_through_the_stock_client(examples: EdgeProcess,
                                                             kind: str) -> None:
    arrays = {f"in_{datatype}": tensor(datatype) for datatype in DTYPES}
    result = infer(examples, kind, "types", arrays,
                   {f"in_{d}": d for d in DTYPES})
    for datatype in DTYPES:
        output = result.as_numpy(f"out_{datatype}")
        assert np.array_equal(output, tensor(datatype)), datatype
        if datatype != "BYTES":
            assert output.dtype == DTYPES[datatype]


@pytest.mark.parametrize("kind", CLIENTS)
def test_health_and_metadata(examples: EdgeProcess, kind: str) -> None:
    stock = client(examples, kind)
    assert stock.is_server_live() and stock.is_server_ready()
    assert stock.is_model_ready("mlp") and stock.is_model_ready("scaled", "2")
    assert not stock.is_model_ready("scaled", "3")
    metadata = (stock.get_model_metadata("mlp", as_json=True) if kind == "grpc"
                else stock.get_model_metadata("mlp"))
    # JSON from protobuf writes int64 as strings.
    metadata["inputs"][0]["shape"] = [int(d) for d in metadata["inputs"][0]["shape"]]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 64]}
    server = stock.get_server_metadata()
    name = server.name if kind == "grpc" else server["name"]
    assert name == "edgefleet"


def test_pinned_requests_hit_their_version_and_unpinned_follow_the_weights(
    examples: EdgeProcess,
) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    for kind in CLIENTS:
        for version, factor in (("1", 1.0), ("2", 2.0)):
            result = infer(examples, kind, "scaled", {"x": x}, version=version)
            assert result.as_numpy("y")[0, 0] == factor
    answers = [infer(examples, "grpc", "scaled", {"x": x}).as_numpy("y")[0, 0]
               for _ in range(400)]
    share_v2 = answers.count(2.0) / len(answers)
    assert set(answers) == {1.0, 2.0}
    assert 0.04 < share_v2 < 0.18  # weights 90/10; 400 draws keep this 4 sigma wide


def test_typed_contents_are_accepted_for_every_datatype_they_can_carry(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    """Stock clients send raw bytes; others send typed contents (FP16 has no such field)."""
    typed = [d for d in DTYPES if d in CONTENTS_FIELD]
    for datatype in typed:
        testmodels.write_model(tmp_path, f"id_{datatype.lower()}", "1",
                               testmodels.identity(datatype))
    edge = start_edge(tmp_path)
    with grpc.insecure_channel(edge.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        for datatype in typed:
            array = tensor(datatype)
            request = pb.ModelInferRequest(model_name=f"id_{datatype.lower()}")
            item = request.inputs.add(name="x", datatype=datatype, shape=[2, 3])
            values = list(array.reshape(-1)) if datatype == "BYTES" else array.reshape(-1).tolist()
            getattr(item.contents, CONTENTS_FIELD[datatype]).extend(values)
            response = call(request, timeout=10)
            answer = from_raw("y", datatype, response.outputs[0].shape,
                              response.raw_output_contents[0])
            assert np.array_equal(answer, array), datatype


# ---------------------------------------------------------------- bad input


def raw_grpc_infer(edge: EdgeProcess, request: pb.ModelInferRequest) -> grpc.RpcError:
    """Sends a hand-made request (stock clients refuse to build malformed ones)."""
    with grpc.insecure_channel(edge.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
    return caught.value


def http_post(edge: EdgeProcess, path: str, body: bytes,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://{edge.http_url}{path}", data=body,
                                     headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def scaled_input(**changes: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="scaled")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    for key, value in changes.items():
        if key.startswith("input_"):
            setattr(request.inputs[0], key.removeprefix("input_"), value)
        else:
            setattr(request, key, value)
    return request


@pytest.mark.parametrize(("kind", "model", "version", "expected"), [
    ("grpc", "nope", "", "model 'nope' is not loaded"),
    ("http", "nope", "", "model 'nope' is not loaded"),
    ("grpc", "scaled", "9", "has no version '9'"),
    ("http", "scaled", "9", "has no version '9'"),
])
def test_unknown_model_or_version_is_not_found_and_named(
    examples: EdgeProcess, kind: str, model: str, version: str, expected: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(examples, kind, model, {"x": np.ones((1, 4), np.float32)}, version=version)
    assert expected in caught.value.message()
    assert caught.value.status() in ("StatusCode.NOT_FOUND", "404")


@pytest.mark.parametrize(("arrays", "datatypes", "expected"), [
    ({"x": np.ones((1, 4), np.float64)}, None, "expected datatype FP32, got FP64"),
    ({"x": np.ones((1, 5), np.float32)}, None, "expected shape [-1, 4] (-1: any), got [1, 5]"),
    ({"x": np.ones((1, 4), np.float32), "z": np.ones(1, np.float32)}, None, "unexpected ['z']"),
    ({"w": np.ones((1, 4), np.float32)}, None, "missing ['x']"),
])
@pytest.mark.parametrize("kind", CLIENTS)
def test_wrong_inputs_are_invalid_and_say_what_was_expected(
    examples: EdgeProcess, kind: str, arrays: dict[str, np.ndarray],
    datatypes: dict[str, str] | None, expected: str,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(examples, kind, "scaled", arrays, datatypes)
    assert expected in caught.value.message()
    assert caught.value.status() in ("StatusCode.INVALID_ARGUMENT", "400")


def test_raw_contents_of_the_wrong_length_are_invalid(examples: EdgeProcess) -> None:
    request = scaled_input()
    request.raw_input_contents[0] = b"\x00" * 15
    error = raw_grpc_infer(examples, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in error.details() and "15 bytes" in error.details()


def test_bytes_tensor_with_a_broken_length_prefix_is_invalid(examples: EdgeProcess) -> None:
    request = pb.ModelInferRequest(model_name="types")
    for datatype in DTYPES:
        request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[1, 3])
        raw = tensor(datatype)[:1]
        if datatype == "BYTES":
            request.raw_input_contents.append(b"\x09\x00\x00\x00abc")
        else:
            request.raw_input_contents.append(np.ascontiguousarray(raw).tobytes())
    error = raw_grpc_infer(examples, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'in_BYTES'" in error.details() and "claims 9 bytes" in error.details()


@pytest.mark.parametrize(("body", "expected"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                             "data": "four"}]}).encode(), "1 values given"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}).encode(),
     "missing field 'shape'"),
    (json.dumps({"inputs": {"x": [1, 2, 3, 4]}}).encode(), "field 'inputs' must be a list"),
])
def test_json_that_is_not_a_tensor_is_a_400_naming_the_problem(
    examples: EdgeProcess, body: bytes, expected: str
) -> None:
    status, answer = http_post(examples, "/v2/models/scaled/infer", body)
    assert status == 400
    assert expected in answer["error"]


def test_requests_above_the_size_limit_are_refused_unread(start_edge: StartEdge,
                                                         tmp_path: Path) -> None:
    testmodels.write_model(tmp_path, "scaled", "1", testmodels.scaled(1.0, width=4096))
    edge = start_edge(tmp_path, "--max-request-bytes", "65536")
    big = np.ones((8, 4096), dtype=np.float32)  # 128 KiB of data
    request = pb.ModelInferRequest(model_name="scaled")
    request.inputs.add(name="x", datatype="FP32", shape=list(big.shape))
    request.raw_input_contents.append(big.tobytes())
    assert raw_grpc_infer(edge, request).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    body = json.dumps({"inputs": [{"name": "x", "shape": [8, 4096], "datatype": "FP32",
                                   "data": big.reshape(-1).tolist()}]}).encode()
    status, _ = http_post(edge, "/v2/models/scaled/infer", body)
    assert status == 413
    small = np.ones((1, 4096), dtype=np.float32)
    assert infer(edge, "grpc", "scaled", {"x": small}).as_numpy("y").shape == (1, 4096)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_model_failing_inside_onnx_runtime_is_internal_and_serving_goes_on(
    start_edge: StartEdge, tmp_path: Path, kind: str
) -> None:
    testmodels.write_model(tmp_path, "faulty", "1", testmodels.faulty())
    edge = start_edge(tmp_path)
    with pytest.raises(InferenceServerException) as caught:
        infer(edge, kind, "faulty", {"index": np.array([1, 40], dtype=np.int64)})
    assert caught.value.status() in ("StatusCode.INTERNAL", "500")
    assert "model 'faulty' version '1' failed" in caught.value.message()
    rows = infer(edge, kind, "faulty", {"index": np.array([3], dtype=np.int64)})
    assert rows.as_numpy("rows").tolist() == [[6.0, 7.0]]
    assert 'edgefleet_inference_requests_total{model="faulty",outcome="internal",version="1"}' \
        in edge.metrics()


def test_metrics_count_requests_and_name_loaded_versions(examples: EdgeProcess) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    for _ in range(3):
        infer(examples, "grpc", "scaled", {"x": x}, version="2")
    with pytest.raises(InferenceServerException):
        infer(examples, "grpc", "unknown-model", {"x": x})
    text = examples.metrics()
    assert 'edgefleet_inference_requests_total{model="scaled",outcome="success",version="2"}' \
        ' 3.0' in text
    assert 'edgefleet_inference_requests_total{model="",outcome="not_found",version=""} 1.0' \
        in text
    assert 'edgefleet_inference_compute_duration_seconds_count{model="scaled",version="2"}' \
        in text
    assert 'edgefleet_model_loaded{digest="sha256:' in text
    assert "edgefleet_cloud_connected 0.0" in text
    assert "process_resident_memory_bytes" in text
