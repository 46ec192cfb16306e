"""Tensor datatypes of the Open Inference Protocol, their numpy and ONNX counterparts,
and the raw byte encoding (little-endian, row-major; BYTES elements length-prefixed).

Pure functions: every malformed input raises InferenceError naming the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgefleet.edge_runtime.errors import InferenceError

# Protocol datatype -> numpy dtype (little-endian). BYTES tensors are numpy object
# arrays of `bytes`.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("object"),
}

# ONNX Runtime's type strings (NodeArg.type) -> protocol datatype.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16",
    "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: -1 marks a dimension of variable size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True))


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


# No tensor a request can carry comes near this; numpy refuses shapes beyond it even
# when they hold no element (a zero dimension).
MAX_SHAPE_PRODUCT = 2**40


def check_shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    if any(dim < 0 for dim in shape):
        raise InferenceError.invalid(f"input {name!r}: shape {list(shape)} has a negative "
                                     "dimension")
    if math.prod(dim for dim in shape if dim) > MAX_SHAPE_PRODUCT:
        raise InferenceError.invalid(f"input {name!r}: shape {list(shape)} is too large")
    return tuple(int(dim) for dim in shape)


def numpy_dtype(name: str, datatype: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        raise InferenceError.invalid(
            f"input {name!r}: unsupported datatype {datatype!r}; expected one of "
            f"{', '.join(NUMPY_DTYPES)}") from None


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """Decodes one tensor's raw bytes, checking that their length matches the shape."""
    shape = check_shape(name, shape)
    dtype = numpy_dtype(name, datatype)
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes(name, raw, count).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InferenceError.invalid(
            f"input {name!r}: raw contents hold {len(raw)} bytes, but shape {list(shape)} "
            f"of {datatype} needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes(array)
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """Splits length-prefixed elements; the prefixes must account for every byte."""
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InferenceError.invalid(
                f"input {name!r}: BYTES element {len(items)} has a truncated length prefix")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InferenceError.invalid(
                f"input {name!r}: BYTES element {len(items)} claims {length} bytes, "
                f"only {len(raw) - offset} remain")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise InferenceError.invalid(
            f"input {name!r}: raw contents hold {len(items)} BYTES elements, the shape needs "
            f"{count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def from_values(name: str, datatype: str, shape: Sequence[int], values: object) -> np.ndarray:
    """Builds a tensor from values: a flat list (typed gRPC contents), a list nested in
    row-major order or a single value (JSON data). Only the number of values must match
    the shape, not how they nest. Numbers become numpy in one pass in C, with no Python
    loop over the elements."""
    shape = check_shape(name, shape)
    dtype = numpy_dtype(name, datatype)
    count = element_count(shape)
    if isinstance(values, list) and values and not isinstance(values[0], list) and (
            len(values) > count):
        # Flat, as stock clients send it: too many values are refused before any array
        # of their size exists.
        raise InferenceError.invalid(
            f"input {name!r}: {len(values)} values given, shape {list(shape)} needs {count}")
    try:
        # Objects for BYTES: numpy's string dtypes would drop trailing NUL characters.
        # Object arrays take unevenly nested lists as elements where others refuse them.
        probe = np.asarray(values, dtype=object if datatype == "BYTES" else None)
        uneven = probe.dtype == object and any(isinstance(v, list) for v in probe.flat)
    except ValueError:  # lists of unequal lengths, or nested deeper than numpy allows
        uneven = True
    if uneven:
        raise InferenceError.invalid(f"input {name!r}: data must be flat or nest lists of "
                                     "equal lengths (at most 64 levels deep)")
    if probe.size != count:
        raise InferenceError.invalid(
            f"input {name!r}: {probe.size} values given, shape {list(shape)} needs {count}")
    if datatype == "BYTES":
        return _bytes_from_values(name, probe.reshape(-1)).reshape(shape)
    try:
        if datatype == "BOOL":
            if probe.size and probe.dtype != np.bool_:
                raise TypeError(f"BOOL values must be true or false, not {probe.dtype}")
            return probe.astype(np.bool_).reshape(shape)
        if probe.size and probe.dtype.kind not in "biuf":
            raise TypeError(f"values must be numbers, not {probe.dtype}")
        if dtype.kind in "iu" and probe.size:
            if probe.dtype.kind == "f":
                raise TypeError("fractional values given for an integer tensor")
            _check_range(probe, dtype)
        array = probe.astype(dtype, copy=False)
    except (TypeError, OverflowError) as error:
        raise InferenceError.invalid(f"input {name!r}: values do not fit {datatype}: "
                                     f"{error}") from None
    return array.reshape(shape)


def _check_range(probe: np.ndarray, dtype: np.dtype) -> None:
    """astype wraps integers silently: whatever does not fit the tensor's type is refused
    first (booleans always fit)."""
    if probe.dtype.kind not in "iu":
        return
    info = np.iinfo(dtype)
    low, high = int(probe.min()), int(probe.max())
    if low < info.min or high > info.max:
        outside = low if low < info.min else high
        raise OverflowError(f"{outside} is outside [{info.min}, {info.max}]")


def _bytes_from_values(name: str, values: np.ndarray) -> np.ndarray:
    """Each value as bytes: bytes as given, anything else as the UTF-8 of its text."""
    array = np.empty(len(values), dtype=object)
    try:
        array[:] = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    except ValueError as error:  # text with a lone surrogate
        raise InferenceError.invalid(f"input {name!r}: {error}") from None
    return array
