"""Wire messages <-> the engine's InferRequest/InferResponse: the protobuf messages of
the gRPC transport and the JSON (+ binary tensor data extension) of the REST one.
Tensors are decoded straight into numpy; nothing else of the protocol reaches the core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from edgefleet.edge_runtime.engine import InferRequest, InferResponse
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.serving.dataplane import (
    BACKEND,
    ModelConfiguration,
    ModelMetadata,
    RepositoryEntry,
    VersionStatistics,
)
from edgefleet.edge_runtime.stats import Duration
from edgefleet.edge_runtime.tensors import from_raw, from_values, to_raw
from edgefleet.protocol.inference import grpc_service_pb2 as pb
from edgefleet.protocol.inference import model_config_pb2 as config_pb

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
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        # Stock clients write NaN and infinities as the bare words NaN, Infinity and
        # -Infinity, as Python's json does; strict JSON and orjson refuse them.
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError) as error:
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
            data = _field(item, "data", (list, int, float, str, bool), f"input {name!r}")
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
        else:
            entry["data"] = _json_data(output.data, output.datatype)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": response.model, "model_version": response.version,
                            "outputs": outputs}
    if response.id:
        # Python's json: an id read by its fallback in _json_object may hold a lone
        # surrogate, which orjson refuses to write.
        body["id"] = orjson.Fragment(json.dumps(response.id))
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), b"".join(tail)


def _json_data(data: np.ndarray, datatype: str) -> Any:
    """An output's values, flat, as orjson writes them: numeric arrays straight from
    numpy (it takes C-contiguous ones only)."""
    flat = np.ascontiguousarray(data).reshape(-1)
    if datatype == "BYTES":
        return [item.decode("utf-8", "replace") for item in flat]
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        # orjson writes NaN and infinities as null; stock clients read back the NaN,
        # Infinity and -Infinity that Python's json writes.
        return orjson.Fragment(json.dumps(flat.tolist()))
    return flat


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


# ---------------------------------------------------------------- extensions (both)
# Model configuration, statistics and repository index, in Triton's JSON and messages.

STATISTICS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _config_type(datatype: str) -> str:
    """The model configuration's name of a protocol datatype (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def config_to_json(config: ModelConfiguration, platform: str) -> dict[str, Any]:
    def tensors(specs: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"name": s.name, "data_type": _config_type(s.datatype), "dims": list(s.shape)}
                for s in specs]

    body: dict[str, Any] = {
        "name": config.name, "platform": platform, "backend": BACKEND,
        "max_batch_size": config.max_batch_size, "input": tensors(config.inputs),
        "output": tensors(config.outputs)}
    if config.batch_delay_micros is not None:
        body["dynamic_batching"] = {"max_queue_delay_microseconds": config.batch_delay_micros}
    return body


def config_to_grpc(config: ModelConfiguration, platform: str) -> pb.ModelConfigResponse:
    def data_type(datatype: str) -> int:
        return config_pb.DataType.Value(_config_type(datatype))

    message = config_pb.ModelConfig(
        name=config.name, platform=platform, backend=BACKEND,
        max_batch_size=config.max_batch_size,
        input=[config_pb.ModelInput(name=s.name, data_type=data_type(s.datatype), dims=s.shape)
               for s in config.inputs],
        output=[config_pb.ModelOutput(name=s.name, data_type=data_type(s.datatype),
                                      dims=s.shape) for s in config.outputs])
    if config.batch_delay_micros is not None:
        message.dynamic_batching.max_queue_delay_microseconds = config.batch_delay_micros
    return pb.ModelConfigResponse(config=message)


def statistics_to_json(versions: Sequence[VersionStatistics]) -> dict[str, Any]:
    def duration(value: Duration) -> dict[str, int]:
        return {"count": value.count, "ns": value.ns}

    return {"model_stats": [{
        "name": v.name, "version": v.version,
        "last_inference": v.statistics.last_inference_ms,
        "inference_count": v.statistics.inference_count,
        "execution_count": v.statistics.execution_count,
        "inference_stats": {
            **{name: duration(getattr(v.statistics, name)) for name in STATISTICS},
            "cache_hit": duration(Duration()), "cache_miss": duration(Duration())},
        "batch_stats": [],
    } for v in versions]}


def statistics_to_grpc(versions: Sequence[VersionStatistics]) -> pb.ModelStatisticsResponse:
    def duration(value: Duration) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=value.count, ns=value.ns)

    return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(
        name=v.name, version=v.version, last_inference=v.statistics.last_inference_ms,
        inference_count=v.statistics.inference_count,
        execution_count=v.statistics.execution_count,
        inference_stats=pb.InferStatistics(
            **{name: duration(getattr(v.statistics, name)) for name in STATISTICS}),
    ) for v in versions])


def index_to_json(entries: Sequence[RepositoryEntry]) -> list[dict[str, str]]:
    return [{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in entries]


def index_to_grpc(entries: Sequence[RepositoryEntry]) -> pb.RepositoryIndexResponse:
    index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(models=[
        index(name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries])


def repository_parameters_from_grpc(
        parameters: Mapping[str, pb.ModelRepositoryParameter]) -> dict[str, object]:
    """Each parameter's value, whichever of the oneof it is."""
    values: dict[str, object] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def repository_parameters_from_json(body: bytes) -> dict[str, object]:
    """The `parameters` object of a load or unload request's optional JSON body."""
    if not body.strip():
        return {}
    parameters = _json_object(body).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InferenceError.invalid(
            f"parameters: expected an object, got {type(parameters).__name__}")
    return parameters


def index_request_from_json(body: bytes) -> bool:
    """Whether an index request asks for ready models only (`{"ready": true}`)."""
    if not body.strip():
        return False
    ready = _json_object(body).get("ready", False)
    if not isinstance(ready, bool):
        raise InferenceError.invalid(f"ready: expected a boolean, got {type(ready).__name__}")
    return ready
