"""The transport-independent core of serving: health, metadata and inference, with the
request metrics. The gRPC and REST servers only convert and call these."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as package_version

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.capture import Collector, FeedbackResult
from edgefleet.edge_runtime.engine import PLATFORM, Engine, InferRequest, InferResponse
from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.tensors import TensorSpec

SERVER_NAME = "edgefleet"
# Protocol extensions this server implements (reported in server metadata).
EXTENSIONS = ["binary_tensor_data"]


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


class DataPlane:
    def __init__(self, engine: Engine, collector: Collector | None = None) -> None:
        self.engine = engine
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
