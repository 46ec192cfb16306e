"""REST JSON bodies: tensors decode from flat or nested data and encode as they always
have, NaN and infinities included, for the stock client to read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rapidjson

from edgefleet.edge_runtime.engine import InferResponse, OutputTensor
from edgefleet.edge_runtime.errors import ErrorCode, InferenceError
from edgefleet.edge_runtime.serving.converters import (
    infer_request_from_json,
    infer_response_to_json,
)


def request_body(data: object, datatype: str = "FP32", shape: list[int] | None = None,
                 **extra: object) -> bytes:
    tensor = {"name": "x", "datatype": datatype, "shape": shape or [2, 2], "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def decoded(body: bytes) -> np.ndarray:
    request, _, _ = infer_request_from_json("m", None, body, b"")
    return request.inputs["x"]


def refused(body: bytes) -> str:
    with pytest.raises(InferenceError) as caught:
        decoded(body)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    return caught.value.message


def response_json(array: np.ndarray, datatype: str, request_id: str = "") -> dict[str, object]:
    header, tail = infer_response_to_json(
        InferResponse("m", "1", [OutputTensor("y", datatype, array)], request_id), False, set())
    assert tail == b""
    return rapidjson.loads(header)  # the stock HTTP client's parser


@pytest.mark.parametrize("data", [[1.5, 2, 3, 4], [[1.5, 2], [3, 4]], [[1.5, 2, 3, 4]]])
def test_flat_and_nested_data_decode_to_the_same_tensor(data: object) -> None:
    array = decoded(request_body(data))
    assert array.dtype == np.float32 and array.tolist() == [[1.5, 2.0], [3.0, 4.0]]


def test_nan_and_infinities_as_the_stock_client_writes_them_are_read() -> None:
    body = rapidjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],
                                        "data": [float("nan"), float("inf"), -float("inf")]}]})
    array = decoded(body.encode())
    assert np.isnan(array[0]) and array[1:].tolist() == [float("inf"), -float("inf")]


@pytest.mark.parametrize(("data", "reason"), [
    ([[1, 2], [3]], "nest lists of equal lengths"),
    ([1, 2, 3], "3 values given, shape [2, 2] needs 4"),
    ([[1, 2], [3, 4], [5, 6]], "6 values given"),
    ([1, 2, None, 4], "must be numbers"),
])
def test_data_that_does_not_make_the_tensor_is_refused(data: object, reason: str) -> None:
    message = refused(request_body(data))
    assert "input 'x'" in message and reason in message


def test_json_nested_too_deep_is_a_client_error() -> None:
    assert "not JSON" in refused(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_nan_and_infinities_in_a_response_encode_as_python_json_writes_them(
    datatype: str,
) -> None:
    values = [1.5, float("nan"), float("inf"), -float("inf")]
    array = np.array(values, dtype=np.float16 if datatype == "FP16" else
                     np.float32 if datatype == "FP32" else np.float64)
    header, _ = infer_response_to_json(
        InferResponse("m", "1", [OutputTensor("y", datatype, array)]), False, set())
    assert b'"data":[1.5,NaN,Infinity,-Infinity]' in header.replace(b" ", b"")
    data = rapidjson.loads(header)["outputs"][0]["data"]
    assert data[0] == 1.5 and np.isnan(data[1]) and data[2:] == values[2:]


@pytest.mark.parametrize(("datatype", "dtype"), [("FP16", np.float16), ("FP32", np.float32)])
def test_every_finite_value_of_a_float_output_reads_back_exactly(datatype: str,
                                                                  dtype: type) -> None:
    bits = np.uint16 if dtype is np.float16 else np.uint32
    rng = np.random.default_rng(0)
    array = rng.integers(0, np.iinfo(bits).max, 4096, dtype=np.uint64).astype(bits).view(dtype)
    array = array[np.isfinite(array)].reshape(-1, 1)
    data = response_json(array, datatype)["outputs"][0]["data"]  # type: ignore[index]
    assert np.array_equal(np.array(data, dtype=dtype), array.reshape(-1))


def test_outputs_encode_flat_whatever_their_layout_and_type() -> None:
    transposed = np.arange(6, dtype=np.int64).reshape(2, 3).T  # not C-contiguous
    assert response_json(transposed, "INT64")["outputs"][0] == {  # type: ignore[index]
        "name": "y", "datatype": "INT64", "shape": [3, 2], "data": [0, 3, 1, 4, 2, 5]}
    flags = response_json(np.array([[True, False]]), "BOOL")["outputs"][0]
    assert flags["data"] == [True, False]  # type: ignore[index]
    text = np.array([b"edge", "\u00e9".encode(), b"\xff"], dtype=object)
    assert response_json(text, "BYTES")["outputs"][0]["data"] == [  # type: ignore[index]
        "edge", "\u00e9", "\ufffd"]


def test_a_request_id_read_by_the_lenient_parser_is_written_back() -> None:
    # NaN sends the body to Python's json, which also takes a lone surrogate.
    body = b'{"id": "r\\ud800", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], ' \
        b'"data": [NaN]}]}'
    request, _, _ = infer_request_from_json("m", None, body, b"")
    header, _ = infer_response_to_json(InferResponse(
        "m", "1", [OutputTensor("y", "FP32", np.zeros(1, np.float32))], request.id), False, set())
    assert json.loads(header)["id"] == "r\ud800"
