"""Builds EdgeModel variants: each in a child process of its own (variant_worker.py, which
alone imports ONNX and ONNX Runtime), at most `concurrency` at once, each within a time
and a memory bound. Models and datasets come from tenants: a build that crashes, hangs
or swells harms only its own process, never the operator's event loop.

A build is named by a key over everything its output depends on (the source's digest,
the optimization, the calibration and validation datasets' digests, the metric, and the
versions of the builder): its result is recorded on disk under that key and its bytes
go into the namespace's artifact cache, so a restarted operator builds nothing twice.
A failure is kept in memory only and tried again after a backoff (30 s doubling to an
hour): a dataset may be fixed, the limits raised, and a restart tries once more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from edgefleet.operator import metrics
from edgefleet.operator.artifact_sources import ArtifactError
from edgefleet.operator.artifacts import Artifact, ArtifactCache
from edgefleet.operator.resources import DatasetSource, Validation, Variant
from edgefleet.operator.variants import BUILDING, BuildOutcome

logger = logging.getLogger(__name__)
WORKER = "edgefleet.operator.variant_worker"
LATENCY_SAMPLES = 100
FIRST_RETRY_S, MAX_RETRY_S = 30.0, 3600.0
MAX_MESSAGE = 1000
# The reasons the worker gives (a metric label and a condition's words: no others pass).
WORKER_REASONS = frozenset({"InvalidDataset", "BuildFailed", "ValidationFailed", "InvalidJob"})


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


# What a build's bytes depend on besides its inputs: a new release may build otherwise.
BUILDER_VERSIONS = {name: _package_version(name)
                    for name in ("edgefleet", "onnx", "onnxruntime", "numpy")}


@dataclass(frozen=True)
class BuildRequest:
    """One variant of one verified source, with what it is scored on."""

    namespace: str
    source: Artifact
    variant: Variant
    validation: Validation | None

    def key(self) -> str:
        optimize = self.variant.optimize
        validation = self.validation
        canonical = json.dumps({
            "source": self.source.digest,
            "optimize": optimize.model_dump(mode="json", by_alias=True, exclude={"calibration"}),
            "calibration": optimize.calibration.sha256.lower() if optimize.calibration else None,
            "validation": {"dataset": validation.dataset.sha256.lower(),
                           "metric": validation.metric, "k": validation.k}
            if validation else None,
            "builder": BUILDER_VERSIONS,
        }, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class VariantBuilder:
    def __init__(self, cache: ArtifactCache, root: Path, *, concurrency: int, timeout_s: float,
                 memory_bytes: int) -> None:
        self._cache = cache
        self._records = root / "variants"
        self._records.mkdir(parents=True, exist_ok=True)
        self._slots = asyncio.Semaphore(concurrency)
        self._timeout_s = timeout_s
        self._memory_bytes = memory_bytes
        # key -> the build's task, and whom to tell when it ends.
        self._running: dict[str, tuple[asyncio.Task[None], list[Callable[[], None]]]] = {}
        # key -> a build recorded on disk, once read (each reconcile asks again).
        self._known: dict[str, BuildOutcome] = {}
        # key -> (the failure, monotonic time to retry, the delay it was given).
        self._retry: dict[str, tuple[BuildOutcome, float, float]] = {}

    def outcome(self, request: BuildRequest, on_done: Callable[[], None]) -> BuildOutcome:
        """Where the build stands; starts it (in the background) when nothing has it, and
        calls `on_done` (once, however often it is passed: equal callbacks are one) when
        that build ends."""
        key = request.key()
        record = self._read(request.namespace, key)
        if record is not None and self._cache.get(request.namespace, record.digest):
            return record
        if running := self._running.get(key):
            if on_done not in running[1]:
                running[1].append(on_done)
            return BUILDING
        if (failed := self._retry.get(key)) and time.monotonic() < failed[1]:
            return failed[0]
        task = asyncio.create_task(self._build(request, key),
                                   name=f"variant {request.namespace} {request.variant.name}")
        self._running[key] = (task, [on_done])
        return BUILDING

    def seconds_to_retry(self) -> float | None:
        """Until the next failed build may be tried again (None: none waits)."""
        now = time.monotonic()
        return min((at - now for _, at, _ in self._retry.values() if at > now), default=None)

    async def _build(self, request: BuildRequest, key: str) -> None:
        try:
            async with self._slots:
                outcome = await self._run(request, key)
        except ArtifactError as error:  # a dataset could not be fetched or verified
            outcome = BuildOutcome("Failed", reason=error.reason, message=error.message)
        except TimeoutError:
            outcome = BuildOutcome("Failed", reason="BuildTimedOut", message=(
                f"the build took longer than {self._timeout_s:.0f}s (--variant-build-"
                "timeout-seconds)"))
        except Exception as error:  # the worker died or answered nonsense
            logger.exception("variant build failed namespace=%s variant=%s source=%s",
                             request.namespace, request.variant.name, request.source.digest)
            outcome = BuildOutcome("Failed", reason="BuildFailed",
                                   message=str(error)[:MAX_MESSAGE])
        finally:
            _, waiting = self._running.pop(key)
        if outcome.state == "Failed":
            self._backoff(key, outcome)
        else:
            self._retry.pop(key, None)
        metrics.VARIANT_BUILDS.labels("built" if outcome.state == "Built"
                                      else outcome.reason).inc()
        logger.info("variant build namespace=%s variant=%s source=%s state=%s reason=%s",
                    request.namespace, request.variant.name, request.source.digest,
                    outcome.state, outcome.reason)
        for on_done in waiting:
            on_done()

    def _backoff(self, key: str, outcome: BuildOutcome) -> None:
        previous = self._retry.get(key)
        delay = min(previous[2] * 2, MAX_RETRY_S) if previous else FIRST_RETRY_S
        self._retry[key] = (outcome, time.monotonic() + delay, delay)

    async def _run(self, request: BuildRequest, key: str) -> BuildOutcome:
        optimize, validation = request.variant.optimize, request.validation
        calibration = (await self._dataset(request.namespace, optimize.calibration)
                       if optimize.calibration else None)
        dataset = (await self._dataset(request.namespace, validation.dataset)
                   if validation else None)
        tmp_dir = self._cache.root / "tmp"
        handle, output = tempfile.mkstemp(dir=tmp_dir, suffix=".onnx")
        os.close(handle)
        job = {
            "source": str(request.source.path), "output": output,
            "optimize": optimize.model_dump(mode="json", by_alias=True,
                                            exclude={"calibration"}),
            "calibration": str(calibration) if calibration else None,
            "validation": {"dataset": str(dataset), "metric": validation.metric,
                           "k": validation.k} if validation and dataset else None,
            "latencySamples": LATENCY_SAMPLES, "memoryLimitBytes": self._memory_bytes,
        }
        try:
            result = await self._work(job)
            if not result.get("ok"):
                reason = str(result.get("reason"))
                outcome = BuildOutcome("Failed",
                                       reason=reason if reason in WORKER_REASONS else "BuildFailed",
                                       message=str(result.get("message", ""))[:MAX_MESSAGE])
            else:
                digest = f"sha256:{result['sha256']}"
                artifact = await asyncio.to_thread(self._cache.adopt, request.namespace,
                                                   Path(output), digest)
                scores = result.get("validation") or {}
                outcome = BuildOutcome(
                    "Built", digest=artifact.digest, size=artifact.size,
                    build_seconds=round(float(result["buildSeconds"]), 3),
                    built_at=datetime.now(UTC).replace(microsecond=0),
                    score=_figure(scores, "variant", "score"),
                    source_score=_figure(scores, "source", "score"),
                    latency_ms=_figure(scores, "variant", "latencyMs"),
                    source_latency_ms=_figure(scores, "source", "latencyMs"))
        finally:
            Path(output).unlink(missing_ok=True)
        if outcome.state == "Built":
            await asyncio.to_thread(self._write, request.namespace, key, outcome)
            self._known[key] = outcome
        return outcome

    async def _dataset(self, namespace: str, source: DatasetSource) -> Path:
        return (await self._cache.ensure(namespace, source.uri, source.sha256)).path

    async def _work(self, job: dict[str, Any]) -> dict[str, Any]:
        """Runs the worker on one job: its one JSON line back, or an exception."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONSAFEPATH": "1"})
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(json.dumps(job).encode()), self._timeout_s)
        except BaseException:  # the timeout, or the operator stopping: no orphan
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        try:
            result = json.loads(stdout)
        except ValueError:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"the build worker exited with {process.returncode} and no "
                               f"result: {tail[0][:300]}") from None
        if not isinstance(result, dict):
            raise RuntimeError("the build worker answered no object")
        return result

    # ------------------------------------------------------------ records

    def _path(self, namespace: str, key: str) -> Path:
        self._cache.blob_path(namespace, f"sha256:{key}")  # checks the namespace
        return self._records / namespace / f"{key}.json"

    def _read(self, namespace: str, key: str) -> BuildOutcome | None:
        if (known := self._known.get(key)) is not None:
            return known
        try:
            raw = json.loads(self._path(namespace, key).read_text())
            raw["built_at"] = (datetime.fromisoformat(raw["built_at"]) if raw.get("built_at")
                               else None)
            self._known[key] = BuildOutcome(**raw)
            return self._known[key]
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):  # a torn or foreign file: build again
            return None

    def _write(self, namespace: str, key: str, outcome: BuildOutcome) -> None:
        path = self._path(namespace, key)
        path.parent.mkdir(exist_ok=True)
        fields = {**outcome.__dict__, "built_at": outcome.built_at.isoformat()
                  if outcome.built_at else None}
        handle, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(handle, "w") as out:
            json.dump(fields, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)


def _figure(scores: dict[str, Any], model: str, name: str) -> float | None:
    value = (scores.get(model) or {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None
