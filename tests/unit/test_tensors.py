"""Tensor decoding and encoding: every datatype round-trips, every malformed input is an
INVALID_ARGUMENT naming the tensor."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgefleet.edge_runtime.errors import ErrorCode, InferenceError
from edgefleet.edge_runtime.tensors import (
    NUMPY_DTYPES,
    TensorSpec,
    from_raw,
    from_values,
    to_raw,
)


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(6, dtype=object)
        array[:] = [b"", b"a", b"\x00\xff", "é".encode(), b"xyz", b"0" * 300]
        return array.reshape(2, 3)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    return (np.arange(6).reshape(2, 3) * 7).astype(NUMPY_DTYPES[datatype])


@pytest.mark.parametrize("datatype", list(NUMPY_DTYPES))
def test_raw_round_trip(datatype: str) -> None:
    array = sample(datatype)
    decoded = from_raw("x", datatype, [2, 3], to_raw(array, datatype))
    assert decoded.shape == (2, 3)
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize("datatype", [d for d in NUMPY_DTYPES if d != "FP16"])
def test_values_build_the_same_tensor(datatype: str) -> None:
    array = sample(datatype)
    values = list(array.reshape(-1)) if datatype == "BYTES" else array.reshape(-1).tolist()
    assert np.array_equal(from_values("x", datatype, [2, 3], values), array)


def invalid(call: object) -> str:
    with pytest.raises(InferenceError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    return caught.value.message


def test_raw_length_must_match_shape_and_dtype() -> None:
    message = invalid(lambda: from_raw("pixels", "FP32", [2, 3], b"\x00" * 20))
    assert "'pixels'" in message and "20 bytes" in message and "24" in message


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\x05\x00\x00\x00abc", "claims 5 bytes"),
    (b"\x01\x00", "truncated length prefix"),
    (struct.pack("<I", 1) + b"a", "1 BYTES elements"),
])
def test_malformed_bytes_prefixes_are_named(raw: bytes, reason: str) -> None:
    assert reason in invalid(lambda: from_raw("text", "BYTES", [2], raw))


@pytest.mark.parametrize(("datatype", "values", "reason"), [
    ("INT8", [1, 300], "do not fit INT8"),
    ("UINT8", [-1, 2], "do not fit UINT8"),
    ("INT32", [1.5, 2.0], "fractional"),
    ("BOOL", [1, 0], "true or false"),
    ("FP32", ["a", "b"], "numbers"),
    ("FP32", [1.0], "1 values given"),
    ("BF16", [1.0, 2.0], "unsupported datatype"),
])
def test_values_that_do_not_fit_are_refused(datatype: str, values: list[object],
                                            reason: str) -> None:
    assert reason in invalid(lambda: from_values("x", datatype, [2], values))


@pytest.mark.parametrize(("datatype", "values", "reason"), [
    ("INT64", [2**63, 2**63], f"{2**63} is outside"),
    ("UINT64", [-1, 1], "-1 is outside"),
    ("UINT8", [[1], [256]], "256 is outside [0, 255]"),
])
def test_out_of_range_integers_are_named_with_the_range(datatype: str, values: list[object],
                                                       reason: str) -> None:
    message = invalid(lambda: from_values("x", datatype, [2], values))
    assert f"do not fit {datatype}" in message and reason in message


@pytest.mark.parametrize("datatype", [d for d in NUMPY_DTYPES if d != "FP16"])
def test_nested_values_build_the_same_tensor_as_flat_ones(datatype: str) -> None:
    array = sample(datatype)
    rows = [list(row) for row in array] if datatype == "BYTES" else array.tolist()
    assert np.array_equal(from_values("x", datatype, [2, 3], rows), array)
    # Only the count must match the shape, not how the values nest.
    assert np.array_equal(from_values("x", datatype, [3, 2], rows), array.reshape(3, 2))


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
@pytest.mark.parametrize("values", [[[1, 2], [3]], [1, [2, 3]], [[[1]], [2]]])
def test_unevenly_nested_values_are_refused(datatype: str, values: list[object]) -> None:
    message = invalid(lambda: from_values("x", datatype, [3], values))
    assert "'x'" in message and "nest lists of equal lengths" in message


def test_values_nested_deeper_than_numpy_allows_are_refused() -> None:
    values: list[object] = [1.0]
    for _ in range(70):
        values = [values]
    assert "at most 64 levels" in invalid(lambda: from_values("x", "FP32", [1], values))


def test_a_single_value_is_a_tensor_of_one_element() -> None:
    assert from_values("x", "FP32", [1, 1], 2.5).tolist() == [[2.5]]
    assert "1 values given" in invalid(lambda: from_values("x", "FP32", [4], "four"))


def test_an_empty_integer_tensor_is_accepted() -> None:
    assert from_values("x", "INT32", [0, 3], []).shape == (0, 3)


def test_bytes_values_keep_trailing_nul_characters() -> None:
    assert from_values("x", "BYTES", [2], ["a\x00", b"b\x00"]).tolist() == [b"a\x00", b"b\x00"]


def test_negative_dimensions_are_refused() -> None:
    assert "negative" in invalid(lambda: from_raw("x", "FP32", [-1, 2], b""))


def test_absurd_shapes_are_refused_even_when_they_hold_no_element() -> None:
    # Found by the fuzz test: numpy cannot even describe this empty tensor.
    shape = [0, 257, 189432980, 189452793]
    assert "too large" in invalid(lambda: from_raw("x", "BOOL", shape, b""))
    assert "too large" in invalid(lambda: from_values("x", "BOOL", shape, []))


def test_spec_accepts_variable_dimensions_only() -> None:
    spec = TensorSpec("x", "FP32", (-1, 3))
    assert spec.accepts_shape((5, 3))
    assert not spec.accepts_shape((5, 4))
    assert not spec.accepts_shape((5, 3, 1))
