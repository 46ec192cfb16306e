"""Our inference messages are wire-identical to the stock client's, and the generated
code is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton

from edgefleet.protocol.inference import grpc_service_pb2 as ours
from edgefleet.protocol.inference import model_config_pb2 as our_config

REPO_ROOT = Path(__file__).resolve().parents[2]
# Declared with only the fields the runtime fills (the model configuration's ONNX part;
# statistics without batch, memory and response figures): a client reads the rest unset.
PARTIAL = {"ModelConfigResponse", "ModelStatistics", "ModelStatisticsResponse"}
MESSAGES = [name for name in ours.DESCRIPTOR.message_types_by_name if name not in PARTIAL]


def wire_shape(descriptor: Descriptor) -> dict[int, tuple[object, ...]]:
    """What decides the bytes on the wire: field numbers, names, types, cardinality,
    and the same for nested messages and oneofs."""
    shape: dict[int, tuple[object, ...]] = {}
    for field in descriptor.fields:
        nested = wire_shape(field.message_type) if field.message_type else None
        oneof = field.containing_oneof.name if field.containing_oneof else None
        shape[field.number] = (field.name, field.type, field.is_repeated, oneof,
                               tuple(sorted(nested.items())) if nested else None)
    return shape


@pytest.mark.parametrize("name", MESSAGES)
def test_message_matches_the_stock_client_field_for_field(name: str) -> None:
    assert wire_shape(ours.DESCRIPTOR.message_types_by_name[name]) == wire_shape(
        triton.DESCRIPTOR.message_types_by_name[name])


def is_part_of(part: dict[int, tuple[object, ...]], whole: dict[int, tuple[object, ...]]
               ) -> bool:
    """Each field of `part` is the field of `whole` with that number, nested messages
    being parts of theirs."""
    for number, (name, kind, repeated, oneof, nested) in part.items():
        if number not in whole:
            return False
        other_name, other_kind, other_repeated, other_oneof, other_nested = whole[number]
        if (name, kind, repeated, oneof) != (other_name, other_kind, other_repeated,
                                             other_oneof):
            return False
        if nested and not is_part_of(dict(nested), dict(other_nested or ())):
            return False
    return True


@pytest.mark.parametrize("name", sorted(PARTIAL))
def test_partial_messages_are_part_of_the_stock_clients(name: str) -> None:
    part = wire_shape(ours.DESCRIPTOR.message_types_by_name[name])
    assert is_part_of(part, wire_shape(triton.DESCRIPTOR.message_types_by_name[name]))
    assert not is_part_of({99: ("x", 9, False, None, None)}, part)  # the check can fail


def test_model_configuration_types_match_the_stock_clients() -> None:
    for name in our_config.DESCRIPTOR.message_types_by_name:
        assert is_part_of(wire_shape(our_config.DESCRIPTOR.message_types_by_name[name]),
                          wire_shape(triton_config.DESCRIPTOR.message_types_by_name[name])), name
    ours_types = our_config.DESCRIPTOR.enum_types_by_name["DataType"].values_by_name
    theirs = triton_config.DESCRIPTOR.enum_types_by_name["DataType"].values_by_name
    assert {n: v.number for n, v in ours_types.items()} == {
        n: v.number for n, v in theirs.items()}


def test_every_method_the_protocol_names_is_declared() -> None:
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
        "RepositoryModelLoad", "RepositoryModelUnload"}
    for method in service.methods:
        stock = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[
            method.name]
        assert method.input_type.name == stock.input_type.name
        assert method.output_type.name == stock.output_type.name


def test_generated_code_is_current() -> None:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "hack" / "gen_protos.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_control_protocol_loads_beside_the_stock_client() -> None:
    from edgefleet.protocol.edgefleet.v1 import fleet_pb2

    message = fleet_pb2.DesiredState(revision="r1")
    message.models.add(name="digits", digest="sha256:" + "0" * 64, size_bytes=3)
    assert fleet_pb2.DesiredState.FromString(message.SerializeToString()) == message
    assert triton.ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"


def test_a_refusal_is_ignored_by_a_runtime_that_predates_it() -> None:
    """CloudMessage.refused is a compatible addition: a decoder built from the protocol
    without it (an older runtime) reads the message as one of no kind it knows."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from edgefleet.protocol.edgefleet.v1 import fleet_pb2

    old = descriptor_pb2.FileDescriptorProto()
    fleet_pb2.DESCRIPTOR.CopyToProto(old)
    cloud = next(m for m in old.message_type if m.name == "CloudMessage")
    kept = [f for f in cloud.field if f.name != "refused"]
    del cloud.field[:]
    cloud.field.extend(kept)
    pool = descriptor_pool.DescriptorPool()
    OldCloudMessage = message_factory.GetMessageClass(
        pool.Add(old).message_types_by_name["CloudMessage"])

    refused = fleet_pb2.CloudMessage(refused=fleet_pb2.Refused(
        kind="metrics", field="metrics.samples[0]", reason="NotAllowed", sequence=3))
    assert OldCloudMessage.FromString(refused.SerializeToString()).WhichOneof("kind") is None
    ack = fleet_pb2.CloudMessage(metrics_ack=fleet_pb2.MetricsAck(sequence=3))
    assert OldCloudMessage.FromString(ack.SerializeToString()).metrics_ack.sequence == 3
