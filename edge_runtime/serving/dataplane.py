"""The transport-independent core of serving: health, metadata, inference and the
protocol's extensions (model configuration, statistics, the model repository), with the
request metrics. The gRPC and REST servers only convert and call these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Protocol

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.capture import Collector, FeedbackResult
from edgefleet.edge_runtime.engine import (
    PLATFORM,
    Engine,
    InferRequest,
    InferResponse,
    ModelVersion,
)
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.stats import ServingStatistics
from edgefleet.edge_runtime.tensors import TensorSpec

SERVER_NAME = "edgefleet"
# Protocol extensions this server implements (reported in server metadata), by the
# names Triton gives them.
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]
BACKEND = "onnxruntime"
# Parameters of a repository load or unload the runtime takes, and their types:
# `unload_dependents` has nothing to do here (no ensembles), so it is accepted as such.
UNLOAD_PARAMETERS: Mapping[str, type] = {"unload_dependents": bool}


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass(frozen=True)
class ModelConfiguration:
    """What the model configuration extension tells of a loaded version: a batch
    dimension the server fills (max_batch_size > 0; the tensors' shapes then leave it
    out) and how long a batch waits for more requests."""

    name: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_delay_micros: int | None  # None: no dynamic batching


@dataclass(frozen=True)
class VersionStatistics:
    name: str
    version: str
    statistics: ServingStatistics


@dataclass(frozen=True)
class RepositoryEntry:
    """A model version the runtime knows, in the repository extension's terms: state
    READY, LOADING, UNLOADING or UNAVAILABLE, and why when it is not ready."""

    name: str
    version: str
    state: str
    reason: str = ""


class ModelRepository(Protocol):
    """Where the served models come from, as the repository extension sees it."""

    async def index(self) -> list[RepositoryEntry]:
        """Every model version it holds or is loading, ready or not."""

    async def load(self, name: str) -> None:
        """Loads (or loads again) the model; raises InferenceError when it cannot."""

    async def unload(self, name: str) -> None:
        """Stops serving the model until it is loaded again."""


class DataPlane:
    def __init__(self, engine: Engine, repository: ModelRepository,
                 collector: Collector | None = None) -> None:
        self.engine = engine
        self.repository = repository
        self.collector = collector  # None: no data dir (a local repository), no feedback
        # Ready once the runtime has loaded what it was told to serve at start.
        self.started = False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, package_version("edgefleet"), EXTENSIONS)

    def model_ready(self, name: str, version: str | None) -> bool:
        return self.engine.is_ready(name, version)

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        loaded = self.engine.resolve(name, version)
        return ModelMetadata(name=name, versions=self.engine.versions(name), platform=PLATFORM,
                             inputs=loaded.inputs, outputs=loaded.outputs)

    def model_configuration(self, name: str, version: str | None) -> ModelConfiguration:
        return configuration_of(self.engine.resolve(name, version))

    def model_statistics(self, name: str, version: str | None) -> list[VersionStatistics]:
        """Every loaded version's (no name), a model's, or one version's statistics."""
        if not name:
            if version:
                raise InferenceError.invalid("a version was given without a model name")
            wanted = [(model, loaded) for model in self.engine.models()
                      for loaded in self.engine.versions(model)]
        elif version:
            wanted = [(name, version)]
        else:
            wanted = [(name, loaded) for loaded in self.engine.versions(name)]
            if not wanted:
                raise InferenceError.not_found(f"model {name!r} is not loaded")
        return [VersionStatistics(model, loaded, self.engine.resolve(model, loaded).statistics)
                for model, loaded in wanted]

    async def repository_index(self, ready_only: bool) -> list[RepositoryEntry]:
        entries = await self.repository.index()
        return [entry for entry in entries if entry.state == "READY" or not ready_only]

    async def load_model(self, name: str, parameters: Mapping[str, object]) -> None:
        if parameters:
            raise InferenceError.invalid(
                f"parameters {sorted(parameters)}: loading takes no parameters here; a "
                "model's configuration and files come from where the runtime's models do")
        await self.repository.load(name)

    async def unload_model(self, name: str, parameters: Mapping[str, object]) -> None:
        for key, value in parameters.items():
            kind = UNLOAD_PARAMETERS.get(key)
            if kind is None:
                raise InferenceError.invalid(
                    f"parameter {key!r}: unloading takes only {sorted(UNLOAD_PARAMETERS)}")
            if not isinstance(value, kind):
                raise InferenceError.invalid(f"parameter {key!r}: expected a {kind.__name__}, "
                                             f"got {type(value).__name__}")
        await self.repository.unload(name)

    async def infer(self, request: InferRequest, started: float) -> InferResponse:
        """Runs a decoded request; `started` is when its bytes arrived (perf_counter)."""
        try:
            return await self.engine.infer(request, started)
        except InferenceError as error:
            self.count_failure(request.model, request.version, error)
            raise

    def count_failure(self, model: str, version: str | None, error: InferenceError) -> None:
        """Counts a failed request; names not loaded are counted as "" (bounded labels)."""
        known = model in self.engine.models()
        version = error.version or version
        known_version = version if known and version in self.engine.versions(model) else ""
        telemetry.REQUESTS.labels(model if known else "", known_version,
                                  error.code.name.lower()).inc()

    def feedback(self, model: str, request_id: str, labels: list[str]) -> FeedbackResult:
        """The true labels of an answered request's rows (see capture.Collector)."""
        if self.collector is None:
            raise InferenceError.not_found(
                "this runtime takes no feedback: it serves a local repository, without "
                "data collection")
        return self.collector.feedback(model, request_id, labels)


def configuration_of(loaded: ModelVersion) -> ModelConfiguration:
    """A version with dynamic batching declares its batch dimension as the server's to
    fill; any other declares its tensors' full shapes (max_batch_size 0)."""
    batching = loaded.runtime.batching
    if loaded.batcher is not None and batching is not None:
        return ModelConfiguration(
            name=loaded.name, max_batch_size=batching.max_batch_size,
            inputs=[TensorSpec(s.name, s.datatype, s.shape[1:]) for s in loaded.inputs],
            outputs=[TensorSpec(s.name, s.datatype, s.shape[1:]) for s in loaded.outputs],
            batch_delay_micros=batching.max_delay_micros)
    return ModelConfiguration(name=loaded.name, max_batch_size=0, inputs=loaded.inputs,
                              outputs=loaded.outputs, batch_delay_micros=None)
