"""Retraining (EdgeModel spec.retraining), the policy: when a Job is due, the Job the
operator creates, and what a Job's output must be to become a candidate. Plain functions;
retrainer.py does the I/O.

Exactly one Job per threshold crossed, across restarts: Job number N is created only
while status.retraining.jobs is N-1, and is named after N, so an operator that created
it and crashed before writing the count finds it (AlreadyExists) and adopts it.

Trust: a tenant who may write EdgeModels must not get, through the operator's rights, a
pod it could not create itself. So Jobs are created only in the namespaces the cluster
admin allows, the template's schema holds only what a trainer needs (image, command,
args, env, resources), and the operator sets what a pod may do: the admin's service
account, no API token, non-root, no privilege escalation, no capabilities, the
RuntimeDefault seccomp profile and a read-only root file system (a pod the PodSecurity
`restricted` level admits). The output is hostile too: bounded, its digest checked and
its evaluation parsed before it is a candidate.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.operator.resources import (
    API_VERSION,
    GROUP,
    SHA256_PATTERN,
    ArtifactSource,
    JobTemplate,
    Retraining,
    RetrainingCandidate,
    RetrainingStatus,
)

MAX_JOB_NAME = 63  # Jobs label their pods with their name: a label value
MAX_VERSION = 64
MAX_EVALUATION_BYTES = 64 << 10
MAX_DIGEST_FILE_BYTES = 256
MODEL_FILE, DIGEST_FILE, EVALUATION_FILE = "model.onnx", "model.sha256", "evaluation.json"
MODEL_LABEL = f"{GROUP}/model"
JOB_NUMBER_ANNOTATION = f"{GROUP}/retraining-job"
RETRAIN_SUFFIX = re.compile(r"-retrain\.\d+$")


class CandidateError(ValueError):
    """A Job's output that is not a candidate; the message says what is wrong."""


def allowed(namespaces: list[str], namespace: str) -> bool:
    """Whether the cluster admin lets EdgeModels in `namespace` have Jobs created."""
    return "*" in namespaces or namespace in namespaces


def due(spec: Retraining, status: RetrainingStatus, labelled: int) -> bool:
    """A new Job is due: none runs, and the dataset holds minNewLabelledSamples labels
    more than when the last was created."""
    return (status.phase != "Running"
            and labelled - status.labelled_at_last_job >= spec.min_new_labelled_samples)


def job_name(model: str, number: int) -> str:
    """`<model>-retrain-<n>`; a long model name is cut and told apart by its hash."""
    name = f"{model}-retrain-{number}"
    if len(name) <= MAX_JOB_NAME:
        return name
    tail = f"-{hashlib.sha256(model.encode()).hexdigest()[:8]}-retrain-{number}"
    return model[:MAX_JOB_NAME - len(tail)].rstrip("-.") + tail


def output_key(namespace: str, model: str, number: int) -> str:
    """Where Job `number` writes its output in the dataset (a key prefix)."""
    return f"{namespace}/{model}/_retraining/{number}/"


def candidate_uri(model: str, number: int) -> str:
    """The spec.source.uri that names Job `number`'s model (resources.DATASET_SOURCE)."""
    return f"dataset:{model}/_retraining/{number}/{MODEL_FILE}"


def candidate_version(base: str, number: int) -> str:
    """`<base>-retrain.<n>`, the base without an earlier retraining suffix."""
    suffix = f"-retrain.{number}"
    return RETRAIN_SUFFIX.sub("", base)[:MAX_VERSION - len(suffix)] + suffix


@dataclass(frozen=True)
class JobContext:
    """What the operator puts into a Job beside the template."""

    namespace: str
    model: str
    model_uid: str
    number: int
    base_version: str
    dataset: str  # where the model's samples are, as the store names it
    output: str  # where the Job writes, as the store names it
    service_account: str
    s3_endpoint: str = ""
    s3_region: str = ""


RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True, "runAsNonRoot": True}


def job_manifest(template: JobTemplate, context: JobContext) -> dict[str, Any]:
    """The batch/v1 Job: the template's fields, the operator's environment and limits."""
    job = template.spec
    container = job.template.spec.containers[0]
    env = [{"name": name, "value": value} for name, value in (
        ("EDGEFLEET_DATASET", context.dataset), ("EDGEFLEET_MODEL", context.model),
        ("EDGEFLEET_NAMESPACE", context.namespace),
        ("EDGEFLEET_BASE_VERSION", context.base_version),
        ("EDGEFLEET_OUTPUT", context.output), ("EDGEFLEET_S3_ENDPOINT", context.s3_endpoint),
        ("EDGEFLEET_S3_REGION", context.s3_region)) if value]
    env += [variable.model_dump(by_alias=True, exclude_none=True) for variable in container.env]
    spec_container: dict[str, Any] = {
        **container.model_dump(by_alias=True, exclude_none=True, exclude={"env"}),
        "env": env,
        "securityContext": RESTRICTED_CONTAINER,
        # The root file system is read-only; trainers write temporary files here.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    labels = {"app.kubernetes.io/managed-by": "edgefleet-operator",
              "app.kubernetes.io/component": "retraining"}
    if len(context.model) <= 63:  # a label value; the owner reference names it anyway
        labels[MODEL_LABEL] = context.model
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": context.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": RESTRICTED_POD,
        "containers": [spec_container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if job.template.spec.node_selector:
        pod_spec["nodeSelector"] = dict(job.template.spec.node_selector)
    spec: dict[str, Any] = {
        "backoffLimit": job.backoff_limit,
        "activeDeadlineSeconds": job.active_deadline_seconds,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if job.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = job.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(context.model, context.number),
            "namespace": context.namespace,
            "labels": labels,
            "annotations": {JOB_NUMBER_ANNOTATION: str(context.number)},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "EdgeModel",
                                 "name": context.model, "uid": context.model_uid,
                                 "controller": True, "blockOwnerDeletion": False}],
        },
        "spec": spec,
    }


def owned_by(job: dict[str, Any], model_uid: str) -> bool:
    """Whether an existing Job is the model's (created by the operator for it), so that
    it may be adopted: a Job a tenant made under that name is not."""
    references = (job.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == model_uid and ref.get("controller") for ref in references)


def job_outcome(job: dict[str, Any]) -> tuple[str, str] | None:
    """("Failed", why) or ("Complete", "") once the Job's controller says so."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or "Failed"
            return "Failed", f"{reason}: {str(condition.get('message') or '')[:512]}"
        if condition.get("type") == "Complete":
            return "Complete", ""
    return None


class Evaluation(BaseModel):
    """evaluation.json, as a trainer writes it: how the new model scored on held-out
    labelled data, and how the base version scored on the same rows."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    metric: str = Field(max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9]*$")
    value: float
    samples: int = Field(ge=0)
    base_value: float | None = Field(default=None, alias="baseValue")

    @field_validator("value", "base_value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def read_digest(data: bytes | None) -> str:
    """model.sha256: 64 hex digits (optionally followed by a file name, as sha256sum
    writes)."""
    if data is None:
        raise CandidateError(f"the output has {EVALUATION_FILE} but no {DIGEST_FILE}")
    if len(data) > MAX_DIGEST_FILE_BYTES:
        raise CandidateError(f"{DIGEST_FILE} is {len(data)} bytes; at most "
                             f"{MAX_DIGEST_FILE_BYTES}")
    words = data.decode("ascii", "replace").split()
    if not words or not re.fullmatch(SHA256_PATTERN, words[0]):
        raise CandidateError(f"{DIGEST_FILE} does not start with 64 hex digits")
    return words[0].lower()


def read_evaluation(data: bytes) -> Evaluation:
    if len(data) > MAX_EVALUATION_BYTES:
        raise CandidateError(f"{EVALUATION_FILE} is {len(data)} bytes; at most "
                             f"{MAX_EVALUATION_BYTES}")
    try:
        return Evaluation.model_validate_json(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
                             for e in error.errors()[:4])
        raise CandidateError(f"{EVALUATION_FILE}: {problems}") from None


def candidate(model: str, number: int, base_version: str, sha256: str,
              evaluation: Evaluation, found_at: datetime) -> RetrainingCandidate:
    return RetrainingCandidate(
        version=candidate_version(base_version, number),
        source=ArtifactSource(uri=candidate_uri(model, number), sha256=sha256),
        job=job_name(model, number), metric=evaluation.metric, value=evaluation.value,
        base_value=evaluation.base_value, samples=evaluation.samples, found_at=found_at)


def promotion(found: RetrainingCandidate) -> dict[str, Any]:
    """The merge patch that makes the candidate the spec's version (and drops a signature
    of the version before: the operator verified the candidate itself)."""
    return {"spec": {"version": found.version,
                     "source": {"uri": found.source.uri, "sha256": found.source.sha256,
                                "signature": None, "publicKeyRef": None}}}


@dataclass(frozen=True)
class Settled:
    """What becomes of a candidate."""

    message: str
    promotion: dict[str, Any] | None  # the spec patch that rolls it out, if it rolls out
    worse: bool  # its own evaluation scores it below the version that served the samples


def settle(namespace: str, model: str, rollout: str, found: RetrainingCandidate) -> Settled:
    """A candidate rolls out (rollout Canary) unless its own evaluation scores it below the
    version that served the same samples; otherwise it waits for a person."""
    scored = f"{found.metric} {found.value:.4g} on {found.samples} held-out samples"
    worse = found.base_value is not None and found.value < found.base_value
    if found.base_value is not None:
        scored += (f", {'below' if worse else 'against'} {found.base_value:.4g} for the "
                   "version that served them")
    if rollout == "Canary" and not worse:
        return Settled(f"candidate {found.version} is rolling out: {scored}",
                       promotion(found), worse)
    return Settled(f"candidate {found.version} waits for a person ({scored}); to roll it "
                   f"out: {promote_command(namespace, model, found)}", None, worse)


def promote_command(namespace: str, model: str, found: RetrainingCandidate) -> str:
    """The kubectl command a person runs to roll a Manual candidate out."""
    patch = json.dumps(promotion(found), separators=(",", ":"))
    return f"kubectl -n {namespace} patch edgemodel {model} --type merge -p '{patch}'"
