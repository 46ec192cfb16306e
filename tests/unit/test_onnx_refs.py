"""The ONNX path-reference walker against models built by the onnx package: every place
a tensor can sit, the file onnx itself writes with external data, and files that are not
ONNX at all."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgefleet.protocol.onnx_refs import (
    MAX_DEPTH,
    MalformedModelError,
    external_references,
    summarize,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"


def _external(name: str, location: str = "etc/hostname") -> TensorProto:
    """A float tensor whose bytes ONNX Runtime would read from `location`."""
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], [0.0, 0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def _identity_graph(name: str, initializers: list[TensorProto] | None = None) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializers or [],
    )


def _write(model: onnx.ModelProto, path: Path) -> Path:
    # Raw bytes: onnx.save_model would try to resolve the external tensors itself.
    path.write_bytes(model.SerializeToString())
    return path


def test_a_self_contained_example_model_has_no_references() -> None:
    assert external_references(EXAMPLES / "mlp" / "1" / "model.onnx") == []
    assert external_references(EXAMPLES / "cnn" / "1" / "model.onnx") == []


def test_external_data_written_by_onnx_is_found(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "W")
    model = helper.make_model(_identity_graph("main", [weights]))
    onnx.save_model(
        model,
        tmp_path / "model.onnx",
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert external_references(tmp_path / "model.onnx") == [
        "graph 'main' > initializer[0] 'W': external data at 'weights.bin'"
    ]


def test_a_hand_made_location_outside_the_model_is_found(tmp_path: Path) -> None:
    model = helper.make_model(_identity_graph("main", [_external("W")]))
    assert external_references(_write(model, tmp_path / "m.onnx")) == [
        "graph 'main' > initializer[0] 'W': external data at 'etc/hostname'"
    ]


def test_a_reference_inside_the_subgraph_of_an_if_node_is_found(tmp_path: Path) -> None:
    node = helper.make_node(
        "If",
        ["cond"],
        ["y"],
        name="branch",
        then_branch=_identity_graph("then", [_external("secret")]),
        else_branch=_identity_graph("else"),
    )
    graph = helper.make_graph(
        [node],
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    found = external_references(_write(helper.make_model(graph), tmp_path / "m.onnx"))
    assert found == [
        "graph 'main' > node[0] 'branch' > attribute[1] 'then_branch' > g 'then'"
        " > initializer[0] 'secret': external data at 'etc/hostname'"
    ]


def test_references_in_attributes_sparse_tensors_and_functions_are_found(tmp_path: Path) -> None:
    constant = helper.make_node("Constant", [], ["c"], value=_external("in_attribute"))
    listed = helper.make_attribute("many", [_external("in_list", "a"), _external("ok", "b")])
    constant.attribute.append(listed)
    sparse = helper.make_sparse_tensor(
        _external("sparse_values", "values.bin"),
        helper.make_tensor("idx", TensorProto.INT64, [2], [0, 1]),
        [4],
    )
    graph = _identity_graph("main")
    graph.node.append(constant)
    graph.sparse_initializer.append(sparse)
    function = helper.make_function(
        "local",
        "fn",
        [],
        ["z"],
        [helper.make_node("Constant", [], ["z"], value=_external("in_function", "/dev/mem"))],
        [helper.make_opsetid("", 21)],
    )
    model = helper.make_model(graph, functions=[function])
    found = external_references(_write(model, tmp_path / "m.onnx"))
    assert sorted(found) == sorted(
        [
            "graph 'main' > node[1] > attribute[0] 'value' > t 'in_attribute':"
            " external data at 'etc/hostname'",
            "graph 'main' > node[1] > attribute[1] 'many' > tensors[0] 'in_list':"
            " external data at 'a'",
            "graph 'main' > node[1] > attribute[1] 'many' > tensors[1] 'ok': external data at 'b'",
            "graph 'main' > sparse_initializer[0] > values 'sparse_values':"
            " external data at 'values.bin'",
            "functions[0] 'fn' > node[0] > attribute[0] 'value' > t 'in_function':"
            " external data at '/dev/mem'",
        ]
    )


def test_external_without_a_location_and_a_location_without_external_are_both_found(
    tmp_path: Path,
) -> None:
    no_location = _external("a")
    no_location.ClearField("external_data")
    not_marked = _external("b")
    not_marked.data_location = TensorProto.DEFAULT
    model = helper.make_model(_identity_graph("main", [no_location, not_marked]))
    assert external_references(_write(model, tmp_path / "m.onnx")) == [
        "graph 'main' > initializer[0] 'a': external data without a location",
        "graph 'main' > initializer[1] 'b': external data at 'etc/hostname'",
    ]


def test_a_reference_after_gigabytes_of_raw_data_is_found_without_reading_them(
    tmp_path: Path,
) -> None:
    # A sparse file: a 4 GiB raw_data field, then the tensor's external location.
    raw_size = 4 << 30
    location = b"\x6a\x10\x0a\x08location\x12\x04/etc"  # external_data {location: /etc}
    tensor_head = b"\x4a" + _varint(raw_size)  # raw_data, field 9
    tensor_len = len(tensor_head) + raw_size + len(location)
    graph_head = b"\x2a" + _varint(tensor_len)  # initializer, field 5
    model_head = b"\x3a" + _varint(len(graph_head) + tensor_len)  # graph, field 7
    path = tmp_path / "big.onnx"
    with path.open("wb") as file:
        file.write(model_head + graph_head + tensor_head)
        file.seek(raw_size, 1)
        file.write(location)
    tracemalloc.start()
    try:
        found = external_references(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == ["graph > initializer[0]: external data at '/etc'"]
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "content",
    [
        b"",  # parses as protobuf, but no graph
        b"<html>not found</html>",
        b'{"graph": {}}',
        bytes(range(256)) * 8,
        b"\x3a\xff\xff\xff\xff\x0f",  # a graph longer than the file
        b"\x3a\x02\x08",  # the file ends inside the graph
        b"\x3a\x02\x2a\x05",  # an initializer longer than its graph
        b"\x08" + b"\xff" * 11,  # a varint of more than 10 bytes
        b"\x3b\x08\x01",  # a group that never ends
        b"\x3b\x44",  # a group ended as another one
    ],
)
def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(MalformedModelError, match="not an ONNX model"):
        external_references(path)


def test_a_truncated_real_model_is_refused(tmp_path: Path) -> None:
    whole = (EXAMPLES / "mlp" / "1" / "model.onnx").read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MalformedModelError):
        external_references(path)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_corrupted_model_gives_references_or_malformed_and_nothing_else(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    content = bytearray((EXAMPLES / "cnn" / "1" / "model.onnx").read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("corrupt") / "model.onnx"
    path.write_bytes(bytes(content[: data.draw(st.integers(0, len(content)))]))
    try:
        assert isinstance(external_references(path), list)
    except MalformedModelError:
        pass


def test_subgraphs_nested_beyond_the_depth_bound_count_as_a_reference(tmp_path: Path) -> None:
    # Written by hand: protobuf itself refuses to build a message this deep. Each level
    # is three messages, graph > node (field 1) > attribute (field 5) > g (field 6).
    graph = _identity_graph("leaf", [_external("W")]).SerializeToString()
    for _ in range(MAX_DEPTH // 3 + 1):
        graph = _field(1, _field(5, _field(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_field(7, graph))
    assert external_references(path) == [
        f"messages nested deeper than {MAX_DEPTH}, not searched for references"
    ]


def test_unknown_fields_and_groups_are_skipped_as_protobuf_skips_them(tmp_path: Path) -> None:
    tensor = _external("W")
    # Field 99 as a group holding a varint and a nested group, then a length-delimited
    # field 98: protobuf keeps both as unknown fields and still reads the tensor.
    unknown = b"\x9b\x06" + b"\x08\x01" + b"\x13\x14" + b"\x9c\x06" + _field(98, b"xyz")
    graph = _identity_graph("main").SerializeToString() + _field(
        5, unknown + tensor.SerializeToString()
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(_field(7, graph))
    parsed = onnx.ModelProto.FromString(path.read_bytes())
    assert parsed.graph.initializer[0].external_data[0].value == "etc/hostname"
    assert external_references(path) == [
        "graph 'main' > initializer[0] 'W': external data at 'etc/hostname'"
    ]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_a_summary_shows_the_first_references_and_counts_the_rest() -> None:
    references = [f"initializer[{i}]: external data at 'x{i}'" for i in range(5)]
    assert summarize(references[:2]) == "; ".join(references[:2])
    assert summarize(references) == "; ".join(references[:3]) + "; and 2 more"
