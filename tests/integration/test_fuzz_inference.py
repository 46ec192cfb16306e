"""Randomized malformed requests (property-based, hypothesis): every answer is a clean
client error, and the runtime still answers a valid request afterwards."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import testmodels
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.protocol.inference import grpc_service_pb2 as pb
from tests.conftest import EdgeProcess, launch_edge, stop_edge
from tests.integration.test_inference import infer

pytestmark = pytest.mark.integration
EXAMPLES_PER_TRANSPORT = 1000
CLEAN_GRPC = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
CLEAN_HTTP = {400, 404, 413}
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
             "BF16", "fp32", ""]
names = st.sampled_from(["x", "in_FP32", "in_BYTES", "in_BOOL", "y", ""]) | st.text(max_size=8)
models = st.sampled_from(["scaled", "types", "nope"])
shapes = st.lists(st.integers(-3, 2**40), max_size=4) | st.lists(st.integers(0, 5), max_size=3)


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(models),
                                   model_version=draw(st.sampled_from(["", "1", "2", "x"])))
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(names), datatype=draw(st.sampled_from(DATATYPES)),
                                    shape=draw(shapes))
        if use_raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            field = draw(st.sampled_from(["fp32_contents", "int_contents", "bytes_contents",
                                          "bool_contents", "int64_contents"]))
            values = {
                "fp32_contents": st.floats(width=32, allow_nan=True),
                "int_contents": st.integers(-(2**31), 2**31 - 1),
                "int64_contents": st.integers(-(2**63), 2**63 - 1),
                "bytes_contents": st.binary(max_size=8),
                "bool_contents": st.booleans(),
            }[field]
            getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=8)))
    if use_raw and draw(st.booleans()):
        request.raw_input_contents.append(b"extra")
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(names))
    return request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@st.composite
def http_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    if draw(st.booleans()):
        body = json.dumps(draw(json_values)).encode()
    else:
        tensor = {"name": draw(names), "datatype": draw(st.sampled_from(DATATYPES)),
                  "shape": draw(shapes), "data": draw(json_values)}
        if draw(st.booleans()):
            tensor["parameters"] = {"binary_data_size": draw(st.integers(-5, 40))}
        body = json.dumps({"inputs": [tensor], "outputs": draw(json_values)}).encode()
    headers = {}
    if draw(st.booleans()):
        body += draw(st.binary(max_size=32))
        headers["Inference-Header-Content-Length"] = str(draw(st.integers(-2, len(body) + 4)))
    return body, headers


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    """One runtime for all the examples of this module."""
    repository = tmp_path_factory.mktemp("repository")
    testmodels.write_model(repository, "scaled", "1", testmodels.scaled(1.0))
    testmodels.write_model(repository, "types", "1", testmodels.identity_all_types())
    started = launch_edge(repository / "edge.log", "serve", "--model-repository",
                          str(repository))
    yield started
    stop_edge(started)


def assert_still_serving(edge: EdgeProcess) -> None:
    result = infer(edge, "grpc", "scaled", {"x": np.full((1, 4), 3, dtype=np.float32)})
    assert result.as_numpy("y").tolist() == [[3.0, 3.0, 3.0, 3.0]]


def test_malformed_grpc_requests_get_clean_errors(edge: EdgeProcess) -> None:
    channel = grpc.insecure_channel(edge.grpc_url)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=pb.ModelInferRequest.SerializeToString,
                               response_deserializer=pb.ModelInferResponse.FromString)

    @settings(max_examples=EXAMPLES_PER_TRANSPORT, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(grpc_requests())
    def check(request: pb.ModelInferRequest) -> None:
        sent.append(request)
        try:
            call(request, timeout=10)
        except grpc.RpcError as error:
            assert error.code() in CLEAN_GRPC, (error.code(), error.details(), request)
            assert error.details()

    sent: list[pb.ModelInferRequest] = []
    check()
    channel.close()
    assert len(sent) >= EXAMPLES_PER_TRANSPORT
    assert_still_serving(edge)


def test_malformed_http_requests_get_clean_errors(edge: EdgeProcess) -> None:
    @settings(max_examples=EXAMPLES_PER_TRANSPORT, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(http_bodies(), st.sampled_from(["scaled", "types", "nope"]))
    def check(request: tuple[bytes, dict[str, str]], model: str) -> None:
        sent.append(request)
        body, headers = request
        http_request = urllib.request.Request(
            f"http://{edge.http_url}/v2/models/{model}/infer", data=body, headers=headers,
            method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=10) as response:
                assert response.status == 200
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
            assert error.code in CLEAN_HTTP, (error.code, answer, body)
            assert answer["error"]

    sent: list[tuple[bytes, dict[str, str]]] = []
    check()
    assert len(sent) >= EXAMPLES_PER_TRANSPORT
    assert_still_serving(edge)
