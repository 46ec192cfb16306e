"""Retraining (EdgeModel spec.retraining), the I/O: creates a model's Jobs through the
API server and reads their outputs from the dataset, for the model's status loop.
retraining.py holds the policy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from edgefleet.operator import kubeapi, retraining
from edgefleet.operator.dataset import DatasetError, ObjectStore
from edgefleet.operator.resources import (
    EdgeModelSpec,
    EdgeModelStatus,
    RetrainingCandidate,
    RetrainingStatus,
)
from edgefleet.operator.retraining import CandidateError, JobContext
from edgefleet.operator.settings import OperatorSettings

log = logging.getLogger("edgefleet.operator.retraining")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Notice:
    """An Event to post once the status that tells of it is written."""

    reason: str
    message: str
    warning: bool = False


@dataclass
class RetrainingOutcome:
    status: RetrainingStatus | None
    notices: list[Notice] = field(default_factory=list)
    # A merge patch of the model's spec (rollout Canary: the candidate as its version).
    promotion: dict[str, Any] | None = None
    recheck_after_s: float | None = None


class Retrainer:
    """Creates spec.retraining's Jobs and turns their outputs into candidates."""

    def __init__(self, jobs: client.BatchV1Api, store: ObjectStore,
                 settings: OperatorSettings) -> None:
        self._jobs = jobs
        self._store = store
        self._settings = settings
        # When each running Job is looked at next (monotonic): a model's status loop runs
        # with every device report, the Job and its output are read every poll period.
        self._next_look: dict[tuple[str, str], float] = {}

    def forget(self, namespace: str, name: str) -> None:
        """The model's status loop ended (deleted, or no longer this replica's)."""
        self._next_look.pop((namespace, name), None)

    async def reconcile(self, namespace: str, name: str, uid: str, spec: EdgeModelSpec,
                        status: EdgeModelStatus, now: datetime) -> RetrainingOutcome:
        """Where the model's retraining stands, given its spec and the status computed
        from its devices (status.data) and stored before (status.retraining)."""
        current = status.retraining or RetrainingStatus()
        policy = spec.retraining
        if policy is None:
            return RetrainingOutcome(status.retraining)  # what ran before stays on record
        if not retraining.allowed(self._settings.retraining_namespaces, namespace):
            message = (f"retraining Jobs are not allowed in namespace {namespace}: the "
                       "cluster admin names the namespaces that may have them "
                       "(--retraining-namespaces)")
            return _say(current, message, "RetrainingNotAllowed")
        key = (namespace, name)
        if current.phase == "Running":
            wait_s = self._next_look.get(key, 0.0) - time.monotonic()
            if wait_s > 0:
                return RetrainingOutcome(current, recheck_after_s=wait_s)
            self._next_look[key] = time.monotonic() + self._settings.retraining_poll_seconds
            outcome = await self._follow(namespace, name, spec, status, current, now)
            if outcome.status is None or outcome.status.phase != "Running":
                self._next_look.pop(key, None)
            return outcome
        labelled = status.data.labelled if status.data else 0
        if not retraining.due(policy, current, labelled):
            return RetrainingOutcome(current)
        self._next_look[key] = time.monotonic() + self._settings.retraining_poll_seconds
        return await self._create(namespace, name, uid, spec, status, current, labelled)

    async def _create(self, namespace: str, name: str, uid: str, spec: EdgeModelSpec,
                      status: EdgeModelStatus, current: RetrainingStatus,
                      labelled: int) -> RetrainingOutcome:
        assert spec.retraining is not None
        number = current.jobs + 1
        job_name = retraining.job_name(name, number)
        base_version = status.stable_version or spec.version
        context = JobContext(
            namespace=namespace, model=name, model_uid=uid, number=number,
            base_version=base_version,
            dataset=self._store.locate(f"{namespace}/{name}/"),
            output=self._store.locate(retraining.output_key(namespace, name, number)),
            service_account=self._settings.retraining_service_account,
            s3_endpoint=self._settings.dataset_s3_endpoint,
            s3_region=(self._settings.dataset_s3_region
                       if self._settings.dataset_uri.startswith("s3://") else ""))
        manifest = retraining.job_manifest(spec.retraining.job_template, context)
        created = current.model_copy(update={
            "jobs": number, "job": job_name, "base_version": base_version, "phase": "Running",
            "labelled_at_last_job": labelled,
            "message": f"Job {job_name} created; the dataset holds {labelled} labels"})
        try:
            await kubeapi.call(self._jobs.create_namespaced_job, namespace, manifest)
        except ApiException as error:
            if error.status == 409:
                return await self._adopt(namespace, uid, current, created)
            if error.status not in (403, 422):
                raise  # the API server failing: the status loop retries
            # Refused for good (the operator may not create Jobs there, or admission
            # refused the pod): counted as this threshold's Job, so not retried in a loop.
            message = f"Job {job_name} was not created: {_api_reason(error)}"
            return RetrainingOutcome(
                created.model_copy(update={"phase": "Failed", "message": message}),
                [Notice("RetrainingJobNotCreated", message, warning=True)])
        log.info("retraining job created namespace=%s model=%s job=%s labelled=%d",
                 namespace, name, job_name, labelled)
        return RetrainingOutcome(
            created, [Notice("RetrainingJobCreated", created.message)],
            recheck_after_s=self._settings.retraining_poll_seconds)

    async def _adopt(self, namespace: str, uid: str, current: RetrainingStatus,
                     created: RetrainingStatus) -> RetrainingOutcome:
        """The Job exists: this operator created it and stopped before saying so (it is
        adopted), or someone else took the name (it is not, and is waited out)."""
        assert created.job is not None
        recheck = self._settings.retraining_poll_seconds
        if retraining.owned_by(await self._read_job(namespace, created.job) or {}, uid):
            return RetrainingOutcome(created, recheck_after_s=recheck)
        message = (f"a Job named {created.job} exists that the operator did not create for "
                   "this model; delete or rename it")
        said = _say(current, message, "RetrainingJobNameTaken")
        said.recheck_after_s = recheck
        return said

    async def _read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Job as the API server has it (JSON); None when there is none."""
        try:
            response = await kubeapi.call(self._jobs.read_namespaced_job, name, namespace,
                                          _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        document = json.loads(response.data)
        return document if isinstance(document, dict) else None

    async def _follow(self, namespace: str, name: str, spec: EdgeModelSpec,
                      status: EdgeModelStatus, current: RetrainingStatus,
                      now: datetime) -> RetrainingOutcome:
        """A running Job: its output, once evaluation.json is there, or how it failed."""
        assert spec.retraining is not None and current.job is not None
        waiting = RetrainingOutcome(current, recheck_after_s=self._settings.retraining_poll_seconds)
        prefix = retraining.output_key(namespace, name, current.jobs)
        try:
            evaluation = await asyncio.to_thread(self._store.get,
                                                 prefix + retraining.EVALUATION_FILE)
            found = None if evaluation is None else await self._candidate(
                prefix, name, current.jobs,
                current.base_version or status.stable_version or spec.version, evaluation, now)
        except DatasetError as error:
            log.warning("retraining output of %s/%s not read yet: %s", namespace, name, error)
            return waiting
        except CandidateError as error:
            message = f"the output of Job {current.job} is not a candidate: {error}"
            return RetrainingOutcome(
                current.model_copy(update={"phase": "Failed", "message": message}),
                [Notice("RetrainingCandidateInvalid", message, warning=True)])
        if found is not None:
            return self._succeeded(namespace, name, spec, current, found)
        job = await self._read_job(namespace, current.job)
        outcome = (("Failed", "the Job was deleted") if job is None
                   else retraining.job_outcome(job))
        if outcome is None:
            return waiting
        state, why = outcome
        message = (f"Job {current.job} failed: {why}" if state == "Failed" else
                   f"Job {current.job} completed without writing "
                   f"{retraining.EVALUATION_FILE} to {self._store.locate(prefix)}")
        return RetrainingOutcome(current.model_copy(update={"phase": "Failed",
                                                            "message": message}),
                                 [Notice("RetrainingJobFailed", message, warning=True)])

    def _succeeded(self, namespace: str, name: str, spec: EdgeModelSpec,
                   current: RetrainingStatus, found: RetrainingCandidate) -> RetrainingOutcome:
        assert spec.retraining is not None
        settled = retraining.settle(namespace, name, spec.retraining.rollout, found)
        return RetrainingOutcome(
            current.model_copy(update={"phase": "Succeeded", "candidate": found,
                                       "message": settled.message}),
            [Notice("RetrainingCandidate", settled.message, warning=settled.worse)],
            promotion=settled.promotion)

    async def _candidate(self, prefix: str, name: str, number: int, base_version: str,
                         evaluation: bytes, now: datetime) -> RetrainingCandidate:
        scored = retraining.read_evaluation(evaluation)
        claimed = retraining.read_digest(
            await asyncio.to_thread(self._store.get, prefix + retraining.DIGEST_FILE))
        actual = await asyncio.to_thread(self._digest, prefix + retraining.MODEL_FILE)
        if actual != claimed:
            raise CandidateError(f"{retraining.MODEL_FILE} does not match "
                                 f"{retraining.DIGEST_FILE}")
        return retraining.candidate(name, number, base_version, claimed, scored, now)

    def _digest(self, key: str) -> str:
        """The model's sha256, read in parts and bounded like any artifact."""
        source = self._store.open(key)
        if source is None:
            raise CandidateError(f"the output has {retraining.EVALUATION_FILE} but no "
                                 f"{retraining.MODEL_FILE}")
        hasher, size = hashlib.sha256(), 0
        with source:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > self._settings.artifact_max_bytes:
                    raise CandidateError(f"{retraining.MODEL_FILE} is larger than "
                                         f"{self._settings.artifact_max_bytes} bytes")
                hasher.update(chunk)
        return hasher.hexdigest()


def _say(current: RetrainingStatus, message: str, reason: str) -> RetrainingOutcome:
    """A standing problem in status.retraining.message, with a Warning Event when it is
    new (not at every reconcile: a notice forces a status write)."""
    if current.message == message:
        return RetrainingOutcome(current)
    return RetrainingOutcome(current.model_copy(update={"message": message}),
                             [Notice(reason, message, warning=True)])


def _api_reason(error: ApiException) -> str:
    """The API server's message for a refusal, bounded."""
    return str(kubeapi.api_status(error).get("message") or error.reason)[:512]
