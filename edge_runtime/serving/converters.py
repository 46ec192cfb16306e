"""Wire messages <-> the engine's InferRequest/InferResponse: the protobuf messages of
the gRPC transport and the JSON (+ binary tensor data extension) of the REST one.
Tensors are decoded straight into numpy; nothing else of the protocol reaches the core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgefleet.edge_runtime.engine import InferRequest, InferResponse
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.serving.dataplane import ModelMetadata
from edgefleet.edge_runtime.tensors import from_raw, from_values, to_raw
from edgefleet.protocol.inference import grpc_service_pb2 as pb

# Which typed field of InferTensorContents carries each datatype (FP16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _requested_outputs(names: Sequence[str]) -> list[str] | None:
    if len(set(names)) != len(names):
        raise InferenceError.invalid(f"requested outputs name a tensor twice: {list(names)}")
    return list(names) or None


def _check_unique(names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise InferenceError.invalid(f"inputs name a tensor twice: {names}")


# ---------------------------------------------------------------- gRPC


def infer_request_from_grpc(message: pb.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InferenceError.invalid(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    _check_unique([tensor.name for tensor in message.inputs])
    for index, tensor in enumerate(message.inputs):
        has_contents = tensor.HasField("contents")
        if raw:
            if has_contents:
                raise InferenceError.invalid(
                    f"input {tensor.name!r}: both contents and raw_input_contents given")
            array = from_raw(tensor.name, tensor.datatype, tensor.shape, raw[index])
        else:
            field = CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise InferenceError.invalid(
                    f"input {tensor.name!r}: datatype {tensor.datatype!r} has no typed "
                    "contents; send it in raw_input_contents")
            for other in CONTENTS_FIELD.values():
                if other != field and len(getattr(tensor.contents, other)):
                    raise InferenceError.invalid(
                        f"input {tensor.name!r}: {tensor.datatype} data belongs in {field}, "
                        f"got {other}")
            array = from_values(tensor.name, tensor.datatype, tensor.shape,
                                list(getattr(tensor.contents, field)))
        inputs[tensor.name] = array
        datatypes[tensor.name] = tensor.datatype
    return InferRequest(
        model=message.model_name, version=message.model_version or None, inputs=inputs,
        datatypes=datatypes, outputs=_requested_outputs([o.name for o in message.outputs]),
        id=message.id,
    )


def infer_response_to_grpc(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model, model_version=response.version,
                                    id=response.id)
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype,
                            shape=list(output.data.shape))
        message.raw_output_contents.append(to_raw(output.data, output.datatype))
    return message


def metadata_to_grpc(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=metadata.name, versions=metadata.versions, platform=metadata.platform,
        inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in metadata.inputs],
        outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                 for s in metadata.outputs],
    )


# ---------------------------------------------------------------- REST (JSON)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
           default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise InferenceError.invalid(f"{where}: missing field {key!r}")
        return default
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InferenceError.invalid(f"{where}: field {key!r} must be {_kind_name(kind)}, "
                                     f"got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({dict: "an object", list: "a list", str: "a string",
                        int: "an integer", bool: "a boolean"}.get(k, k.__name__) for k in kinds)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InferenceError.invalid(f"request body is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise InferenceError.invalid("request body must be a JSON object")
    return parsed


def infer_request_from_json(model: str, version: str | None, header: bytes,
                            binary: bytes) -> tuple[InferRequest, bool, set[str]]:
    """Parses a REST infer body. Returns the request, whether all outputs go back as
    binary data, and the outputs asked for in binary."""
    body = _json_object(header)
    raw_inputs = _field(body, "inputs", list, "request")
    parameters = _field(body, "parameters", dict, "request", {})
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for index, item in enumerate(raw_inputs):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise InferenceError.invalid(f"{where} must be an object")
        name = _field(item, "name", str, where)
        datatype = _field(item, "datatype", str, f"input {name!r}")
        shape = _field(item, "shape", list, f"input {name!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InferenceError.invalid(f"input {name!r}: shape must be a list of integers")
        if name in inputs:
            raise InferenceError.invalid(f"inputs name {name!r} twice")
        size = _field(item, "parameters", dict, f"input {name!r}", {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InferenceError.invalid(
                    f"input {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(binary) - offset} bytes of binary data left")
            inputs[name] = from_raw(name, datatype, shape, binary[offset:offset + size])
            offset += size
        else:
            data = _flatten(_field(item, "data", (list, int, float, str, bool), f"input {name!r}"))
            inputs[name] = from_values(name, datatype, shape, data)
        datatypes[name] = datatype
    if offset != len(binary):
        raise InferenceError.invalid(f"{len(binary) - offset} bytes of binary data belong to "
                                     "no input")
    requested = _field(body, "outputs", list, "request", [])
    names, binary_outputs = [], set()
    for index, item in enumerate(requested):
        if not isinstance(item, dict):
            raise InferenceError.invalid(f"outputs[{index}] must be an object")
        name = _field(item, "name", str, f"outputs[{index}]")
        names.append(name)
        if _field(item, "parameters", dict, f"output {name!r}", {}).get("binary_data"):
            binary_outputs.add(name)
    request = InferRequest(model=model, version=version, inputs=inputs, datatypes=datatypes,
                           outputs=_requested_outputs(names), id=str(body.get("id", "")))
    return request, bool(parameters.get("binary_data_output")), binary_outputs


def infer_response_to_json(response: InferResponse, all_binary: bool,
                           binary_outputs: set[str]) -> tuple[bytes, bytes]:
    """The JSON header and the binary tail (empty when no output is binary)."""
    outputs, tail = [], []
    for output in response.outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype,
                                 "shape": list(output.data.shape)}
        if all_binary or output.name in binary_outputs:
            data = to_raw(output.data, output.datatype)
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        elif output.datatype == "BYTES":
            entry["data"] = [item.decode("utf-8", "replace") for item in output.data.reshape(-1)]
        else:
            entry["data"] = np.asarray(output.data).reshape(-1).tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model, "model_version": response.version,
                            "outputs": outputs}
    if response.id:
        body["id"] = response.id
    return json.dumps(body).encode(), b"".join(tail)


def feedback_from_json(body: bytes) -> tuple[str, list[str]]:
    """The request id and one label per row of a feedback body: {"id": "...", "label":
    L} where L is a class (an integer or a name) or a list of them, one per row."""
    message = _json_object(body)
    request_id = _field(message, "id", str, "feedback")
    label = _field(message, "label", object, "feedback")
    labels = label if isinstance(label, list) else [label]
    for index, item in enumerate(labels):
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise InferenceError.invalid(
                f"feedback: label[{index}] must be an integer class or a class name, got "
                f"{type(item).__name__}")
    return request_id, [str(item) for item in labels]


def metadata_to_json(metadata: ModelMetadata) -> dict[str, Any]:
    def tensors(specs: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {"name": metadata.name, "versions": metadata.versions,
            "platform": metadata.platform, "inputs": tensors(metadata.inputs),
            "outputs": tensors(metadata.outputs)}
