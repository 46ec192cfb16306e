"""The model registry and inference engine: ONNX Runtime sessions per model version,
weighted routing of unpinned requests, hot swap with draining, and dynamic batching.

Sessions run in a thread pool sized to the device; the event loop never blocks on
ONNX Runtime. A request hops to the pool once (or once per batch when batched).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.batching import Batcher, Tensors
from edgefleet.edge_runtime.config import RuntimeConfig, WarmupSample
from edgefleet.edge_runtime.errors import ErrorCode, InferenceError
from edgefleet.edge_runtime.stats import ServingStatistics, VersionStats, classes_of
from edgefleet.edge_runtime.tensors import NUMPY_DTYPES, ONNX_TYPES, TensorSpec
from edgefleet.protocol.onnx_refs import MalformedModelError, external_references, summarize

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger(__name__)
PLATFORM = "onnxruntime_onnx"
WARMUP_RUNS = 20
WARMUP_BUDGET_S = 0.2
GRAPH_OPTIMIZATION = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                      "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def onnxruntime() -> ModuleType:
    """ONNX Runtime, imported when the first model loads: a runtime with nothing
    assigned does not carry its ~20 MB."""
    import onnxruntime as ort

    return ort


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: Sequence[str] | None = None  # None: every output
    id: str = ""


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    outputs: list[OutputTensor]
    id: str = ""


def tensor_specs(args: Iterable[Any]) -> list[TensorSpec]:
    """The protocol's view of a session's inputs or outputs (NodeArgs)."""
    specs = []
    for arg in args:
        datatype = ONNX_TYPES.get(arg.type)
        if datatype is None:
            raise ValueError(f"tensor {arg.name!r} has type {arg.type}, which the protocol "
                             "cannot carry")
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
        specs.append(TensorSpec(arg.name, datatype, shape))
    return specs


def session_options(runtime: RuntimeConfig) -> ort.SessionOptions:
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.intra_op_threads
    options.inter_op_num_threads = runtime.inter_op_threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               GRAPH_OPTIMIZATION[runtime.graph_optimization])
    spinning = "1" if runtime.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options


def check_self_contained(name: str, version: str, path: Path) -> None:
    """Refuses a model that names any other file (external data): ONNX Runtime would
    read that file and hand its bytes to whoever calls inference. Reads the file
    without loading it."""
    try:
        references = external_references(path)
    except MalformedModelError as error:
        raise InferenceError.invalid(f"model {name!r} version {version!r} at {path} cannot "
                                     f"be served: {error}") from None
    if references:
        raise InferenceError.invalid(
            f"UnsafeModel: model {name!r} version {version!r} refers to other files, which "
            f"the runtime never reads; a model must be self-contained: "
            f"{summarize(references)}")


def choose_providers(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """The wanted providers the device has, in order, then CPU; each one skipped is logged."""
    chosen = []
    for provider in wanted:
        if provider in available:
            chosen.append(provider)
        else:
            logger.warning("execution provider %s is not available on this device (it has "
                           "%s); falling back", provider, ", ".join(available))
    return [*chosen, "CPUExecutionProvider"] if "CPUExecutionProvider" not in chosen else chosen


def provider_fallback(wanted: Sequence[str], running: Sequence[str]) -> str:
    """Why a loaded model runs on other providers than it was assigned: "" when it runs
    on every one wanted."""
    missing = [provider for provider in wanted if provider not in running]
    if not missing:
        return ""
    return (f"{', '.join(missing)} not available on this device; running on "
            f"{', '.join(running)}")


def warmup_inputs(specs: Iterable[TensorSpec]) -> dict[str, np.ndarray]:
    """Zeros of every input, variable dimensions set to 1: what a model is warmed up
    with when its configuration gives no samples."""
    feeds = {}
    for spec in specs:
        shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
    return feeds


@dataclass
class ModelVersion:
    """One loaded version: its session, signature and in-flight accounting."""

    name: str
    version: str
    digest: str
    session: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    runtime: RuntimeConfig
    metrics: telemetry.VersionMetrics
    stats: VersionStats = field(default_factory=VersionStats)
    statistics: ServingStatistics = field(default_factory=ServingStatistics)
    batcher: Batcher | None = None
    in_flight: int = 0
    # Warm-up timing: the cheapest run seen and the input elements it had, to estimate
    # what a request costs before choosing where to run it. Infinite (unknown) sends
    # every run to the pool.
    warmup_s: float = float("inf")
    warmup_elements: int = 1
    # Real runs still to time: a model that warm-up could not run is timed by its first
    # requests instead.
    runs_to_time: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def timed(self, seconds: float, elements: int) -> None:
        """Keeps the fastest run seen (the first ones are slow: cold caches, threads
        starting) as the estimate."""
        if seconds < self.warmup_s:
            self.warmup_s, self.warmup_elements = seconds, max(1, elements)

    @property
    def batchable(self) -> bool:
        """Only models whose every tensor has a variable first dimension."""
        return all(spec.shape and spec.shape[0] == -1 for spec in [*self.inputs, *self.outputs])

    def validate(self, request: InferRequest) -> None:
        """Every input present, none extra, datatypes and shapes as the model declares."""
        expected = {spec.name: spec for spec in self.inputs}
        missing = sorted(expected.keys() - request.inputs.keys())
        extra = sorted(request.inputs.keys() - expected.keys())
        if missing or extra:
            raise InferenceError.invalid(
                f"model {self.name!r} version {self.version!r} expects inputs "
                f"{sorted(expected)}; missing {missing}, unexpected {extra}")
        for name, array in request.inputs.items():
            spec = expected[name]
            if request.datatypes[name] != spec.datatype:
                raise InferenceError.invalid(
                    f"input {name!r}: expected datatype {spec.datatype}, got "
                    f"{request.datatypes[name]}")
            if not spec.accepts_shape(array.shape):
                raise InferenceError.invalid(
                    f"input {name!r}: expected shape {list(spec.shape)} (-1: any), got "
                    f"{list(array.shape)}")
        known = {spec.name for spec in self.outputs}
        for name in request.outputs or ():
            if name not in known:
                raise InferenceError.invalid(
                    f"requested output {name!r} is not an output of model {self.name!r}; "
                    f"it has {sorted(known)}")


# Sees every answered request: the version, the request's id, the request, every output
# and the class of each row (None when the model does not classify). Runs on the loop.
Observer = Callable[["ModelVersion", str, InferRequest, Tensors, "np.ndarray | None"], None]


class Engine:
    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnxruntime")
        self._versions: dict[str, dict[str, ModelVersion]] = {}
        self._routes: dict[str, dict[str, float]] = {}
        self._in_flight = 0  # requests in the engine, all models
        # Ids for requests that come without one: unique across restarts by the prefix.
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self.observer: Observer | None = None

    # ------------------------------------------------------------ registry

    def models(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[str]:
        return sorted(self._versions.get(name, {}))

    def routes(self, name: str) -> dict[str, float]:
        return dict(self._routes.get(name, {}))

    def stats(self) -> list[tuple[str, str, VersionStats]]:
        """(model, version, statistics) of every loaded version."""
        return [(name, version, loaded.stats) for name, versions in sorted(self._versions.items())
                for version, loaded in sorted(versions.items())]

    async def load(self, name: str, version: str, path: Path, runtime: RuntimeConfig,
                   digest: str = "", warmup: Sequence[WarmupSample] = ()) -> ModelVersion:
        """Creates the session and warms it up (with `warmup`'s samples, else zeros);
        only then may it take traffic, in place of the same version's earlier bytes if it
        had any."""
        loaded = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._create, name, version, path, runtime, digest, warmup)
        if runtime.batching and runtime.batching.max_batch_size > 1 and loaded.batchable:
            loaded.batcher = Batcher(
                lambda feeds: self._run(loaded, feeds),
                runtime.batching.max_batch_size, runtime.batching.max_delay_micros / 1e6,
                loaded.metrics.batch_size.observe,
            )
        elif runtime.batching and runtime.batching.max_batch_size > 1:
            logger.info("model=%s version=%s: batching off, its batch dimension is fixed",
                        name, version)
        # Other bytes of a version already loaded (another variant of it) take its place
        # only now, ready: its requests never meet a gap. The one replaced drains.
        replaced = self._versions.setdefault(name, {}).get(version)
        self._versions[name][version] = loaded
        telemetry.LOADED.labels(name, version, loaded.digest).set(1)
        logger.info("loaded model=%s version=%s digest=%s providers=%s", name, version,
                    loaded.digest, loaded.session.get_providers())
        if replaced is not None:
            await self._release(name, version, replaced)
        return loaded

    def _create(self, name: str, version: str, path: Path, runtime: RuntimeConfig,
                digest: str, warmup: Sequence[WarmupSample]) -> ModelVersion:
        check_self_contained(name, version, path)
        ort = onnxruntime()
        try:
            # From the path, never from bytes: ONNX Runtime resolves a path a model
            # names against the model's directory then, not the working directory.
            # (No session option of ONNX Runtime 1.32 turns external data off; the
            # check above refuses it first.)
            session = ort.InferenceSession(
                str(path), sess_options=session_options(runtime),
                providers=choose_providers(runtime.execution_providers,
                                           ort.get_available_providers()))
            if not digest:
                with open(path, "rb") as data:
                    digest = f"sha256:{hashlib.file_digest(data, 'sha256').hexdigest()}"
            loaded = ModelVersion(
                name=name, version=version, digest=digest,
                session=session, inputs=tensor_specs(session.get_inputs()),
                outputs=tensor_specs(session.get_outputs()), runtime=runtime,
                metrics=telemetry.VersionMetrics.of(name, version))
        except Exception as error:  # ONNX Runtime raises its own types for bad models
            raise InferenceError.invalid(f"model {name!r} version {version!r} at {path} "
                                         f"cannot be served: {error}") from error
        if warmup:
            try:
                warm_up(loaded, [sample_feeds(loaded, index, sample)
                                 for index, sample in enumerate(warmup)])
            except WarmupFailed as failed:  # the samples were wrong, not the model
                raise InferenceError.invalid(
                    f"model {name!r} version {version!r}: warmup[{failed.index}] fails in "
                    f"ONNX Runtime: {failed}") from None
            return loaded
        try:
            warm_up(loaded, [warmup_inputs(loaded.inputs)])
        except WarmupFailed as failed:
            # Zeros are no valid input for a model that reads a shape or an index from an
            # input: it serves all the same, unwarmed, and its first requests are timed.
            logger.warning("model=%s version=%s: warm-up on zeros failed, serving without "
                           "it; its first requests set its run estimate. ONNX Runtime: %s",
                           name, version, failed)
            loaded.runs_to_time = WARMUP_RUNS
        return loaded

    def route(self, name: str, weights: dict[str, float]) -> None:
        """Sends unpinned requests to these loaded versions, split by weight."""
        missing = [v for v in weights if v not in self._versions.get(name, {})]
        if missing or not any(w > 0 for w in weights.values()):
            raise ValueError(f"cannot route model {name!r} to {weights}: not loaded {missing}")
        self._routes[name] = {v: w for v, w in weights.items() if w > 0}

    async def unload(self, name: str, version: str) -> None:
        """Takes the version out of routing at once; releases it when its requests end."""
        versions = self._versions.get(name, {})
        loaded = versions.pop(version, None)
        if loaded is None:
            return
        route = self._routes.get(name, {})
        route.pop(version, None)
        if not route or not versions:
            self._routes.pop(name, None)
        if not versions:
            self._versions.pop(name, None)
        await self._release(name, version, loaded)

    async def _release(self, name: str, version: str, loaded: ModelVersion) -> None:
        """Frees a version out of routing once its requests in flight end."""
        if loaded.in_flight:
            loaded.drained.clear()
            await loaded.drained.wait()
        if loaded.batcher:
            await loaded.batcher.close()
        if (current := self._versions.get(name, {}).get(version)) is None or (
                current.digest != loaded.digest):
            telemetry.LOADED.remove(name, version, loaded.digest)
        logger.info("unloaded model=%s version=%s digest=%s", name, version, loaded.digest)

    async def close(self) -> None:
        for name in self.models():
            for version in self.versions(name):
                await self.unload(name, version)
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------ inference

    def resolve(self, name: str, version: str | None) -> ModelVersion:
        versions = self._versions.get(name)
        if not versions:
            raise InferenceError.not_found(f"model {name!r} is not loaded")
        if version:
            if version not in versions:
                raise InferenceError.not_found(
                    f"model {name!r} has no version {version!r}; loaded: {sorted(versions)}")
            return versions[version]
        route = self._routes.get(name)
        if not route:
            raise InferenceError.unavailable(f"model {name!r} has no routed version yet")
        if len(route) == 1:
            return versions[next(iter(route))]
        chosen = random.choices(list(route), weights=list(route.values()))[0]
        return versions[chosen]

    def is_ready(self, name: str, version: str | None) -> bool:
        try:
            self.resolve(name, version)
        except InferenceError:
            return False
        return True

    async def infer(self, request: InferRequest, started: float) -> InferResponse:
        """Runs a decoded request; `started` is when its bytes arrived (perf_counter).
        Counts its success and times; failures are the caller's to count. The response
        carries the request's id, or one assigned to it."""
        model = self.resolve(request.model, request.version)
        model.in_flight += 1  # counted before any await: unload waits for it
        self._in_flight += 1
        statistics = model.statistics
        try:
            entered = time.perf_counter()
            model.validate(request)
            feeds = {name: _to_onnx(name, array) for name, array in request.inputs.items()}
            converted = time.perf_counter()
            statistics.compute_input.add(converted - entered)
            # A batchable model's tensors all have a first dimension, the rows; any other
            # request counts as one (its inputs may be scalars).
            rows = next(iter(feeds.values())).shape[0] if model.batchable and feeds else 1
            if model.batcher and feeds and (
                    rows <= model.runtime.batching.max_batch_size):  # type: ignore[union-attr]
                outputs, queue_s, compute_s = await model.batcher.submit(feeds, rows)
                statistics.queue.add(queue_s)
            else:
                outputs, compute_s = await self._run(model, feeds)
                ran = time.perf_counter()
                queue_s = ran - started - compute_s
                statistics.queue.add(ran - converted - compute_s)
            statistics.compute_infer.add(compute_s)
        except InferenceError as error:
            error.version = model.version
            statistics.fail.add(time.perf_counter() - started)
            if error.code is ErrorCode.INTERNAL:
                model.stats.failed()
            raise
        finally:
            self._in_flight -= 1
            model.in_flight -= 1
            if model.in_flight == 0:
                model.drained.set()
        metrics = model.metrics
        metrics.queue_seconds.observe(max(queue_s, 0.0))
        metrics.compute_seconds.observe(compute_s)
        metrics.succeeded.inc()
        seconds = time.perf_counter() - started
        metrics.request_seconds.observe(seconds)
        classes = classes_of(outputs[model.outputs[0].name])
        model.stats.answered(seconds, classes)
        request_id = request.id or f"{self._id_prefix}-{next(self._ids)}"
        if self.observer is not None:
            try:
                self.observer(model, request_id, request, outputs, classes)
            except Exception:  # what is kept must never fail what is answered
                logger.exception("model=%s version=%s: keeping request %s failed",
                                 model.name, model.version, request_id[:80])
        wanted = request.outputs or [spec.name for spec in model.outputs]
        datatypes = {spec.name: spec.datatype for spec in model.outputs}
        answered = time.perf_counter()
        response = InferResponse(
            model=model.name, version=model.version, id=request_id,
            outputs=[OutputTensor(name, datatypes[name], _from_onnx(outputs[name]))
                     for name in wanted])
        finished = time.perf_counter()
        statistics.compute_output.add(finished - answered)
        statistics.success.add(finished - started)
        statistics.answered(rows)
        return response

    async def _run(self, model: ModelVersion, feeds: Tensors) -> tuple[Tensors, float]:
        """Runs in the thread pool or, where `runs_inline` says so, on the event loop."""
        model.statistics.execution_count += 1
        elements = sum(array.size for array in feeds.values())
        estimate_s = model.warmup_s * max(1.0, elements / model.warmup_elements)
        if runs_inline(estimate_s, model.runtime, alone=self._in_flight <= 1):
            outputs, compute_s = _run_session(model, feeds)
        else:
            outputs, compute_s = await asyncio.get_running_loop().run_in_executor(
                self._pool, _run_session, model, feeds)
        if model.runs_to_time:
            model.runs_to_time -= 1
            model.timed(compute_s, elements)
        return outputs, compute_s


class WarmupFailed(Exception):
    """A warm-up run failed: `index` says which feeds, the message is ONNX Runtime's."""

    def __init__(self, index: int, reason: Exception) -> None:
        super().__init__(" ".join(str(reason).split()))  # one line in a log
        self.index = index


def sample_feeds(model: ModelVersion, index: int, sample: WarmupSample) -> Tensors:
    """A configured warm-up sample as feeds, checked as a request is: a sample that does
    not fit the model is a configuration error."""
    request = InferRequest(model.name, model.version, sample.arrays(),
                           {name: tensor.datatype for name, tensor in sample.inputs.items()})
    try:
        model.validate(request)
    except InferenceError as error:
        raise InferenceError.invalid(
            f"model {model.name!r} version {model.version!r}: warmup[{index}] does not fit "
            f"the model: {error.message}") from None
    return {name: _to_onnx(name, array) for name, array in request.inputs.items()}


def warm_up(model: ModelVersion, samples: Sequence[Tensors]) -> None:
    """Runs the samples in turn, each at least once, up to WARMUP_RUNS runs within
    WARMUP_BUDGET_S (so large models load promptly), keeping the fastest as the estimate."""
    # Quiet: ONNX Runtime would log a failed run itself; the caller reports it once.
    quiet = onnxruntime().RunOptions()
    quiet.log_severity_level = 4
    deadline = time.perf_counter() + WARMUP_BUDGET_S
    for run in range(max(WARMUP_RUNS, len(samples))):
        feeds = samples[run % len(samples)]
        started = time.perf_counter()
        try:
            model.session.run(None, feeds, quiet)
        except Exception as error:  # ONNX Runtime's own exception types
            raise WarmupFailed(run % len(samples), error) from error
        model.timed(time.perf_counter() - started, sum(a.size for a in feeds.values()))
        if run + 1 >= max(2, len(samples)) and time.perf_counter() > deadline:
            break


def runs_inline(estimate_s: float, runtime: RuntimeConfig, alone: bool) -> bool:
    """A run skips the thread pool when it is estimated to cost less than the hop there
    and back (inlineBelowMicros), or, when it is the runtime's only request in flight,
    less than inlineAloneBelowMicros: then nothing else is waiting for the loop."""
    limit_micros = max(runtime.inline_below_micros,
                       runtime.inline_alone_below_micros if alone else 0)
    return estimate_s * 1e6 < limit_micros


def _run_session(model: ModelVersion, feeds: Tensors) -> tuple[Tensors, float]:
    """Runs every output (a batch serves requests that asked for different ones)."""
    started = time.perf_counter()
    output_names = [spec.name for spec in model.outputs]
    try:
        results = model.session.run(output_names, feeds)
    except Exception as error:  # ONNX Runtime's own exception types
        raise InferenceError.internal(
            f"model {model.name!r} version {model.version!r} failed: {error}") from error
    return dict(zip(output_names, results, strict=True)), time.perf_counter() - started


def _to_onnx(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX strings are text: BYTES elements are decoded as UTF-8."""
    if array.dtype != object:
        return array
    try:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array)
    except UnicodeDecodeError as error:
        raise InferenceError.invalid(f"input {name!r}: a BYTES element is not UTF-8 text: "
                                     f"{error}") from None


def _from_onnx(array: np.ndarray) -> np.ndarray:
    if array.dtype != object:
        return array
    return np.vectorize(lambda s: s if isinstance(s, bytes) else str(s).encode(),
                        otypes=[object])(array)
