"""How a model is run on the device: ONNX Runtime options, batching and the version
routing of a model. The same shape as the EdgeModel's `spec.runtime` (camelCase),
read from `config.json` in a standalone model repository, with the samples a model is
warmed up with there (WarmupSample). And what the device keeps of a model's requests
(CapturePolicy, from the EdgeModel's `spec.dataCollection`)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.alias_generators import to_camel

from edgefleet.edge_runtime.errors import InferenceError
from edgefleet.edge_runtime.tensors import from_values

# config.json is re-read at every poll and its samples are kept with the model: a few
# samples of at most an image's worth of elements (224x224x3 fits) each.
MAX_WARMUP_SAMPLES = 4
MAX_WARMUP_ELEMENTS = 1 << 18


class ConfigPart(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


class BatchingConfig(ConfigPart):
    max_batch_size: int = Field(default=1, ge=1, le=1024)
    max_delay_micros: int = Field(default=0, ge=0, le=1_000_000)


GraphOptimization = Literal["disabled", "basic", "extended", "all"]


class RuntimeConfig(ConfigPart):
    intra_op_threads: int = Field(default=0, ge=0, le=256, description="0: ONNX Runtime's choice")
    inter_op_threads: int = Field(default=0, ge=0, le=256)
    graph_optimization: GraphOptimization = "all"
    # Busy-waiting worker threads answer a little sooner and burn idle CPU: off by
    # default on devices that may run on battery.
    allow_spinning: bool = False
    # A run estimated (from warm-up timings, scaled by input size) below this many
    # microseconds runs on the event loop: the hop to the thread pool and back cost
    # ~150 us a request here (194 us in-process with it, 48 us without). 0 sends every
    # run to the pool.
    inline_below_micros: int = Field(default=150, ge=0, le=10_000)
    # The same, for a run that is the runtime's only request in flight: nothing else
    # waits for the loop then, so a longer run may skip the hop too. A request that
    # arrives meanwhile waits at most this long. 0 turns it off.
    inline_alone_below_micros: int = Field(default=2000, ge=0, le=100_000)
    # Wanted in order; the ones the device lacks are skipped with a logged reason and
    # the CPU provider always comes last.
    execution_providers: list[str] = Field(default_factory=list, max_length=8)
    batching: BatchingConfig | None = None


class WarmupTensor(ConfigPart):
    """One input of a warm-up sample, as the REST protocol writes a tensor: its elements
    flat, in row-major order."""

    datatype: str
    shape: list[int] = Field(max_length=32)
    data: list[StrictBool | StrictInt | StrictFloat | StrictStr] = Field(
        max_length=MAX_WARMUP_ELEMENTS)


class WarmupSample(ConfigPart):
    """The inputs of one warm-up run, by input name. Whether they fit the model is known
    only once it loads (engine.py); here, that each tensor decodes."""

    inputs: dict[str, WarmupTensor] = Field(max_length=256)

    @model_validator(mode="after")
    def _decodes(self) -> WarmupSample:
        elements = sum(len(tensor.data) for tensor in self.inputs.values())
        if elements > MAX_WARMUP_ELEMENTS:
            raise ValueError(f"inputs hold {elements} elements together; a warm-up sample "
                             f"holds at most {MAX_WARMUP_ELEMENTS}")
        try:
            self.arrays()
        except InferenceError as error:  # the runtime's own reason, as a field error
            raise ValueError(error.message) from None
        return self

    def arrays(self) -> dict[str, np.ndarray]:
        """The inputs decoded as a request's are (tensors.py)."""
        return {name: from_values(name, tensor.datatype, tensor.shape, tensor.data)
                for name, tensor in self.inputs.items()}


class ModelConfig(ConfigPart):
    """config.json of a model in a standalone repository (every field optional)."""

    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    # What a version is warmed up with before it serves, in place of zeros (which a
    # model that reads a shape or an index from an input may not run on).
    warmup: list[WarmupSample] = Field(default_factory=list, max_length=MAX_WARMUP_SAMPLES)
    default_version: str | None = None
    # Unpinned requests split across versions by these weights.
    version_weights: dict[str, float] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _weights_are_usable(self) -> ModelConfig:
        if any(weight < 0 for weight in self.version_weights.values()):
            raise ValueError("versionWeights must not be negative")
        if self.version_weights and not sum(self.version_weights.values()) > 0:
            raise ValueError("versionWeights must give some version a positive weight")
        return self


class CapturePolicy(ConfigPart):
    """spec.dataCollection as the device keeps it (state.json holds it with the model)."""

    sample_rate: float = Field(default=0.0, ge=0, le=1)
    low_confidence_below: float = Field(default=0.0, ge=0, le=1)  # 0: off
    include_outputs: bool = False
    max_bytes_per_device: int = Field(default=64 << 20, ge=0)
    max_bytes_per_day: int = Field(default=256 << 20, ge=0)
