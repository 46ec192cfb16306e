"""The inference protocol's extensions as stock tools use them, against a real
`edgefleet-edge serve` process: model configuration, statistics and the model
repository through tritonclient's gRPC and HTTP clients, and the standard gRPC health
checking and reflection services through grpcio's own clients."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import testmodels
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.utils import InferenceServerException

from tests.conftest import EdgeProcess, StartEdge

pytestmark = pytest.mark.integration
CLIENTS = ("grpc", "http")
SERVICE = "inference.GRPCInferenceService"


def client(edge: EdgeProcess, kind: str, token: str = "") -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else None
    if kind == "grpc":
        return _Bound(triton_grpc.InferenceServerClient(edge.grpc_url), headers)
    return _Bound(triton_http.InferenceServerClient(edge.http_url), headers)


class _Bound:
    """A stock client whose every call carries the same headers (the bearer token)."""

    def __init__(self, inner: Any, headers: dict[str, str] | None) -> None:
        self._inner, self._headers = inner, headers

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        return lambda *args, **kwargs: method(*args, headers=self._headers, **kwargs)


def call(edge: EdgeProcess, kind: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """A stock client call; the gRPC client is asked for JSON, so both read alike."""
    if kind == "grpc" and method.startswith("get_"):
        kwargs["as_json"] = True
    return getattr(client(edge, kind, kwargs.pop("token", "")), method)(*args, **kwargs)


def infer(edge: EdgeProcess, model: str, array: np.ndarray, version: str = "") -> Any:
    item = triton_grpc.InferInput("x", list(array.shape), "FP32")
    item.set_data_from_numpy(array)
    return triton_grpc.InferenceServerClient(edge.grpc_url).infer(model, [item],
                                                                  model_version=version)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    testmodels.write_model(root, "batched", "1", testmodels.scaled(2.0),
                           {"runtime": {"batching": {"maxBatchSize": 8,
                                                     "maxDelayMicros": 300}}})
    testmodels.write_model(root, "scaled", "1", testmodels.scaled(1.0))
    testmodels.write_model(root, "scaled", "2", testmodels.scaled(3.0),
                           {"defaultVersion": "2"})
    return root


@pytest.mark.parametrize("kind", CLIENTS)
def test_model_config_tells_the_batch_dimension_and_the_tensors(
        start_edge: StartEdge, repository: Path, kind: str) -> None:
    edge = start_edge(repository)
    batched = call(edge, kind, "get_model_config", "batched")
    plain = call(edge, kind, "get_model_config", "scaled", "1")
    if kind == "grpc":  # the gRPC client wraps it: {"config": {...}}
        batched, plain = batched["config"], plain["config"]
    # A model batched by the server leaves the batch dimension out of its tensors.
    assert batched["max_batch_size"] == 8
    assert batched["dynamic_batching"]["max_queue_delay_microseconds"] in (300, "300")
    assert batched["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}
                                if kind == "http" else
                                {"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert plain.get("max_batch_size", 0) == 0
    assert [i["dims"] for i in plain["input"]] in ([[-1, 4]], [["-1", "4"]])
    assert plain["platform"] == "onnxruntime_onnx" and plain["backend"] == "onnxruntime"
    assert "dynamic_batching" not in plain
    with pytest.raises(InferenceServerException, match="not loaded"):
        call(edge, kind, "get_model_config", "nothing")


@pytest.mark.parametrize("kind", CLIENTS)
def test_statistics_count_what_each_version_served(
        start_edge: StartEdge, repository: Path, kind: str) -> None:
    edge = start_edge(repository)
    before = time.time() * 1000
    for _ in range(5):
        infer(edge, "batched", np.ones((3, 4), np.float32))
    infer(edge, "scaled", np.ones((1, 4), np.float32), version="1")
    with pytest.raises(InferenceServerException):  # a wrong width: fails in that version
        infer(edge, "scaled", np.ones((1, 5), np.float32), version="1")

    every = call(edge, kind, "get_inference_statistics")["model_stats"]
    assert sorted((s["name"], s["version"]) for s in every) == [
        ("batched", "1"), ("scaled", "1"), ("scaled", "2")]
    [batched] = call(edge, kind, "get_inference_statistics", "batched")["model_stats"]
    counts = {key: int(value.get("count", 0))
              for key, value in batched["inference_stats"].items()}
    assert counts["success"] == counts["queue"] == counts["compute_infer"] == 5
    assert counts["fail"] == 0
    assert int(batched["inference_count"]) == 15  # rows: a batch of 3 counts 3
    assert 1 <= int(batched["execution_count"]) <= 5
    assert int(batched["inference_stats"]["success"]["ns"]) >= int(
        batched["inference_stats"]["compute_infer"]["ns"]) > 0
    assert int(batched["last_inference"]) >= before

    [scaled] = call(edge, kind, "get_inference_statistics", "scaled", "1")["model_stats"]
    assert int(scaled["inference_stats"]["success"]["count"]) == 1
    assert int(scaled["inference_stats"]["fail"]["count"]) == 1
    [idle] = call(edge, kind, "get_inference_statistics", "scaled", "2")["model_stats"]
    assert int(idle.get("inference_count", 0)) == 0 and int(idle.get("last_inference", 0)) == 0
    with pytest.raises(InferenceServerException, match="not loaded"):
        call(edge, kind, "get_inference_statistics", "nothing")


def index(edge: EdgeProcess, kind: str, **kwargs: Any) -> dict[tuple[str, str], tuple[str, str]]:
    entries = call(edge, kind, "get_model_repository_index", **kwargs)
    if kind == "grpc":
        entries = entries.get("models", [])
    return {(e["name"], e.get("version", "")): (e["state"], e.get("reason", ""))
            for e in entries}


def ready_index(edge: EdgeProcess) -> list[tuple[str, str]]:
    """The index of ready models only (`{"ready": true}`; the stock clients never ask)."""
    request = urllib.request.Request(f"http://{edge.http_url}/v2/repository/index",
                                     data=json.dumps({"ready": True}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return [(e["name"], e["version"]) for e in json.load(response)]


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_repository_client_lists_unloads_and_loads_models(
        start_edge: StartEdge, repository: Path, kind: str) -> None:
    # Polling on: an unloaded model must stay unloaded through the polls.
    edge = start_edge(repository, "--poll-seconds", "0.2")
    testmodels.write_model(repository, "broken", "1", testmodels.scaled(1.0),
                           {"defaultVersion": "9"})
    assert index(edge, kind)[("scaled", "2")] == ("READY", "")

    call(edge, kind, "unload_model", "scaled")
    time.sleep(0.6)  # a few polls: what was unloaded by request stays unloaded
    listed = index(edge, kind)
    assert listed[("scaled", "1")] == listed[("scaled", "2")] == ("UNAVAILABLE", "unloaded")
    assert not client(edge, kind).is_model_ready("scaled")
    with pytest.raises(InferenceServerException, match="not loaded"):
        infer(edge, "scaled", np.ones((1, 4), np.float32))
    assert ready_index(edge) == [("batched", "1")]

    call(edge, kind, "load_model", "scaled")
    assert index(edge, kind)[("scaled", "2")] == ("READY", "")
    assert infer(edge, "scaled", np.ones((1, 4), np.float32)).as_numpy("y").tolist() == [
        [3.0] * 4]

    state, reason = index(edge, kind)[("broken", "")]
    assert state == "UNAVAILABLE" and "names versions that are not there" in reason
    with pytest.raises(InferenceServerException, match="names versions that are not there"):
        call(edge, kind, "load_model", "broken")
    with pytest.raises(InferenceServerException, match="not in the repository"):
        call(edge, kind, "load_model", "nothing")
    with pytest.raises(InferenceServerException, match="takes no parameters"):
        call(edge, kind, "load_model", "scaled", config='{"max_batch_size": 4}')
    assert client(edge, kind).is_server_live()  # and it serves on


def test_repository_calls_need_the_token_when_the_runtime_asks_for_one(
        start_edge: StartEdge, repository: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789")
    edge = start_edge(repository, "--auth-token-file", str(token))
    for kind in CLIENTS:
        with pytest.raises(InferenceServerException):
            call(edge, kind, "unload_model", "scaled")
        with pytest.raises(InferenceServerException):
            call(edge, kind, "get_inference_statistics")
    call(edge, "http", "unload_model", "scaled", token=token.read_text())
    assert index(edge, "grpc", token=token.read_text())[("scaled", "1")][0] == "UNAVAILABLE"


def test_health_checking_and_reflection_answer_stock_grpc_clients(
        start_edge: StartEdge, repository: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789")
    edge = start_edge(repository, "--auth-token-file", str(token))
    with grpc.insecure_channel(edge.grpc_url) as channel:
        # As grpc_health_probe asks: no credentials, the server and each service.
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", SERVICE, "edgefleet.v1.InferenceFeedback"):
            assert check(health_pb2.HealthCheckRequest(service=service)).status == (
                health_pb2.HealthCheckResponse.SERVING), service
        with pytest.raises(grpc.RpcError) as unknown:
            check(health_pb2.HealthCheckRequest(service="no.Such"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        # Reflection: a client with no .proto files finds the services and calls one.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName(SERVICE)
        assert {m.name for m in service.methods} >= {
            "ModelInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex",
            "RepositoryModelLoad", "RepositoryModelUnload"}
        method = service.methods_by_name["ServerMetadata"]
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        metadata = channel.unary_unary(
            f"/{SERVICE}/ServerMetadata", request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString)(
                request_type(), metadata=(("authorization", f"Bearer {token.read_text()}"),))
        assert metadata.name == "edgefleet"
        assert {"model_repository", "statistics", "model_configuration"} <= set(
            metadata.extensions)
        assert pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]


def test_a_stopping_runtime_says_not_serving(start_edge: StartEdge, repository: Path) -> None:
    edge = start_edge(repository)
    with grpc.insecure_channel(edge.grpc_url) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        edge.process.terminate()  # SIGTERM: the runtime drains, health turns away first
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
