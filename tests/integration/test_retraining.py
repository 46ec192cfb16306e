"""Retraining, end to end: a real control plane, the operator and an `edgefleet-edge run`
process. Labelled samples reach the dataset; past spec.retraining's threshold the
operator creates exactly one Job (also across a crash between creating it and saying
so); the Job's command (`edgefleet-retrain`, run here: the control plane has no kubelet)
writes a model that becomes the next version and rolls out; an output that does not
match its digest is refused. Jobs are created only where the cluster admin allows, and
run as the pod the operator decides, whatever the template asks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from tests.conftest import EdgeProcess, Fleet
from tests.helpers import eventually
from tests.integration.test_field_data import collecting, feedback, infer
from tests.integration.test_operator import status_of

pytestmark = pytest.mark.integration

RETRAINING = {
    "minNewLabelledSamples": 40,
    "rollout": "Canary",
    "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": {
        # Fields the schema does not hold: the API server drops them, and the operator
        # would not copy them into the Job.
        "serviceAccountName": "default", "hostNetwork": True,
        "containers": [{
            "image": "registry.example/edgefleet-retrain:0.1.0",
            "command": ["edgefleet-retrain"], "args": ["--hidden-units", "16"],
            "securityContext": {"privileged": True},
            "env": [{"name": "PYTHONHASHSEED", "value": "0"}],
        }]}}}},
}


def label_requests(edge: EdgeProcess, count: int, start: int) -> None:
    """`count` requests answered and labelled with their true class (the argmax)."""
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        x = rng.random(4, dtype=np.float32)
        request_id = infer(edge, x, f"req-{i}")["id"]
        status, answer = feedback(edge, request_id, int(np.argmax(x)))
        assert status == 200, answer


def retraining_status(fleet: Fleet) -> dict[str, Any]:
    return status_of(fleet.kube, "edgemodels", fleet.namespace, "digits").get("retraining", {})


def jobs(fleet: Fleet) -> list[client.V1Job]:
    batch = client.BatchV1Api(fleet.kube.core.api_client)
    return batch.list_namespaced_job(fleet.namespace).items


def run_job(job: client.V1Job) -> subprocess.CompletedProcess[str]:
    """What the Job's pod would run: its command, arguments and environment."""
    (container,) = job.spec.template.spec.containers
    env = {**os.environ, **{item.name: item.value for item in container.env}}
    command = [str(Path(sys.executable).parent / container.command[0]),
               *container.command[1:], *container.args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_labelled_field_data_trains_a_version_that_rolls_out(fleet: Fleet) -> None:
    # y = -x: its class (the argmax) is always wrong, which the field's labels show.
    edge = collecting(fleet, {"sampleRate": 1}, factor=-1.0)
    fleet.kube.patch("edgemodels", fleet.namespace, "digits", {"spec": {
        "retraining": RETRAINING,
        "rollout": {"strategy": "Canary", "steps": [{"percent": 100}]}}})

    # Not in a namespace the admin allows: no Job, and status says why.
    refused = eventually(lambda: "not allowed" in (s := retraining_status(fleet)).get(
        "message", "") and s, what="status.retraining saying Jobs are not allowed")
    assert "jobs" not in refused or refused["jobs"] == 0
    allow = ("--retraining-namespaces", fleet.namespace, "--retraining-poll-seconds", "0.5")
    fleet.restart_operator(*allow)

    label_requests(edge, 48, start=0)
    running = eventually(lambda: (s := retraining_status(fleet)).get("phase") == "Running"
                         and s, timeout=60, what="the first retraining Job")
    assert (running["jobs"], running["job"], running["baseVersion"]) == (
        1, "digits-retrain-1", "1")
    assert running["labelledAtLastJob"] >= 40
    (job,) = jobs(fleet)
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert pod.service_account_name == "edgefleet-retrain" and not pod.host_network
    assert pod.automount_service_account_token is False
    assert container.security_context.privileged is None
    assert container.security_context.allow_privilege_escalation is False
    assert job.metadata.owner_references[0].uid == fleet.kube.get(
        "edgemodels", fleet.namespace, "digits")["metadata"]["uid"]
    env = {item.name: item.value for item in container.env}
    dataset = fleet.root / "dataset" / fleet.namespace / "digits"
    assert env["EDGEFLEET_DATASET"] == f"{dataset}/"
    assert env["EDGEFLEET_OUTPUT"] == f"{dataset}/_retraining/1/"
    assert (env["EDGEFLEET_MODEL"], env["EDGEFLEET_BASE_VERSION"]) == ("digits", "1")

    # A crash after creating the Job and before the count was written: the next
    # operator finds the Job under the same name and adopts it; still one Job.
    fleet.operator.kill()
    fleet.kube.custom.patch_namespaced_custom_object_status(
        "edgefleet.io", "v1alpha1", fleet.namespace, "edgemodels", "digits",
        [{"op": "replace", "path": "/status/retraining", "value": {"jobs": 0}}],
        _content_type="application/json-patch+json")
    fleet.restart_operator(*allow)
    eventually(lambda: retraining_status(fleet).get("jobs") == 1, timeout=60,
               what="the Job adopted after the restart")
    assert [j.metadata.uid for j in jobs(fleet)] == [job.metadata.uid]

    trained = run_job(job)
    assert trained.returncode == 0, trained.stderr
    done = eventually(lambda: (s := retraining_status(fleet)).get("phase") == "Succeeded"
                      and s, timeout=60, what="the Job's output as a candidate")
    candidate = done["candidate"]
    print(f"\nretraining: {done['message']}")
    assert candidate["version"] == "1-retrain.1" and candidate["job"] == "digits-retrain-1"
    assert candidate["source"]["uri"] == "dataset:digits/_retraining/1/model.onnx"
    assert candidate["metric"] == "accuracy" and candidate["samples"] >= 10
    assert candidate["value"] > candidate["baseValue"] == 0.0
    spec = fleet.kube.get("edgemodels", fleet.namespace, "digits")["spec"]
    assert (spec["version"], spec["source"]) == (candidate["version"], candidate["source"])
    eventually(lambda: status_of(fleet.kube, "edgemodels", fleet.namespace, "digits").get(
        "stableVersion") == "1-retrain.1", timeout=90, what="the candidate rolled out")
    answer = infer(edge, np.array([0, 0, 1, 0], np.float32))
    assert answer["model_version"] == "1-retrain.1"
    assert {output["name"] for output in answer["outputs"]} == {"label", "probabilities"}
    events = {event.reason for event in fleet.kube.events(fleet.namespace, "digits")}
    assert {"RetrainingNotAllowed", "RetrainingJobCreated", "RetrainingCandidate"} <= events

    # The next Job's output claims a digest its model does not have: refused, and the
    # spec stays on the version before.
    label_requests(edge, 48, start=1000)
    eventually(lambda: retraining_status(fleet).get("job") == "digits-retrain-2", timeout=60,
               what="the second retraining Job")
    output = dataset / "_retraining" / "2"
    output.mkdir(parents=True)
    (output / "model.onnx").write_bytes(b"not the model that was evaluated")
    (output / "model.sha256").write_text("ab" * 32 + "  model.onnx\n")
    (output / "evaluation.json").write_text(json.dumps(
        {"metric": "accuracy", "value": 1.0, "samples": 12}))
    failed = eventually(lambda: (s := retraining_status(fleet)).get("phase") == "Failed"
                        and s, timeout=60, what="the second output refused")
    assert "model.onnx does not match model.sha256" in failed["message"]
    assert failed["candidate"]["version"] == "1-retrain.1"
    assert fleet.kube.get("edgemodels", fleet.namespace, "digits")["spec"]["version"] == (
        "1-retrain.1")
