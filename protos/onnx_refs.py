"""Path references inside an ONNX model file, found without loading the model.

An ONNX tensor may keep its bytes in another file (`data_location: EXTERNAL` with a
`location` among its `external_data` entries). ONNX Runtime resolves that location
against the model's directory, or the process's working directory when the model is
loaded from bytes, so a model can make a device read any file its runtime can read and
hand it back through inference (`location: etc/hostname`); ONNX Runtime even accepts a
special location naming a memory address. The operator (which has neither onnx nor
onnxruntime) and the edge store both refuse every model that holds such a reference.

The file is walked as protobuf wire format, message by message, following only the
fields that can lead to a tensor (graphs, nodes, attributes, subgraphs, sparse tensors,
training graphs, model-local functions) and seeking past every other length-delimited
field (raw_data, float_data, doc strings...), so memory stays bounded however large the
model is. Field numbers are those of onnx/onnx.proto (onnx 1.17 and later).

The walk is deliberately more suspicious than ONNX Runtime: a tensor counts as a
reference when it says EXTERNAL *or* carries a `location`, a singular message that
occurs twice is searched in both occurrences (protobuf would merge them), and messages
nested too deeply to search count as a reference. It is never stricter than protobuf's
own parser (unknown fields, groups included, are skipped as protobuf skips them), so a
file it calls malformed is one that no ONNX parser reads any path from either (the one
check beyond protobuf's, a model without a graph, ONNX Runtime makes too).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import NoReturn

# Deeper than protobuf's own default recursion limit (100) is not a model any runtime
# would load; bounding it also bounds this walker's stack.
MAX_DEPTH = 100
# Names and locations are shown to people; longer ones are cut, never read whole.
_SHOWN_CHARS = 200
_WINDOW = 64 * 1024

_VARINT, _FIXED64, _LEN, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_DATA_LOCATION_EXTERNAL = 1


class MalformedModelError(ValueError):
    """The file is not a parseable ONNX model (protobuf ModelProto with a graph)."""


class _TooDeep(Exception):
    """Messages nested deeper than MAX_DEPTH: what lies below was not searched."""


@dataclass(frozen=True)
class _Child:
    """A field holding a message that may lead to a tensor."""

    label: str
    message: str
    repeated: bool = True


# For each message, the fields that can lead to a tensor; every other field is skipped.
_CHILDREN: dict[str, dict[int, _Child]] = {
    "ModelProto": {
        7: _Child("graph", "GraphProto", repeated=False),
        20: _Child("training_info", "TrainingInfoProto"),
        25: _Child("functions", "FunctionProto"),
    },
    "TrainingInfoProto": {
        1: _Child("initialization", "GraphProto", repeated=False),
        2: _Child("algorithm", "GraphProto", repeated=False),
    },
    "GraphProto": {
        1: _Child("node", "NodeProto"),
        5: _Child("initializer", "TensorProto"),
        15: _Child("sparse_initializer", "SparseTensorProto"),
    },
    "NodeProto": {5: _Child("attribute", "AttributeProto")},
    "AttributeProto": {
        5: _Child("t", "TensorProto", repeated=False),
        6: _Child("g", "GraphProto", repeated=False),
        10: _Child("tensors", "TensorProto"),
        11: _Child("graphs", "GraphProto"),
        22: _Child("sparse_tensor", "SparseTensorProto", repeated=False),
        23: _Child("sparse_tensors", "SparseTensorProto"),
    },
    "SparseTensorProto": {
        1: _Child("values", "TensorProto", repeated=False),
        2: _Child("indices", "TensorProto", repeated=False),
    },
    "FunctionProto": {
        7: _Child("node", "NodeProto"),
        11: _Child("attribute_proto", "AttributeProto"),
    },
    "TensorProto": {},
}
# The string field that names a message, shown in descriptions.
_NAME_FIELD = {
    "GraphProto": 2,
    "NodeProto": 3,
    "AttributeProto": 1,
    "FunctionProto": 1,
    "TensorProto": 8,
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto {key = 1; value = 2}
_TENSOR_DATA_LOCATION = 14
_MODEL_GRAPH = 7


@dataclass
class _Walked:
    """What one message holds: its name, the fields it had, its references."""

    name: str | None = None
    fields: set[int] = field(default_factory=set)
    # Each reference as (path of message labels below this one, what it refers to).
    references: list[tuple[list[str], str]] = field(default_factory=list)


def external_references(path: str | os.PathLike[str]) -> list[str]:
    """Every path reference in the ONNX model at `path`, described for people, e.g.
    "graph 'main' > initializer[0] 'W': external data at 'etc/hostname'"; empty for
    a self-contained model, and one entry for a model nested too deeply to search.
    Raises MalformedModelError for a file that is not ONNX: it is so to every protobuf
    parser too (the walk is never stricter than protobuf's own)."""
    with open(path, "rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        try:
            model = _Walker(file).walk("ModelProto", size, depth=0)
        except _TooDeep:
            # Protobuf parsers with a higher recursion limit would read what lies below,
            # so it counts as a reference: such a model is refused, never passed on.
            return [f"messages nested deeper than {MAX_DEPTH}, not searched for references"]
    if _MODEL_GRAPH not in model.fields:
        raise MalformedModelError("not an ONNX model: it has no graph")
    return [" > ".join(where) + ": " + what for where, what in model.references]


def summarize(references: list[str], shown: int = 3) -> str:
    """The first `shown` references, and how many more, for a refusal's message."""
    more = len(references) - shown
    return "; ".join(references[:shown]) + (f"; and {more} more" if more > 0 else "")


class _Walker:
    """Reads protobuf wire format from a file, keeping its own position."""

    def __init__(self, file: io.FileIO) -> None:
        self._file = file
        self._pos = 0
        # A window of the file at _window_start: most fields are a few bytes, and a
        # read call per byte would cost more than the whole walk.
        self._window = b""
        self._window_start = 0

    def walk(self, message: str, end: int, depth: int) -> _Walked:
        if depth > MAX_DEPTH:
            raise _TooDeep
        children = _CHILDREN[message]
        name_field = _NAME_FIELD.get(message)
        walked = _Walked()
        counts: dict[int, int] = {}
        external = False
        locations: list[str] = []
        while self._pos < end:
            number, wire = self._tag(end)
            walked.fields.add(number)
            if wire == _VARINT and message == "TensorProto" and number == _TENSOR_DATA_LOCATION:
                external = external or self._varint(end) == _DATA_LOCATION_EXTERNAL
            elif wire != _LEN:
                self._skip_value(wire, number, end, depth)
            else:
                length = self._varint(end)
                field_end = self._pos + length
                if field_end > end:
                    self._malformed(f"field {number} runs past its message")
                child = children.get(number)
                if child is not None:
                    index = counts.get(number, 0)
                    counts[number] = index + 1
                    inner = self.walk(child.message, field_end, depth + 1)
                    label = f"{child.label}[{index}]" if child.repeated else child.label
                    if inner.name:
                        label += f" {inner.name!r}"
                    walked.references += [
                        ([label, *where], what) for where, what in inner.references
                    ]
                elif number == name_field:
                    walked.name = self._string(length, field_end)
                elif message == "TensorProto" and number == _TENSOR_EXTERNAL_DATA:
                    location = self._location_entry(field_end, depth + 1)
                    if location is not None:
                        locations.append(location)
                else:
                    self._skip(length, end)
        if self._pos != end:
            self._malformed("a field runs past its message")
        if external and not locations:
            walked.references.append(([], "external data without a location"))
        walked.references += [([], f"external data at {where!r}") for where in locations]
        return walked

    def _location_entry(self, end: int, depth: int) -> str | None:
        """The value of a StringStringEntryProto whose key is `location`, else None."""
        if depth > MAX_DEPTH:
            raise _TooDeep
        key: str | None = None
        value = ""
        while self._pos < end:
            number, wire = self._tag(end)
            if wire == _LEN and number in (1, 2):
                text = self._string(self._varint(end), end)
                if number == 1:
                    key = text
                else:
                    value = text
            else:
                self._skip_value(wire, number, end, depth)
        if self._pos != end:
            self._malformed("a field runs past its message")
        return value if key == "location" else None

    def _skip_value(self, wire: int, number: int, end: int, depth: int) -> None:
        """Moves past a field that cannot hold a reference, as protobuf skips unknown
        fields: groups included, which ONNX never uses but parsers still accept."""
        if wire == _VARINT:
            self._varint(end)
        elif wire == _FIXED64:
            self._skip(8, end)
        elif wire == _FIXED32:
            self._skip(4, end)
        elif wire == _LEN:
            self._skip(self._varint(end), end)
        elif wire == _START_GROUP:
            if depth + 1 > MAX_DEPTH:
                raise _TooDeep
            while True:
                inner, inner_wire = self._tag(end)
                if inner_wire == _END_GROUP:
                    if inner != number:
                        self._malformed(f"group {number} ends as group {inner}")
                    return
                self._skip_value(inner_wire, inner, end, depth + 1)
        else:
            # An end of group outside its group, and 6 and 7, which are no wire type.
            self._malformed(f"field {number} has wire type {wire}")

    def _tag(self, end: int) -> tuple[int, int]:
        key = self._varint(end)
        number = key >> 3
        if number == 0:
            self._malformed("field number 0")
        return number, key & 7

    def _varint(self, end: int) -> int:
        value = 0
        for shift in range(0, 70, 7):
            if self._pos >= end:
                self._malformed("a number runs past its message")
            offset = self._pos - self._window_start
            if 0 <= offset < len(self._window):
                byte = self._window[offset]
                self._pos += 1
            else:
                byte = self._read(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        self._malformed("a number longer than 10 bytes")

    def _string(self, length: int, end: int) -> str:
        """A string field, cut for showing; the rest is skipped, never read."""
        if self._pos + length > end:
            self._malformed("a field runs past its message")
        shown = self._read(min(length, _SHOWN_CHARS)).decode("utf-8", errors="replace")
        if length > _SHOWN_CHARS:
            self._pos += length - _SHOWN_CHARS
            shown += "..."
        return shown

    def _read(self, count: int) -> bytes:
        """`count` bytes (at most _SHOWN_CHARS) at the position."""
        offset = self._pos - self._window_start
        if offset < 0 or offset + count > len(self._window):
            self._file.seek(self._pos)
            self._window = self._file.read(_WINDOW) or b""
            self._window_start = self._pos
            offset = 0
            if count > len(self._window):
                self._malformed("the file ends inside a field")
        self._pos += count
        return self._window[offset : offset + count]

    def _skip(self, count: int, end: int) -> None:
        """Moves past `count` bytes without reading them (the next read seeks)."""
        if self._pos + count > end:
            self._malformed("a field runs past its message")
        self._pos += count

    def _malformed(self, reason: str) -> NoReturn:
        raise MalformedModelError(f"not an ONNX model: {reason} (at byte {self._pos})")
