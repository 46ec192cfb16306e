"""Data from the field, end to end: a real control plane, the operator and
`edgefleet-edge run` processes. Devices keep the requests an EdgeModel's
spec.dataCollection asks for and upload them to the operator's dataset (a directory
here), take feedback over REST and gRPC, and report field accuracy, which reaches
status and judges canaries.

The model is `scaled` (y = k x over 4 values): its class is the argmax of y, so with
k > 0 it is the argmax of x, the truth the tests label with; k < 0 gets it wrong."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import testmodels

from edgefleet.edge_runtime.capture import decode_record
from edgefleet.protocol.edgefleet.v1 import feedback_pb2
from tests.conftest import EdgeProcess, Fleet, Kube, StartOperator, stop_edge
from tests.helpers import Senders, eventually
from tests.integration.test_edge_cloud_link import edge_model, publish
from tests.integration.test_inference import http_post
from tests.integration.test_operator import status_of, wait_status
from tests.integration.test_rollouts import roll_out

pytestmark = pytest.mark.integration


def infer(edge: EdgeProcess, x: np.ndarray, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                        "data": x.tolist()}]}
    if request_id is not None:
        body["id"] = request_id
    status, answer = http_post(edge, "/v2/models/digits/infer", json.dumps(body).encode())
    assert status == 200, answer
    return answer


def feedback(edge: EdgeProcess, request_id: str, label: Any) -> tuple[int, dict[str, Any]]:
    return http_post(edge, "/v2/models/digits/feedback",
                     json.dumps({"id": request_id, "label": label}).encode())


def on_device(fleet: Fleet, device: str) -> list[dict[str, Any]]:
    """The metadata of every record the device holds for upload, oldest first."""
    folder = fleet.root / f"{device}-data" / "capture" / "digits"
    return [meta for path in sorted(folder.glob("*.npz"))
            for meta, _ in decode_record(path.read_bytes())]


def in_dataset(fleet: Fleet, model: str = "digits") -> list[dict[str, Any]]:
    """Every entry of the model in the operator's dataset, in the order the device kept
    them, each shard read back with numpy as a data tool would."""
    found = []
    for manifest in sorted((fleet.root / "dataset" / fleet.namespace / model).glob(
            "*/*/*.json")):
        if manifest.parent.parent.name == "_devices":
            continue
        document = json.loads(manifest.read_text())
        with np.load(manifest.with_suffix(".npz")) as shard:
            for entry in document["entries"]:
                meta = json.loads(str(shard[f"{entry['sequence']:012d}/{entry['index']}/meta"]))
                assert meta | {"sequence": entry["sequence"], "index": entry["index"]} == entry
                found.append({**entry, "device": document["device"]})
    return sorted(found, key=lambda e: (e["device"], e["sequence"], e["index"]))


def collecting(fleet: Fleet, policy: dict[str, Any], *edge_flags: str,
               factor: float = 1.0) -> EdgeProcess:
    """Device cam-1 at plant-7 serving EdgeModel digits (y = factor * x) with `policy` as
    its spec.dataCollection, Healthy."""
    fleet.add_device("cam-1", site="plant-7")
    edge = fleet.start("cam-1", *edge_flags)
    uri, sha = publish(fleet.root, testmodels.scaled(factor))
    model = edge_model("digits", "1", uri, sha, site="plant-7")
    model["spec"]["dataCollection"] = policy
    fleet.kube.create("edgemodels", fleet.namespace, model)
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits", {"phase": "Healthy"},
                timeout=60)
    return edge


def one_hot(i: int) -> np.ndarray:
    x = np.zeros(4, dtype=np.float32)
    x[i % 4] = 10.0  # top class probability ~0.99998: confident
    return x


def test_devices_keep_what_the_policy_asks_and_feedback_reaches_status(fleet: Fleet) -> None:
    edge = collecting(fleet, {"lowConfidenceBelow": 0.5, "includeOutputs": True})

    # Confident answers are not kept; unsure ones (all four classes alike) are. A request
    # without an id gets one; one with an id gets it back.
    sure = [infer(edge, one_hot(i))["id"] for i in range(6)]
    unsure = [infer(edge, np.ones(4, np.float32), f"unsure-{i}")["id"] for i in range(3)]
    assert unsure == ["unsure-0", "unsure-1", "unsure-2"] and len(set(sure)) == 6
    samples = eventually(lambda: len(found := in_dataset(fleet)) == 3 and found,
                         what="three samples in the dataset")
    assert [(s["kind"], s["id"], s["reason"], s["version"]) for s in samples] == [
        ("sample", f"unsure-{i}", "lowConfidence", "1") for i in range(3)]
    eventually(lambda: on_device(fleet, "cam-1") == [], what="the device forgetting them")

    # Feedback over REST and gRPC: right for four, wrong for one; each taken once.
    for i, request_id in enumerate(sure[:3]):
        assert feedback(edge, request_id, i % 4)[0] == 200
    status, taken = feedback(edge, sure[3], 0)  # its class was 3
    assert status == 200 and (taken["labelled"], taken["correct"]) == (1, 0)
    with grpc.insecure_channel(edge.grpc_url) as channel:
        call = channel.unary_unary(
            "/edgefleet.v1.InferenceFeedback/Feedback",
            request_serializer=feedback_pb2.FeedbackRequest.SerializeToString,
            response_deserializer=feedback_pb2.FeedbackResponse.FromString)
        reply = call(feedback_pb2.FeedbackRequest(model_name="digits", id="unsure-0",
                                                  labels=["0"]))
        assert (reply.model_version, reply.labelled, reply.correct) == ("1", 1, 1)
        with pytest.raises(grpc.RpcError) as again:
            call(feedback_pb2.FeedbackRequest(model_name="digits", id="unsure-0",
                                              labels=["0"]))
        assert again.value.code() == grpc.StatusCode.NOT_FOUND
    status, refused = feedback(edge, sure[0], 0)
    assert status == 404 and "taken already" in refused["error"]
    assert feedback(edge, "never-sent", 0)[0] == 404

    # Heartbeats may carry the counts while the feedback above came in: wait for all five.
    inference = eventually(
        lambda: [v for v in status_of(fleet.kube, "edgemodels", fleet.namespace,
                                      "digits").get("inference", [])
                 if v.get("labelled") == 5],
        what="field accuracy of five labels in the EdgeModel's status")
    assert [(v["version"], v["devices"], v["labelled"], v["accuracy"]) for v in inference] == [
        ("1", 1, 5, pytest.approx(0.8))]
    device = status_of(fleet.kube, "edgedevices", fleet.namespace, "cam-1")["inference"]
    assert [(v["labelled"], v["correct"]) for v in device] == [(5, 4)]
    metrics = edge.metrics()
    assert ('edgefleet_feedback_answers_total{model="digits",outcome="correct",version="1"} 4.0'
            in metrics)
    assert 'edgefleet_capture_samples_total{model="digits",reason="lowConfidence"} 3.0' in metrics
    # Five labels join the three samples in the dataset, in the order they came.
    labels = eventually(lambda: len(found := [r for r in in_dataset(fleet)
                                              if r["kind"] == "label"]) == 5 and found,
                        what="five labels in the dataset")
    assert [(r["id"], r["labels"]) for r in labels] == [
        (sure[0], ["0"]), (sure[1], ["1"]), (sure[2], ["2"]), (sure[3], ["0"]),
        ("unsure-0", ["0"])]
    data = eventually(lambda: (d := status_of(fleet.kube, "edgemodels", fleet.namespace,
                                              "digits").get("data")) and d["labelled"] == 5
                      and d, what="the dataset's counts in the EdgeModel's status")
    assert (data["samples"], data["devices"], data["bytes"] > 0) == (3, 1, True)
    (uploaded,) = status_of(fleet.kube, "edgedevices", fleet.namespace, "cam-1")["data"]
    assert (uploaded["model"], uploaded["samples"], uploaded["labelled"]) == ("digits", 3, 5)

    # A new policy reaches the device: now every request is kept.
    fleet.kube.patch("edgemodels", fleet.namespace, "digits",
                     {"spec": {"dataCollection": {"sampleRate": 1.0}}})

    def sampling_all() -> bool:
        infer(edge, one_hot(0))
        return any(r.get("reason") == "sampled" for r in in_dataset(fleet))
    eventually(sampling_all, what="a confident request kept by the new sample rate")
    # The remembered answers are gone with the process; nothing stored is.
    stop_edge(edge)
    edge = fleet.start("cam-1")
    eventually(edge.is_ready, what="the device serving again")
    assert feedback(edge, sure[4], 0)[0] == 404


def test_uploads_lose_and_repeat_nothing_across_a_cut_link_and_restarts(
        fleet: Fleet) -> None:
    # Slow uploads (8 KiB/s, each record ~1 KiB): the cut comes in the middle of them.
    edge = collecting(fleet, {"sampleRate": 1.0}, "--upload-bytes-per-second", "8192")
    ids = [infer(edge, one_hot(i), f"r{i}")["id"] for i in range(120)]
    eventually(lambda: len(in_dataset(fleet)) >= 10, what="the first records uploaded")
    fleet.restart_operator()  # the gateway dies mid-upload, acknowledgements in flight
    stop_edge(edge)  # and the device restarts while the link is down
    edge = fleet.start("cam-1", "--upload-bytes-per-second", "8192")
    eventually(edge.is_ready, what="the device serving its last-known-good model")
    ids += [infer(edge, one_hot(i), f"r{i}")["id"] for i in range(120, 125)]
    stored = eventually(lambda: len(found := in_dataset(fleet)) >= len(ids) and found,
                        timeout=60, what="every record in the dataset")
    assert sorted(r["id"] for r in stored) == sorted(ids)  # each once
    eventually(lambda: on_device(fleet, "cam-1") == [], what="the device forgetting them")


class LabelledTraffic(Senders):
    """Requests with random inputs to each device over REST, each followed by feedback
    with its true class (the argmax of x): counts answers per version."""

    def __init__(self, edges: list[EdgeProcess]) -> None:
        super().__init__(edges)
        self.answered: dict[str, int] = {}

    def _send(self, edge: EdgeProcess) -> None:
        rng = np.random.default_rng(edge.grpc_port)
        while not self._stop.wait(0.01):
            x = rng.normal(size=4).astype(np.float32)
            try:
                answer = infer(edge, x)
            except (AssertionError, OSError):  # a device switching versions
                continue
            feedback(edge, answer["id"], int(x.argmax()))
            with self._lock:
                version = answer["model_version"]
                self.answered[version] = self.answered.get(version, 0) + 1


def test_a_canary_less_accurate_on_labelled_field_data_is_rolled_back(
        fleet: Fleet, tmp_path: Path) -> None:
    devices = ["cam-0", "cam-1", "cam-2"]
    for name in devices:
        fleet.add_device(name, site="plant-7")
        fleet.start(name)
    uri, sha = publish(fleet.root, testmodels.scaled(1.0))
    model = edge_model("digits", "1", uri, sha, site="plant-7")
    model["spec"]["dataCollection"] = {}  # feedback only: no samples kept
    fleet.kube.create("edgemodels", fleet.namespace, model)
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                {"phase": "Healthy", "readySummary": "3/3"}, timeout=90)
    analysis = {"minRequests": 10, "maxErrorRate": 0.5, "minLabelled": 20,
                "maxAccuracyDrop": 0.1}
    with LabelledTraffic([fleet.edges[name] for name in devices]) as traffic:
        eventually(lambda: any(v.get("labelled", 0) >= 40 for v in status_of(
            fleet.kube, "edgemodels", fleet.namespace, "digits").get("inference", [])),
            timeout=60, what="the stable version's labelled answers in status")
        roll_out(fleet, testmodels.scaled(-1.0), {
            "strategy": "Canary", "maxUnavailable": "100%", "analysis": analysis,
            "steps": [{"percent": 34}, {"percent": 100}]})
        status = wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits",
                             {"phase": "RolledBack"}, timeout=120)
    assert traffic.answered.get("2", 0) >= 20
    verdict = status["rollout"]["analysis"]
    print(f"\nless accurate canary: {verdict['message']}")
    assert verdict["verdict"] == "Fail" and verdict["labelled"] >= 20
    assert verdict["accuracy"] < 0.5 and verdict["stableAccuracy"] == 1.0
    assert "field accuracy drop above the threshold" in verdict["message"]
    assert "(max drop 0.1)" in verdict["message"]


def test_samples_past_retention_leave_the_dataset(kube: Kube, namespace: str,
                                                  start_operator: StartOperator,
                                                  tmp_path: Path) -> None:
    shard = tmp_path / "dataset" / namespace / "digits" / "1" / "cam-1" / "000000000001"
    shard.parent.mkdir(parents=True)
    for path in (shard.with_suffix(".npz"), shard.with_suffix(".json")):
        path.write_bytes(b"{}")
        os.utime(path, (time.time() - 3 * 86400,) * 2)  # three days old
    fresh = shard.with_name("000000000002.npz")
    fresh.write_bytes(b"{}")
    start_operator("--dataset-expiry-seconds", "1")
    uri, sha = publish(tmp_path, testmodels.scaled(1.0))
    model = edge_model("digits", "1", uri, sha, site="plant-7")
    model["spec"]["dataCollection"] = {"retentionDays": 2}
    kube.create("edgemodels", namespace, model)
    eventually(lambda: not shard.with_suffix(".npz").exists(), what="the old shard deleted")
    assert not shard.with_suffix(".json").exists() and fresh.exists()
