"""Per-device variants end to end: a real control plane, the operator building variants
in its worker processes, and `edgefleet-edge run` devices that each get the build they
fit, with its runtime settings, through a rollout and an operator restart."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import Fleet
from tests.helpers import Traffic, eventually
from tests.integration.test_edge_cloud_link import edge_model, publish, reported
from tests.integration.test_operator import status_of, wait_status

pytestmark = pytest.mark.integration

WIDTH, OUTPUTS = 16, 4


def linear(seed: int) -> tuple[bytes, np.ndarray]:
    """y = x W for a seeded W [16, 4]: int8 weights move its answers measurably, fp16
    ones hardly; and the model's bytes."""
    weights = np.random.default_rng(seed).normal(size=(WIDTH, OUTPUTS)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUTPUTS])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), weights


def validation_set(weights: np.ndarray) -> bytes:
    """Inputs and the source's own answers: the source scores a mean squared error of 0."""
    inputs = np.random.default_rng(7).normal(size=(200, WIDTH)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs, labels=inputs @ weights)
    return buffer.getvalue()


def answer(fleet: Fleet, device: str) -> np.ndarray:
    stock = triton_grpc.InferenceServerClient(fleet.edges[device].grpc_url)
    item = triton_grpc.InferInput("x", [1, WIDTH], "FP32")
    item.set_data_from_numpy(np.ones((1, WIDTH), dtype=np.float32))
    return stock.infer("linear", [item]).as_numpy("y")[0]


def held(fleet: Fleet, device: str) -> dict[str, Any]:
    models = reported(fleet.kube, fleet.namespace, device)
    return dict(models[0]) if len(models) == 1 else {}


def variants_of(fleet: Fleet, version: str) -> dict[str, dict[str, Any]]:
    status = status_of(fleet.kube, "edgemodels", fleet.namespace, "linear")
    return {v["name"]: v for v in status.get("variants", []) if v["version"] == version}


def condition(fleet: Fleet, kind: str) -> dict[str, Any]:
    status = status_of(fleet.kube, "edgemodels", fleet.namespace, "linear")
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def test_each_device_gets_the_variant_it_fits_through_a_rollout_and_a_restart(
    fleet: Fleet,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    devices = {"cam-small": {"tier": "small"}, "cam-big": {"tier": "big"}, "cam-plain": {}}
    for name, labels in devices.items():
        fleet.add_device(name, site="plant-7", **labels)
        fleet.start(name)
    source_1, weights_1 = linear(1)
    uri, sha = publish(fleet.root, source_1)
    dataset_uri, dataset_sha = publish(fleet.root, validation_set(weights_1))
    body = edge_model("linear", "1", uri, sha, site="plant-7")
    body["spec"].update({
        "variants": [
            # For small devices: int8 weights, and a provider no device here has.
            {"name": "int8", "selector": {"matchLabels": {"tier": "small"}},
             "optimize": {"quantization": "dynamicInt8"},
             "runtime": {"executionProviders": ["CUDAExecutionProvider"]}},
            {"name": "half", "selector": {"matchLabels": {"tier": "big"}},
             "capabilities": {"executionProviders": ["CPUExecutionProvider"]},
             "optimize": {"fp16": True}},
            # Fits no device here: built, and shipped to none.
            {"name": "arm", "capabilities": {"architectures": ["aarch64"]},
             "optimize": {"graphOptimizationLevel": "basic"}},
        ],
        "validation": {"dataset": {"uri": dataset_uri, "sha256": dataset_sha},
                       "metric": "meanSquaredError", "maxDrop": 0.5},
    })
    kube.create("edgemodels", namespace, body)
    wait_status(kube, "edgemodels", namespace, "linear",
                {"phase": "Healthy", "readySummary": "3/3"}, timeout=120)

    built = variants_of(fleet, "1")
    assert {name: v["phase"] for name, v in built.items()} == {
        "int8": "Ready", "half": "Ready", "arm": "Ready"}
    for entry in built.values():  # scored against the source on the dataset, and timed
        assert entry["digest"] != f"sha256:{sha}" and entry["bytes"] > 0, entry
        assert entry["sourceAccuracy"] < 1e-6 and 0.0 <= entry["accuracy"] <= 0.5, entry
        assert entry["latencyMs"] > 0 and entry["buildSeconds"] > 0, entry
    assert built["int8"]["accuracy"] > built["half"]["accuracy"]  # int8 moves answers more
    ready = condition(fleet, "VariantsReady")
    assert (ready["status"], ready["reason"]) == ("True", "AllVariantsReady"), ready

    small, big, plain = (held(fleet, name) for name in devices)
    assert (small["variant"], small["digest"]) == ("int8", built["int8"]["digest"])
    assert small["executionProviders"] == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider not available on this device" in small["message"]
    assert (big["variant"], big["digest"]) == ("half", built["half"]["digest"])
    assert "variant" not in plain and plain["digest"] == f"sha256:{sha}"
    exact = np.ones(WIDTH, dtype=np.float32) @ weights_1
    assert np.allclose(answer(fleet, "cam-plain"), exact, rtol=0, atol=1e-5)
    # int8 answers close, never as exactly
    assert not np.allclose(answer(fleet, "cam-small"), exact, rtol=0, atol=1e-5)
    assert np.allclose(answer(fleet, "cam-small"), exact, atol=0.2)

    # A new version rolls out with its own variants.
    source_2, weights_2 = linear(2)
    uri_2, sha_2 = publish(fleet.root, source_2)
    dataset_uri, dataset_sha = publish(fleet.root, validation_set(weights_2))
    kube.patch("edgemodels", namespace, "linear", {"spec": {
        "version": "2", "source": {"uri": uri_2, "sha256": sha_2},
        "validation": {"dataset": {"uri": dataset_uri, "sha256": dataset_sha}}}})
    wait_status(kube, "edgemodels", namespace, "linear",
                {"phase": "Healthy", "stableVersion": "2", "readySummary": "3/3"}, timeout=120)
    built_2 = variants_of(fleet, "2")
    assert variants_of(fleet, "1") == {}  # no device serves version 1 any more
    eventually(lambda: held(fleet, "cam-small").get("digest") == built_2["int8"]["digest"]
               and held(fleet, "cam-big").get("digest") == built_2["half"]["digest"]
               and held(fleet, "cam-plain").get("digest") == f"sha256:{sha_2}",
               timeout=30, what="each device on version 2's build for it")
    assert fleet.operator.metric("edgefleet_operator_variant_builds_total",
                                 outcome="built") == 6.0

    # A restarted operator finds every build in its cache: it builds nothing again.
    fleet.restart_operator()
    wait_status(kube, "edgemodels", namespace, "linear",
                {"phase": "Healthy", "readySummary": "3/3"}, timeout=60)
    assert fleet.operator.metric("edgefleet_operator_variant_builds_total",
                                 outcome="built") is None
    assert variants_of(fleet, "2") == built_2

    # A gateway replica with a cache of its own builds the variant it ships again, and
    # gets the same bytes: a device it serves takes that build.
    replica = fleet.start_gateway_replica("gateway-b")
    fleet.gateway_address = f"127.0.0.1:{replica.grpc_port}"
    fleet.enrolment_address = f"127.0.0.1:{replica.enrolment_port}"
    fleet.add_device("cam-late", site="plant-7", tier="small")
    fleet.start("cam-late")
    eventually(lambda: (held(fleet, "cam-late").get("digest"), held(fleet, "cam-late").get(
        "state")) == (built_2["int8"]["digest"], "Ready"), timeout=60,
        what="cam-late, served by the replica, on version 2's int8 build")
    # New to the fleet, it got its build first: it never fetched the source.
    fetched = re.search(r"^edgefleet_artifact_received_bytes_total (\S+)$",
                        fleet.edges["cam-late"].metrics(), re.MULTILINE)
    assert fetched and float(fetched.group(1)) == built_2["int8"]["bytes"]
    # It builds each variant the status ships (it cannot know which devices will come),
    # and each comes out as the controller's did.
    eventually(lambda: replica.metric("edgefleet_operator_variant_builds_total",
                                      outcome="built") == 3.0, timeout=30,
               what="the replica's three builds")
    assert "variant not served" not in replica.log()

    # A stricter bound withholds what scores worse, with its numbers: devices that
    # fit it go back to the source.
    # A device keeps answering while other bytes of its version replace the ones it had.
    with Traffic([fleet.edges["cam-small"].grpc_url], model="linear", width=WIDTH) as traffic:
        kube.patch("edgemodels", namespace, "linear",
                   {"spec": {"validation": {"maxDrop": 0.0}}})
        eventually(lambda: condition(fleet, "VariantsReady").get("reason") == "VariantWithheld",
                   timeout=30, what="VariantsReady False, VariantWithheld")
        eventually(lambda: held(fleet, "cam-small").get("digest") == f"sha256:{sha_2}"
                   and held(fleet, "cam-small").get("state") == "Ready",
                   timeout=30, what="cam-small back on the source")
    assert traffic.answered > 0 and traffic.failed == 0, (traffic.answered, traffic.failed)
    message = condition(fleet, "VariantsReady")["message"]
    assert f"int8 withheld: meanSquaredError {built_2['int8']['accuracy']:.4g}" in message
    assert "more than maxDrop 0" in message
    warnings = [e for e in kube.events(namespace, "linear") if e.reason == "VariantWithheld"]
    assert warnings and warnings[0].type == "Warning"
