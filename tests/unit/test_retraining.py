"""Retraining's policy (operator/retraining.py), the dataset: artifact source, and the
trainer on a real dataset directory (real files, real scikit-learn and ONNX Runtime)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from pydantic import ValidationError

from edgefleet.edge_runtime.capture import encode_record
from edgefleet.operator import retraining
from edgefleet.operator.artifact_sources import ArtifactError, SourcePolicy, read_source
from edgefleet.operator.dataset import DatasetError, DatasetWriter, DirectoryStore, read_record
from edgefleet.operator.resources import JobTemplate, Retraining, RetrainingStatus
from edgefleet.trainer.retrain import read_field_data, train, write_output

TEMPLATE = {"spec": {"template": {"spec": {"containers": [{
    "image": "registry.example/retrain:1", "command": ["edgefleet-retrain"],
    "env": [{"name": "HIDDEN_UNITS", "value": "64"}]}]}}}}


def policy(minimum: int = 10, **fields: Any) -> Retraining:
    return Retraining.model_validate({"minNewLabelledSamples": minimum,
                                      "jobTemplate": TEMPLATE, **fields})


def context(**fields: Any) -> retraining.JobContext:
    return retraining.JobContext(**{
        "namespace": "fleet", "model": "digits", "model_uid": "uid-1", "number": 3,
        "base_version": "1.2.0", "dataset": "/data/fleet/digits/",
        "output": "/data/fleet/digits/_retraining/3/", "service_account": "edgefleet-retrain",
        **fields})


def test_a_job_is_due_per_threshold_crossed_and_never_beside_a_running_one() -> None:
    spec = policy(10)
    assert not retraining.due(spec, RetrainingStatus(), 9)
    assert retraining.due(spec, RetrainingStatus(), 10)
    after = RetrainingStatus(jobs=1, phase="Succeeded", labelled_at_last_job=10)
    assert not retraining.due(spec, after, 19) and retraining.due(spec, after, 20)
    running = RetrainingStatus(jobs=1, phase="Running", labelled_at_last_job=10)
    assert not retraining.due(spec, running, 1000)


def test_job_names_are_labels_and_tell_long_model_names_apart() -> None:
    assert retraining.job_name("digits", 3) == "digits-retrain-3"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    names = {retraining.job_name(model, 12) for model in (long_a, long_b)}
    assert len(names) == 2 and all(len(name) <= 63 for name in names)


def test_candidate_versions_replace_an_earlier_retraining_suffix() -> None:
    assert retraining.candidate_version("1.2.0", 3) == "1.2.0-retrain.3"
    assert retraining.candidate_version("1.2.0-retrain.3", 4) == "1.2.0-retrain.4"
    assert len(retraining.candidate_version("v" * 64, 123456789)) == 64


def test_the_job_runs_restricted_as_the_admins_service_account() -> None:
    job = retraining.job_manifest(policy().job_template, context())
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["name"] == "digits-retrain-3"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pod["serviceAccountName"] == "edgefleet-retrain"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env == {"EDGEFLEET_DATASET": "/data/fleet/digits/", "EDGEFLEET_MODEL": "digits",
                   "EDGEFLEET_NAMESPACE": "fleet", "EDGEFLEET_BASE_VERSION": "1.2.0",
                   "EDGEFLEET_OUTPUT": "/data/fleet/digits/_retraining/3/",
                   "HIDDEN_UNITS": "64"}
    assert container["image"] == "registry.example/retrain:1"


@pytest.mark.parametrize("misuse", [
    {"serviceAccountName": "cluster-admin-sa"},
    {"hostNetwork": True},
    {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
    {"securityContext": {"runAsUser": 0}},
])
def test_a_template_cannot_choose_what_the_pod_may_do(misuse: dict[str, Any]) -> None:
    template = json.loads(json.dumps(TEMPLATE))
    template["spec"]["template"]["spec"].update(misuse)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        JobTemplate.model_validate(template)


@pytest.mark.parametrize("misuse", [
    {"securityContext": {"privileged": True}},
    {"volumeMounts": [{"name": "root", "mountPath": "/host"}]},
    {"env": [{"name": "EDGEFLEET_OUTPUT", "value": "s3://another-tenant/"}]},
])
def test_a_template_container_cannot_escalate_or_redirect_the_output(
        misuse: dict[str, Any]) -> None:
    template = json.loads(json.dumps(TEMPLATE))
    template["spec"]["template"]["spec"]["containers"][0].update(misuse)
    with pytest.raises(ValidationError):
        JobTemplate.model_validate(template)


def test_only_a_job_the_operator_created_for_the_model_is_adopted() -> None:
    ours = retraining.job_manifest(policy().job_template, context())
    assert retraining.owned_by(ours, "uid-1")
    assert not retraining.owned_by(ours, "uid-2")
    assert not retraining.owned_by({"metadata": {"name": "digits-retrain-3"}}, "uid-1")


def test_job_outcomes_are_read_from_its_conditions() -> None:
    assert retraining.job_outcome({"status": {}}) is None
    assert retraining.job_outcome({"status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}) == ("Complete", "")
    state, why = retraining.job_outcome({"status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit"}]}}) or ("", "")
    assert state == "Failed" and why.startswith("BackoffLimitExceeded: Job has reached")


@pytest.mark.parametrize(("document", "problem"), [
    (b'{"metric": "accuracy", "value": NaN, "samples": 3}', "value"),
    (b'{"metric": "acc uracy", "value": 0.9, "samples": 3}', "metric"),
    (b'{"metric": "accuracy", "value": 0.9, "samples": -1}', "samples"),
    (b"[]", "document"),
    (b"x" * (70 << 10), "at most"),
])
def test_an_evaluation_is_parsed_as_hostile(document: bytes, problem: str) -> None:
    with pytest.raises(retraining.CandidateError, match=problem):
        retraining.read_evaluation(document)


def test_a_digest_file_is_64_hex_digits_as_sha256sum_writes_it() -> None:
    assert retraining.read_digest(b"AB" * 32 + b"  model.onnx\n") == "ab" * 32
    for bad in (b"", b"zz" * 32, b"a" * 300, None):
        with pytest.raises(retraining.CandidateError):
            retraining.read_digest(bad)


def test_the_promote_command_is_the_patch_canary_applies() -> None:
    found = retraining.candidate("digits", 3, "1.2.0", "ab" * 32,
                                 retraining.Evaluation(metric="accuracy", value=0.9, samples=5),
                                 datetime.now(UTC))
    command = retraining.promote_command("fleet", "digits", found)
    patch = json.loads(command.split(" -p ", 1)[1].strip("'"))
    assert patch == retraining.promotion(found)
    assert patch["spec"]["source"]["uri"] == "dataset:digits/_retraining/3/model.onnx"


@pytest.mark.parametrize(("rollout", "value", "base", "rolls_out"), [
    ("Canary", 0.9, 0.5, True), ("Canary", 0.9, None, True), ("Canary", 0.4, 0.5, False),
    ("Manual", 0.9, 0.5, False)])
def test_a_candidate_rolls_out_only_on_canary_and_when_not_worse_than_its_base(
        rollout: str, value: float, base: float | None, rolls_out: bool) -> None:
    found = retraining.candidate("digits", 3, "1.2.0", "ab" * 32, retraining.Evaluation(
        metric="accuracy", value=value, samples=5, baseValue=base), datetime.now(UTC))
    settled = retraining.settle("fleet", "digits", rollout, found)
    assert (settled.promotion is not None) == rolls_out
    assert settled.worse == (base is not None and value < base)
    if not rolls_out:
        assert "waits for a person" in settled.message
        assert retraining.promote_command("fleet", "digits", found) in settled.message


# ---------------------------------------------------------------- dataset: sources


def read(uri: str, store: DirectoryStore, namespace: str) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in read_source(
            uri, SourcePolicy(dataset=store), None, namespace)])  # type: ignore[arg-type]
    return asyncio.run(collect())


def test_a_dataset_source_reads_only_the_models_own_namespace(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put("fleet/digits/_retraining/1/model.onnx", b"ours")
    store.put("other/digits/_retraining/1/model.onnx", b"theirs")
    assert read("dataset:digits/_retraining/1/model.onnx", store, "fleet") == b"ours"
    assert read("dataset:digits/_retraining/1/model.onnx", store, "other") == b"theirs"
    with pytest.raises(ArtifactError, match="not found"):
        read("dataset:digits/_retraining/2/model.onnx", store, "fleet")
    for escape in ("dataset:../other/digits/_retraining/1/model.onnx",
                   "dataset:digits/1.2.0/cam-1/000000000001.npz",
                   "dataset:digits/_retraining/1/../../_devices/cam-1.json"):
        with pytest.raises(ArtifactError) as refused:
            read(escape, store, "fleet")
        assert refused.value.reason == "SourceNotAllowed"


def test_a_symlink_planted_in_the_dataset_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "operator-key.pem"
    secret.write_bytes(b"PRIVATE")
    store = DirectoryStore(tmp_path / "dataset")
    output = tmp_path / "dataset" / "fleet" / "digits" / "_retraining" / "1"
    output.mkdir(parents=True)
    (output / "model.onnx").symlink_to(secret)
    (output / "evaluation.json").symlink_to(secret)
    with pytest.raises(ArtifactError) as refused:
        read("dataset:digits/_retraining/1/model.onnx", store, "fleet")
    assert "PRIVATE" not in refused.value.message
    with pytest.raises(DatasetError):
        store.get("fleet/digits/_retraining/1/evaluation.json")
    os.rename(output, tmp_path / "elsewhere")
    output.parent.joinpath("1").symlink_to(tmp_path, target_is_directory=True)
    assert store.get("fleet/digits/_retraining/1/operator-key.pem") is None


# ---------------------------------------------------------------- the trainer


def field_dataset(root: Path, rows: int) -> np.ndarray:
    """A dataset of `rows` labelled samples of 4 values whose class is their argmax, as
    devices upload them; returns the true classes."""
    rng = np.random.default_rng(1)
    inputs = rng.random((rows, 4), dtype=np.float32)
    records = []
    for i, row in enumerate(inputs):
        request = f"r{i}"
        records.append(encode_record([
            ({"kind": "sample", "id": request, "model": "digits", "version": "1",
              "timeMs": 1, "reason": "sampled", "inputs": ["x"], "datatypes": {"x": "FP32"}},
             {"input_0": row.reshape(1, 4)}),
            ({"kind": "label", "id": request, "model": "digits", "version": "1",
              "timeMs": 2, "labels": [str(int(np.argmax(row)))], "predictions": ["0"]}, {})]))
    writer = DatasetWriter(DirectoryStore(root))
    checked = [read_record(n + 1, data, "digits") for n, data in enumerate(records)]
    asyncio.run(writer.write("fleet", "cam-1", "digits", checked))
    return np.argmax(inputs, axis=1)


def test_the_trainer_joins_labels_to_samples_and_writes_a_model_onnx_runtime_runs(
        tmp_path: Path) -> None:
    truth = field_dataset(tmp_path / "dataset", 200)
    field = read_field_data(DirectoryStore(tmp_path / "dataset" / "fleet" / "digits"))
    assert (len(field.labels), field.input_name, field.unlabelled) == (200, "x", 0)
    assert sorted(field.labels.tolist()) == sorted(truth.tolist())
    with warnings.catch_warnings():  # 300 iterations are plenty here, converged or not
        warnings.simplefilter("ignore")
        trained = train(field, None, None, hidden_units=32, holdout=0.25, seed=0)
    output = DirectoryStore(tmp_path / "out")
    digest = write_output(output, trained)
    model = (tmp_path / "out" / "model.onnx").read_bytes()
    assert hashlib.sha256(model).hexdigest() == digest
    assert retraining.read_digest(output.get("model.sha256")) == digest
    evaluation = retraining.read_evaluation(output.get("evaluation.json") or b"")
    assert evaluation.samples == 50 and evaluation.value == trained.accuracy
    # The devices' version answered class 0 for every row: right about a quarter of them.
    assert evaluation.base_value is not None and evaluation.base_value < 0.5
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"x": np.eye(4, dtype=np.float32)})
    assert probabilities.shape == (4, 4) and labels.dtype == np.int64


def test_the_trainer_leaves_out_entries_no_runtime_writes(tmp_path: Path) -> None:
    field_dataset(tmp_path, 20)
    forged = tmp_path / "fleet" / "digits" / "1" / "cam-2"
    forged.mkdir(parents=True)
    np.savez(forged / "000000000001.npz", **{"000000000001/0/input_0": np.ones((2, 9))})
    (forged / "000000000001.json").write_text(json.dumps({"device": "cam-2", "entries": [
        {"kind": "sample", "sequence": 1, "index": 0},  # no id
        {"kind": "sample", "id": "a", "sequence": 1, "index": 5},  # no such array
        {"kind": "label", "id": "b", "labels": 7},  # labels not a list
        {"kind": "sample", "id": "c", "sequence": 1, "index": 0, "inputs": ["x"]},
        {"kind": "label", "id": "c", "labels": ["1", "2"], "predictions": ["9"]}]}))
    field = read_field_data(DirectoryStore(tmp_path / "fleet" / "digits"))
    assert field.malformed == 3
    # cam-2's sample has 9 values a row where the first sample had 4: left out.
    assert (len(field.labels), field.skipped_labels) == (20, 2)
