"""The EdgeModel and EdgeDevice resources as pydantic models.

These models are the single source of truth for both custom resources: the CRD YAML in
`crds/` is generated from them (`make crds`, see crdgen.py), and the operator parses
every object it reads with them. Cross-field rules are written twice on purpose, once
as CEL for the API server (`x-kubernetes-validations`) and once as a pydantic
validator; a shared set of valid and invalid examples proves the two agree.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from edgefleet.protocol.digests import DIGEST_PATTERN

GROUP = "edgefleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes label syntax: an optional DNS-subdomain prefix and a name of at most 63
# characters; values are empty or a name.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The schemes the operator can fetch artifacts from.
SOURCE_URI_PATTERN = r"^(file|https?)://\S+$"
# A retraining Job's output in the operator's dataset, within the model's own namespace:
# dataset:<model>/_retraining/<job number>/model.onnx (retraining.py).
DATASET_SOURCE = (r"dataset:(?P<model>[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)/_retraining/"
                  r"(?P<job>[1-9][0-9]{0,8})/model\.onnx")
# The API server's regular expressions (RE2) take no group names.
_UNNAMED = re.sub(r"\?P<\w+>", "", DATASET_SOURCE)
MODEL_SOURCE_PATTERN = rf"^((file|https?)://\S+|{_UNNAMED})$"
# spec.source.sha256 takes either case, as it always has: objects stored with upper-case
# hex must stay valid. The operator lowercases it into the one digest format
# (edgefleet.protocol.digests), which every status field that holds a digest enforces.
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
PERCENT_PATTERN = r"^(100|[1-9]?[0-9])%$"
BASE64_PATTERN = r"^[A-Za-z0-9+/]+={0,2}$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

LabelKey = Annotated[str, StringConstraints(max_length=317, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253,
                                              pattern=DNS_SUBDOMAIN_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=256)]
# Digests name blobs on disk (the operator's cache, the device store): one format only.
Digest = Annotated[str, StringConstraints(max_length=71, pattern=DIGEST_PATTERN)]
Message = Annotated[str, StringConstraints(max_length=2048)]
Count = Annotated[int, Field(ge=0)]

# Descriptions that several fields share, written once.
MODEL_NAME = "The EdgeModel's name"
ERROR_RATE = ("The median device's error rate: the share of its requests that failed inside "
              "the model")
P99_LATENCY = ("The median device's p99 request latency, in milliseconds; absent without a "
               "latency histogram")
CAPPED_REQUESTS = ("Requests answered or failed, each device counted at most as much as the "
                   "median device")
SAMPLES_UPLOADED = "Samples (kept requests) uploaded, in all: expired ones still count"
LABELS_UPLOADED = "Feedback labels uploaded, in all: expired ones still count"
BYTES_UPLOADED = "Bytes of the records uploaded, in all: expired ones still count"


class Resource(BaseModel):
    """Base of every schema part: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def cel(rule: str, message: str) -> dict[str, Any]:
    """An `x-kubernetes-validations` entry for a model's JSON schema."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


# ---------------------------------------------------------------- label selector

SELECTOR_VALUES_RULE = (
    "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
    " : (!has(self.values) || size(self.values) == 0)"
)


class LabelSelectorRequirement(Resource):
    """One requirement on a device's labels."""

    model_config = ConfigDict(json_schema_extra=cel(
        SELECTOR_VALUES_RULE,
        "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
    ))

    key: LabelKey = Field(description="The label key the requirement is about")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In: the label is present with one of `values`; NotIn: it is absent or "
                    "has none of them; Exists: it is present; DoesNotExist: it is absent")
    values: list[LabelValue] = Field(
        default_factory=list, max_length=64,
        description="The label values In and NotIn compare with; empty for Exists and "
                    "DoesNotExist")

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values != bool(self.values):
            raise ValueError("values must be non-empty for In and NotIn, "
                             "and empty for Exists and DoesNotExist")
        return self


class LabelSelector(Resource):
    """A standard Kubernetes label selector; an empty one selects every device."""

    match_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=64,
        description="Labels a device must have, each with exactly this value")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=32,
        description="Requirements on a device's labels; a device must meet all of them, and "
                    "matchLabels too")


# ---------------------------------------------------------------- EdgeModel


class SecretKeyRef(Resource):
    """A key of a Secret in the model's namespace."""

    name: ObjectName = Field(description="The Secret's name")
    key: Annotated[str, StringConstraints(min_length=1, max_length=253,
                                          pattern=SECRET_KEY_PATTERN)] = Field(
        default="cosign.pub",
        description="The key of the Secret that holds the publisher's PEM public key")


SIGNATURE_PAIR_RULE = "has(self.signature) == has(self.publicKeyRef)"


class ArtifactSource(Resource):
    """An ONNX model file: where the operator fetches it, the digest it must have, and
    optionally the publisher's signature."""

    model_config = ConfigDict(json_schema_extra=cel(
        SIGNATURE_PAIR_RULE, "signature and publicKeyRef go together"))

    uri: Annotated[str, StringConstraints(max_length=2048, pattern=MODEL_SOURCE_PATTERN)] = Field(
        description="Where the operator fetches the ONNX file: file://, http:// or https://, "
                    "or dataset:MODEL/_retraining/N/model.onnx for a retraining Job's output")
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] = Field(
        description="The artifact's SHA-256 digest, 64 hex characters")
    signature: Annotated[str, StringConstraints(
        min_length=1, max_length=1024, pattern=BASE64_PATTERN)] | None = Field(
        default=None,
        description="The publisher's signature of the artifact, base64, as `cosign "
                    "sign-blob --key` writes it (ECDSA P-256 over SHA-256); the operator "
                    "sends nothing the signature does not verify")
    public_key_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret in the model's namespace holding the publisher's PEM public key "
                    "(key `cosign.pub` unless named)")

    @model_validator(mode="after")
    def _signature_with_key(self) -> ArtifactSource:
        if (self.signature is None) != (self.public_key_ref is None):
            raise ValueError("signature and publicKeyRef go together")
        return self


class BatchingSettings(Resource):
    """Dynamic batching on the device: requests to one version whose inputs agree apart
    from the first dimension run as one batch. Models with a fixed first dimension are
    never batched."""

    max_batch_size: int = Field(default=1, ge=1, le=1024,
                                description="Most rows in one batch; 1 turns batching off")
    max_delay_micros: int = Field(
        default=0, ge=0, le=1_000_000,
        description="How long a batch may wait to fill, in microseconds, counted from its "
                    "oldest request; it waits only while requests overlap, so a lone request "
                    "is never delayed")


ProviderName = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                                pattern=r"^[A-Za-z][A-Za-z0-9]*$")]


class RuntimeSettings(Resource):
    """ONNX Runtime settings for the model on each device."""

    intra_op_threads: int = Field(default=0, ge=0, le=256,
                                  description="0 lets ONNX Runtime choose")
    inter_op_threads: int = Field(
        default=0, ge=0, le=256,
        description="ONNX Runtime's inter-op thread count; 0 lets ONNX Runtime choose")
    batching: BatchingSettings | None = Field(
        default=None, description="Dynamic batching; absent: no batching")
    execution_providers: list[ProviderName] = Field(
        default_factory=list, max_length=8,
        description="ONNX Runtime execution providers in order of preference, e.g. "
                    "CUDAExecutionProvider; the CPU provider always comes last. A device "
                    "that lacks one runs on the next and says so in its status")


APPROVAL_ANNOTATION = f"{GROUP}/approved-step"
# On an EdgeDevice that registered itself with a fleet token: "true" lets it serve models.
DEVICE_APPROVED_ANNOTATION = f"{GROUP}/approved"


class RolloutStep(Resource):
    """One step of a Canary rollout."""

    percent: int = Field(ge=0, le=100, description="Share of targeted devices on the new version")
    pause_seconds: int | None = Field(
        default=None, ge=0, le=7 * 24 * 3600,
        description="Once the step's devices are ready, wait this long before the next step")
    manual_approval: bool = Field(
        default=False,
        description=f"Once the step's devices are ready, wait until the annotation "
                    f"{APPROVAL_ANNOTATION} is VERSION/STEP: the version rolled out and "
                    "this step's number (1-based) or more")


class RolloutAnalysis(Resource):
    """Gates on what the devices measure of the new version: a step is promoted only
    within these thresholds, and a breach rolls the rollout back (or halts it)."""

    min_requests: int = Field(
        default=100, ge=0,
        description="Requests (answered or failed) to the new version that each step needs "
                    "of its own before it may be promoted; each device counts at most as much "
                    "as the cohort's median device")
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1,
        description="Highest error rate of the new version: the median device's share of "
                    "requests that failed inside the model")
    max_p99_latency_ms: float | None = Field(
        default=None, gt=0,
        description="Highest p99 request latency of the new version, in milliseconds, the "
                    "median device's; absent: not judged")
    max_drift: float | None = Field(
        default=None, ge=0,
        description="Highest population stability index (PSI) of the new version's top-class "
                    "shares against the stable version's (0.1 is commonly read as a small "
                    "shift, 0.25 as a large one); absent: not judged")
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1,
        description="Least field accuracy of the new version: the share of its answers "
                    "that feedback labelled and found right (needs spec.dataCollection)")
    max_accuracy_drop: float | None = Field(
        default=None, ge=0, le=1,
        description="How far the new version's field accuracy may fall below the stable "
                    "version's (not judged while the stable version has fewer than "
                    "minLabelled labelled answers)")
    min_labelled: int = Field(
        default=100, ge=1, le=1_000_000,
        description="Labelled answers each step needs before its field accuracy is judged")


CANARY_STEPS_RULE = (
    "self.strategy == 'Canary' ? (has(self.steps) && size(self.steps) > 0)"
    " : (!has(self.steps) || size(self.steps) == 0)"
)


class Rollout(Resource):
    """How a new spec.version replaces the stable version on the targeted devices."""

    model_config = ConfigDict(json_schema_extra=cel(
        CANARY_STEPS_RULE, "steps are required for Canary and not allowed for AllAtOnce"))

    strategy: Literal["AllAtOnce", "Canary"] = Field(
        default="AllAtOnce",
        description="AllAtOnce: one step to 100% of the targeted devices; Canary: the steps "
                    "in `steps`")
    steps: list[RolloutStep] = Field(
        default_factory=list, max_length=20,
        description="Canary only: the steps, whose percents must not decrease; a last 100% "
                    "step is implied when the last one stops short")
    max_unavailable: (
        Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(pattern=PERCENT_PATTERN)]
    ) = Field(default="25%", description="Devices switching at once: a count or a percent")
    paused: bool = Field(
        default=False,
        description="Set to true to freeze a rollout where it stands (phase Paused); false "
                    "lets it go on")
    auto_rollback: bool = Field(
        default=True,
        description="On a breach (a device failing on the new version, or a failed analysis) "
                    "every device goes back to the stable version (phase RolledBack); false "
                    "halts the rollout where it stands instead (phase Paused)")
    analysis: RolloutAnalysis | None = Field(
        default=None,
        description="Thresholds on what the devices measure; absent: steps are not judged "
                    "on traffic, only devices failing on the new version stop it")
    offline_timeout_seconds: int = Field(
        default=300, ge=0, le=7 * 24 * 3600,
        description="A device of a step that stays offline this long no longer holds the "
                    "step back; it is named in an Event")

    @model_validator(mode="after")
    def _steps_match_strategy(self) -> Rollout:
        if (self.strategy == "Canary") != bool(self.steps):
            raise ValueError("steps are required for Canary and not allowed for AllAtOnce")
        return self


ModelVersion = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                                pattern=VERSION_PATTERN)]


class Experiment(Resource):
    """An A/B test: a second version served beside the stable one on every targeted
    device, taking `weight` percent of the unpinned requests."""

    version: ModelVersion = Field(description="The second version; it must differ from "
                                              "spec.version")
    source: ArtifactSource = Field(description="The second version's artifact")
    weight: int = Field(ge=1, le=99, description="Percent of unpinned requests it takes")


class DatasetSource(Resource):
    """A dataset the operator fetches like a model artifact (the same places are allowed):
    an `.npz` file with one array per model input (or `inputs` for a one-input model)
    and, for validation, `labels`."""

    uri: Annotated[str, StringConstraints(max_length=2048, pattern=SOURCE_URI_PATTERN)] = Field(
        description="file://, http:// or https://")
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] = Field(
        description="The file's SHA-256 digest, 64 hex characters")


VARIANT_NAME_PATTERN = DNS_LABEL_PATTERN
VariantName = Annotated[str, StringConstraints(min_length=1, max_length=63,
                                               pattern=VARIANT_NAME_PATTERN)]
OPTIMIZE_RULES = [
    {"rule": "!(has(self.quantization) && has(self.fp16) && self.fp16)",
     "message": "quantization and fp16 do not go together"},
    {"rule": "has(self.quantization) && self.quantization == 'staticInt8'"
             " ? has(self.calibration) : !has(self.calibration)",
     "message": "calibration is required for staticInt8 and allowed only there"},
]


class Optimization(Resource):
    """How a variant is made from the verified source, in the operator's build worker."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": OPTIMIZE_RULES})

    quantization: Literal["dynamicInt8", "staticInt8"] | None = Field(
        default=None,
        description="int8 weights (dynamicInt8) or weights and activations calibrated on "
                    "`calibration` (staticInt8), with ONNX Runtime's quantization tools")
    calibration: DatasetSource | None = Field(
        default=None, description="Inputs staticInt8 calibrates on (the first 1,000 rows)")
    fp16: bool = Field(default=False,
                       description="float16 weights and arithmetic; inputs and outputs stay "
                                   "float32")
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] | None = Field(
        default=None, description="ONNX Runtime graph optimizations applied ahead of time")

    @model_validator(mode="after")
    def _one_numeric_format(self) -> Optimization:
        if self.quantization and self.fp16:
            raise ValueError("quantization and fp16 do not go together")
        if (self.quantization == "staticInt8") != (self.calibration is not None):
            raise ValueError("calibration is required for staticInt8 and allowed only there")
        return self


class RequiredCapabilities(Resource):
    """What a device must report (EdgeDevice status.capabilities) to get a variant."""

    execution_providers: list[ProviderName] = Field(
        default_factory=list, max_length=8, description="Providers the device must all have")
    architectures: list[ShortText] = Field(
        default_factory=list, max_length=8,
        description="Any of these CPU architectures, e.g. x86_64, aarch64")
    min_memory_bytes: Count | None = Field(
        default=None, description="Least physical memory the device reported, in bytes")
    min_cpus: Count | None = Field(default=None,
                                   description="Least number of CPUs the device reported")


class Variant(Resource):
    """A build of the model for the devices it matches; a device matching no variant
    gets the source. The first variant a device matches is the one it gets."""

    name: VariantName = Field(description="The variant's name, unique in spec.variants")
    selector: LabelSelector | None = Field(
        default=None, description="Devices of the model's selector with these labels too")
    capabilities: RequiredCapabilities | None = None
    optimize: Optimization = Field(default_factory=Optimization)
    runtime: RuntimeSettings | None = Field(
        default=None, description="Replaces spec.runtime on the devices that get the variant")


class Validation(Resource):
    """Every variant is scored against the source on a dataset before any device gets it."""

    dataset: DatasetSource
    metric: Literal["accuracy", "topK", "meanSquaredError"] = Field(
        default="accuracy",
        description="accuracy and topK read class ids from `labels`; meanSquaredError reads "
                    "values shaped like the model's first output")
    k: int = Field(default=5, ge=1, le=1000, description="For topK")
    max_drop: float = Field(
        ge=0, description="How much worse than the source a variant may score: less "
                          "accuracy, or more mean squared error; one worse is withheld")


MiB = 1 << 20


class DataCollection(Resource):
    """What devices keep of the requests the model answers, to send back for retraining,
    and whether they take feedback (true labels) for them. Off unless set; `{}` takes
    feedback and keeps no samples."""

    sample_rate: float = Field(default=0, ge=0, le=1,
                               description="Share of requests kept at random")
    low_confidence_below: float | None = Field(
        default=None, gt=0, le=1,
        description="Also keep every request whose top class's probability is below this")
    include_outputs: bool = Field(default=False,
                                  description="Keep the model's outputs with the inputs")
    max_bytes_per_device: int = Field(
        default=64 * MiB, ge=MiB, le=1 << 40,
        description="On-disk budget for samples not yet uploaded, on each device; past it "
                    "the oldest go first, counted")
    max_bytes_per_day: int = Field(default=256 * MiB, ge=MiB, le=1 << 40,
                                   description="Upload budget of each device per day")
    retention_days: int = Field(default=30, ge=1, le=3650,
                                description="How long the cloud keeps the samples")


ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
RESERVED_ENV_PREFIX = "EDGEFLEET_"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
RESOURCE_NAME_PATTERN = r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
Argument = Annotated[str, StringConstraints(max_length=4096)]
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=253,
                                           pattern=SECRET_KEY_PATTERN)]
Quantity = Annotated[str, StringConstraints(max_length=32, pattern=QUANTITY_PATTERN)]
ResourceName = Annotated[str, StringConstraints(max_length=128, pattern=RESOURCE_NAME_PATTERN)]


class KeySelector(Resource):
    """A key of a Secret or ConfigMap in the model's namespace."""

    name: ObjectName = Field(description="A Secret or ConfigMap in the model's namespace")
    key: KeyName = Field(description="The key whose value the variable takes")


class EnvVarSource(Resource):
    """Where a variable's value comes from: exactly one of secretKeyRef and
    configMapKeyRef."""

    model_config = ConfigDict(json_schema_extra=cel(
        "has(self.secretKeyRef) != has(self.configMapKeyRef)",
        "exactly one of secretKeyRef and configMapKeyRef"))

    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret")
    config_map_key_ref: KeySelector | None = Field(default=None,
                                                   description="A key of a ConfigMap")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("exactly one of secretKeyRef and configMapKeyRef")
        return self


ENV_RULES = [
    {"rule": f"!self.name.startsWith('{RESERVED_ENV_PREFIX}')",
     "message": f"names starting with {RESERVED_ENV_PREFIX} are the operator's to set"},
    {"rule": "has(self.value) != has(self.valueFrom)",
     "message": "exactly one of value and valueFrom"},
]


class EnvVar(Resource):
    """An environment variable of the trainer; names starting with EDGEFLEET_ are the
    operator's to set."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": ENV_RULES})

    name: Annotated[str, StringConstraints(min_length=1, max_length=128,
                                           pattern=ENV_NAME_PATTERN)] = Field(
        description="The variable's name")
    value: Argument | None = Field(
        default=None, description="Its value; exactly one of value and valueFrom")
    value_from: EnvVarSource | None = Field(
        default=None, description="Where its value comes from; exactly one of value and "
                                  "valueFrom")

    @model_validator(mode="after")
    def _checked(self) -> EnvVar:
        if self.name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(f"names starting with {RESERVED_ENV_PREFIX} are the operator's "
                             "to set")
        if (self.value is None) == (self.value_from is None):
            raise ValueError("exactly one of value and valueFrom")
        return self


class ContainerResources(Resource):
    """The trainer's compute resources, as a Kubernetes container states them."""

    limits: dict[ResourceName, Quantity] = Field(
        default_factory=dict, max_length=8,
        description="The most the container may use, by resource name (e.g. cpu, memory), "
                    "as Kubernetes quantities")
    requests: dict[ResourceName, Quantity] = Field(
        default_factory=dict, max_length=8,
        description="What the container is scheduled with, by resource name (e.g. cpu, "
                    "memory), as Kubernetes quantities")


class TrainerContainer(Resource):
    """The one container of a retraining Job. Only these fields: the operator creates the
    Job with its own rights, so what a pod may do (service account, volumes, host access,
    privileges) is the cluster admin's to decide, not the template's."""

    name: Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN)] = Field(
        default="trainer", description="The container's name")
    image: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")] = (
        Field(description="The trainer's container image"))
    command: list[Argument] = Field(
        default_factory=list, max_length=32,
        description="Replaces the image's entrypoint; empty: the image's own")
    args: list[Argument] = Field(
        default_factory=list, max_length=128,
        description="Arguments to the entrypoint; empty: the image's own")
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64,
        description="Environment variables besides the ones the operator sets "
                    "(EDGEFLEET_DATASET, EDGEFLEET_OUTPUT and others)")
    resources: ContainerResources | None = Field(
        default=None, description="Resource requests and limits of the container")
    working_dir: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="The container's working directory; absent: the image's")


class TrainerPodSpec(Resource):
    """The retraining pod: its one container and where it may run. The operator sets the
    rest (service account, security context, a writable /tmp)."""

    containers: list[TrainerContainer] = Field(
        min_length=1, max_length=1, description="Exactly one container, the trainer")
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=16,
        description="Labels the pod's node must have, as a pod's nodeSelector")


class TrainerPodTemplate(Resource):
    """The template of the Job's pod."""

    spec: TrainerPodSpec = Field(description="The pod's spec")


class TrainerJobSpec(Resource):
    """The Job's spec, limited to what a trainer needs."""

    backoff_limit: int = Field(default=1, ge=0, le=10,
                               description="Retries of a failed pod before the Job fails")
    active_deadline_seconds: int = Field(default=86400, ge=60, le=7 * 86400,
                                         description="How long the Job may run in all")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=30 * 86400,
        description="Seconds after the Job finishes before Kubernetes deletes it; absent: "
                    "it is kept")
    template: TrainerPodTemplate = Field(description="The pod template")


class JobTemplate(Resource):
    """A `batch/v1` Job template, limited to what a trainer needs."""

    spec: TrainerJobSpec = Field(description="The Job's spec")


class Retraining(Resource):
    """Trains a new version on the labelled field data: once the dataset holds
    `minNewLabelledSamples` labels more than when the last Job was created, the operator
    creates one Job from `jobTemplate` (in namespaces the cluster admin allows), with
    EDGEFLEET_DATASET, EDGEFLEET_MODEL, EDGEFLEET_BASE_VERSION and EDGEFLEET_OUTPUT in its
    environment. Its output (model.onnx, model.sha256, evaluation.json) becomes a
    candidate."""

    min_new_labelled_samples: int = Field(
        ge=1, le=1_000_000_000,
        description="New labels the dataset must hold, beyond those it held when the last Job "
                    "was created, before the next Job is created")
    job_template: JobTemplate
    rollout: Literal["Manual", "Canary"] = Field(
        default="Manual",
        description="Canary: the operator sets spec.version and spec.source to the "
                    "candidate, which rolls out through spec.rollout's gates. Manual: the "
                    "candidate waits in status.retraining for a person to promote")


VARIANTS_LIST_MAP = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
CONDITIONS_LIST_MAP = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


SPEC_RULES = [{"rule": "!has(self.retraining) || has(self.dataCollection)",
               "message": "retraining trains on what dataCollection keeps: set both"}]


class EdgeModelSpec(Resource):
    """The model to serve: its version and artifact, which devices serve it, and how a new
    version reaches them."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": SPEC_RULES})

    version: ModelVersion = Field(
        description="The version to serve; changing it, with source, rolls it out")
    source: ArtifactSource = Field(description="The artifact of spec.version")
    selector: LabelSelector = Field(description="Which EdgeDevices in the namespace serve it")
    runtime: RuntimeSettings | None = Field(
        default=None,
        description="ONNX Runtime settings on the devices; a variant's runtime replaces them "
                    "on the devices that get the variant")
    rollout: Rollout = Field(
        default_factory=Rollout,
        description="How a new version replaces the stable one; absent: AllAtOnce, with the "
                    "defaults shown")
    experiment: Experiment | None = None
    variants: list[Variant] = Field(
        default_factory=list, max_length=8, json_schema_extra=VARIANTS_LIST_MAP,
        description="Builds of each version for the devices they match, keyed by name; a "
                    "device gets the first it matches, or the source")
    validation: Validation | None = None
    data_collection: DataCollection | None = None
    retraining: Retraining | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EdgeModelSpec:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique, got {names}")
        if self.retraining and not self.data_collection:
            raise ValueError("retraining trains on what dataCollection keeps: set both")
        return self


ConditionStatus = Literal["True", "False", "Unknown"]
# Devices a rollout holds back at once; past this, devices under pressure are waited for
# like any other (the list lives in one object's status).
MAX_HELD_BACK = 100


class Condition(Resource):
    """A status condition as the Kubernetes API conventions describe it."""

    type: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="The condition's type, e.g. Ready; one condition per type")
    status: ConditionStatus = Field(description="True, False or Unknown")
    reason: Annotated[str, StringConstraints(max_length=128,
                                             pattern=CONDITION_REASON_PATTERN)] = Field(
        description="Why the condition has its status, in one CamelCase word")
    message: Message = Field(default="", description="Details for people to read")
    last_transition_time: datetime = Field(description="When the status last changed")
    observed_generation: int | None = Field(
        default=None, ge=0,
        description="The metadata.generation the condition was set for; EdgeDevice "
                    "conditions leave it out")


ModelPhase = Literal["Pending", "Progressing", "Healthy", "Degraded", "Paused", "RolledBack",
                     "Failed"]


class DeviceCounts(Resource):
    """Counts of the devices the model targets."""

    targeted: Count = Field(
        default=0, description="Devices the selector matches (none while the spec is invalid)")
    updated: Count = Field(
        default=0, description="Targeted devices that hold or are getting the spec's version, "
                               "those that failed on it not counted")
    ready: Count = Field(
        default=0, description="Targeted devices serving the version assigned to them, not "
                               "counting those offline longer than "
                               "spec.rollout.offlineTimeoutSeconds")
    failed: Count = Field(default=0,
                          description="Targeted devices that failed on the version assigned "
                                      "to them")
    offline: Count = Field(default=0, description="Targeted devices Offline now")


class ArtifactStatus(Resource):
    """An artifact the operator fetched and verified."""

    version: ShortText = Field(description="The version it holds")
    digest: Digest = Field(description="Its digest: sha256: and 64 lower-case hex digits")
    size_bytes: Count = Field(description="Its size, in bytes")
    source: ArtifactSource | None = Field(
        default=None,
        description="Where it was fetched from: a gateway that starts after the spec moved "
                    "on fetches the stable version from here (checked as spec.source is)")


class AnalysisStatus(Resource):
    """The last judgement of the candidate version's traffic (see analysis.py)."""

    verdict: Literal["Pass", "Wait", "Fail"] = Field(
        description="Pass: within every threshold; Wait: too few requests or labelled answers "
                    "to judge; Fail: a threshold is breached")
    requests: Count = Field(
        description="Requests to the new version on the cohort's devices, answered or failed, "
                    "each device counted at most as much as the median device")
    error_rate: float = Field(ge=0, le=1, description=ERROR_RATE)
    p99_latency_ms: float | None = Field(default=None, ge=0, description=P99_LATENCY)
    drift: float | None = Field(default=None, ge=0, description="Population stability index")
    labelled: Count = Field(default=0, description="Labelled answers counted toward "
                                                   "minLabelled")
    accuracy: float | None = Field(default=None, ge=0, le=1,
                                   description="Field accuracy of the new version")
    stable_accuracy: float | None = Field(default=None, ge=0, le=1,
                                          description="Field accuracy of the stable version")
    message: Message = Field(default="",
                             description="The verdict in words, with figures and thresholds")


class RolloutStatus(Resource):
    """The rollout in progress (or stopped) from the stable version to the spec's."""

    target: ArtifactStatus = Field(description="The version rolling out, verified")
    step: int = Field(ge=1, description="The current step, 1-based")
    steps: int = Field(ge=1, description="Steps in all (a last 100% step is implied)")
    # Devices whose rank key (see rollout.py) is at most this are on the target; "" is
    # none. A key, not a count, so that devices joining or leaving never reshuffle it.
    cohort_limit: Annotated[str, StringConstraints(max_length=16)] = Field(
        default="",
        description="The highest rank key in the cohort: devices whose key (the first 16 hex "
                    "digits of sha256 of namespace/model/device) is at most this are in it "
                    "(those held back, or all once rolled back, stay on the stable version); "
                    "empty: none yet")
    started_at: datetime = Field(description="When the rollout began")
    step_started_at: datetime = Field(description="When the current step began")
    step_ready_at: datetime | None = Field(
        default=None, description="When every device of the step was ready")
    # Progressing, or stopped by a breach: RolledBack (everyone back on the stable
    # version) or Halted (frozen where it stood, autoRollback being off).
    state: Literal["Progressing", "RolledBack", "Halted"] = Field(
        default="Progressing",
        description="RolledBack: a breach sent every device back to the stable version; "
                    "Halted: a breach froze the rollout where it stood (autoRollback off). "
                    "Either stays until the spec names another version")
    message: Message = Field(default="", description="Why it was rolled back or halted")
    analysis: AnalysisStatus | None = None
    # The candidate's requests and labelled answers when the step began: each step
    # waits for minRequests and minLabelled more of its own.
    step_start_requests: Count = Field(
        default=0, description="analysis.requests when the current step began")
    step_start_labelled: Count = Field(
        default=0, description="analysis.labelled when the current step began")
    held_back: list[ObjectName] = Field(
        default_factory=list, max_length=MAX_HELD_BACK,
        description="Devices of the cohort kept on the stable version while under "
                    "MemoryPressure, DiskPressure or Overheating; each joins once it clears")


HistoryOutcome = Literal["Promoted", "RolledBack", "Superseded"]


class HistoryEntry(Resource):
    """What became of a version: promoted to stable, rolled back, or superseded."""

    version: ShortText = Field(description="The version")
    digest: Digest = Field(description="Its source's digest")
    outcome: HistoryOutcome = Field(
        description="Promoted: it became the stable version; RolledBack: a breach sent the "
                    "devices back from it; Superseded: the spec moved on mid-rollout")
    at: datetime = Field(description="When it happened")
    message: Message = Field(default="", description="Why it was rolled back or superseded")


class TrafficSummary(Resource):
    """What devices reported for one version, summarised robustly (see analysis.py)."""

    requests: Count = Field(description=CAPPED_REQUESTS)
    error_rate: float = Field(ge=0, le=1, description=ERROR_RATE)
    p99_latency_ms: float | None = Field(default=None, ge=0, description=P99_LATENCY)
    labelled: Count = Field(default=0, description="Answers feedback labelled")
    accuracy: float | None = Field(default=None, ge=0, le=1,
                                   description="Share of the labelled answers that were right")


class VersionTraffic(TrafficSummary):
    """One version the devices serve, and how it answers there."""

    version: ShortText = Field(description="The version")
    devices: Count = Field(description="Devices that answered with it")


class ExperimentStatus(Resource):
    """The A/B test running on the devices (see spec.experiment)."""

    artifact: ArtifactStatus = Field(description="The experiment's version, verified")
    weight: int = Field(ge=1, le=99, description="Percent of unpinned requests it takes")
    ready: Count = Field(description="Devices serving both versions")
    control: TrafficSummary | None = Field(
        default=None, description="The stable version's traffic on the targeted devices")
    candidate: TrafficSummary | None = Field(
        default=None, description="The experiment version's traffic on the targeted devices")


VariantPhase = Literal["Building", "Ready", "Withheld", "Failed"]


class VariantStatus(Resource):
    """One variant of one version: built, scored and shipped (Ready), or not."""

    name: VariantName = Field(description="The variant's name in spec.variants")
    version: ShortText = Field(description="The version it was built from")
    source_digest: Digest = Field(description="The source it was built from")
    phase: VariantPhase = Field(
        description="Building; Ready: built, scored within validation.maxDrop and shipped to "
                    "the devices it matches; Withheld: scored worse than maxDrop allows; "
                    "Failed: the build or its scoring failed, tried again later")
    digest: Digest | None = Field(default=None, description="The build's digest, once built")
    bytes: Count | None = Field(default=None, description="The build's size, in bytes")
    accuracy: float | None = Field(
        default=None, description="Its score on spec.validation's dataset and metric")
    source_accuracy: float | None = Field(default=None,
                                          description="The source's score on the same")
    latency_ms: float | None = Field(
        default=None, ge=0, description="One row's inference, median, on the operator's CPU")
    source_latency_ms: float | None = Field(
        default=None, ge=0,
        description="The source's one-row inference, median, on the operator's CPU, in "
                    "milliseconds")
    build_seconds: float | None = Field(
        default=None, ge=0, description="How long the build itself took, in seconds")
    built_at: datetime | None = Field(default=None, description="When the build finished")
    message: Message = Field(default="",
                             description="The scores, or why it was withheld or failed")


class DataStatus(Resource):
    """What devices uploaded of a model's kept requests (spec.dataCollection), in all."""

    samples: Count = Field(default=0, description=SAMPLES_UPLOADED)
    labelled: Count = Field(default=0, description="Feedback labels")
    bytes: Count = Field(default=0, description=BYTES_UPLOADED)
    devices: Count = Field(default=0, description="Devices that uploaded any")
    last_upload: datetime | None = Field(
        default=None, description="When the dataset last stored records of the model")


class RetrainingCandidate(Resource):
    """A version a retraining Job made, validated: its file matches its sha256, and its
    evaluation is read."""

    version: ModelVersion = Field(description="Its version: the base version and -retrain.N")
    source: ArtifactSource = Field(
        description="Its model in the dataset, dataset:MODEL/_retraining/N/model.onnx, with "
                    "the digest the Job wrote in model.sha256")
    job: ObjectName = Field(description="The Job that made it")
    metric: Annotated[str, StringConstraints(max_length=64,
                                             pattern=r"^[A-Za-z][A-Za-z0-9]*$")] = Field(
        description="The metric its evaluation names, e.g. accuracy")
    value: float = Field(description="The candidate's score on held-out labelled samples")
    base_value: float | None = Field(default=None,
                                     description="The base version's score on the same samples")
    samples: Count = Field(description="Labelled samples the evaluation scored")
    found_at: datetime = Field(description="When the operator read the evaluation")


class RetrainingStatus(Resource):
    """spec.retraining's Jobs: how many were created and how the last one went."""

    jobs: Count = Field(default=0, description="Jobs created so far; the next is number jobs+1")
    job: ObjectName | None = Field(default=None, description="The last Job")
    base_version: ModelVersion | None = Field(
        default=None, description="The version devices served when the last Job was created")
    phase: Literal["Running", "Succeeded", "Failed"] | None = Field(
        default=None,
        description="Of the last Job. Running; Succeeded: its output is the candidate; "
                    "Failed: it failed, was deleted, could not be created, or its output is "
                    "not a candidate")
    labelled_at_last_job: Count = Field(default=0,
                                        description="status.data.labelled when it was created")
    message: Message = Field(
        default="", description="What happened last, or what stops the next Job")
    candidate: RetrainingCandidate | None = Field(
        default=None, description="The last Job's validated output")


class EdgeModelStatus(Resource):
    """What the operator observes of the model on its devices, and where its rollout
    stands."""

    phase: ModelPhase = Field(
        default="Pending",
        description="Pending: nothing verified or nothing ready yet; Progressing: devices are "
                    "moving; Healthy: every targeted device serves its assigned version; "
                    "Degraded: devices failed, or are offline past the timeout; Paused: a "
                    "rollout is paused or halted; RolledBack: a rollout was rolled back; "
                    "Failed: the spec cannot be acted on")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this status was computed for")
    stable_version: ShortText | None = Field(
        default=None,
        description="The version every targeted device serves while no rollout moves: the "
                    "last one promoted; absent until the first is")
    stable_artifact: ArtifactStatus | None = Field(
        default=None, description="What devices outside the rollout's cohort serve")
    rollout: RolloutStatus | None = None
    # "2/3": printer columns cannot compute, so the operator writes it.
    step_summary: ShortText | None = Field(default=None,
                                           description="rollout step/steps, while one runs")
    history: list[HistoryEntry] = Field(default_factory=list, max_length=10,
                                        description="Recent versions, newest last")
    experiment: ExperimentStatus | None = None
    devices: DeviceCounts = Field(default_factory=DeviceCounts)
    # "3/5": printer columns cannot compute, so the operator writes it.
    ready_summary: ShortText = Field(default="0/0", description="ready/targeted devices")
    updated_summary: ShortText = Field(default="0/0",
                                       description="devices on the spec's version/targeted")
    artifact: ArtifactStatus | None = Field(
        default=None,
        description="The spec's newest verified artifact, once its variants are built or "
                    "refused; devices keep what they serve until then")
    variants: list[VariantStatus] = Field(
        default_factory=list, max_length=24,
        description="The variants of the spec's version, and of the versions devices still "
                    "serve")
    inference: list[VersionTraffic] = Field(
        default_factory=list, max_length=8,
        description="Each version devices serve: requests, errors, latency and field "
                    "accuracy, summarised over its devices")
    data: DataStatus | None = Field(
        default=None, description="What the dataset holds of the model's kept requests")
    retraining: RetrainingStatus | None = None
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, json_schema_extra=CONDITIONS_LIST_MAP,
        description="Ready, ArtifactReady and Progressing; Experiment while spec.experiment "
                    "is set; VariantsReady while spec.variants is set")


# ---------------------------------------------------------------- EdgeDevice


class SecretRef(Resource):
    """A Secret in the device's namespace."""

    name: ObjectName = Field(description="The Secret's name")


class EdgeDeviceSpec(Resource):
    """How the device may enrol, and whether it is revoked. Its labels (metadata.labels)
    decide which EdgeModels it serves."""

    bootstrap_token_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret in the device's namespace whose key `token` admits the device "
                    "to enrol once; absent on a device that enrolled with a fleet "
                    "enrolment token")
    revoked: bool = Field(
        default=False,
        description="Ends the device's session and refuses its certificate; it keeps "
                    "serving what it holds. Enrolling again needs a new bootstrap token")


class Capabilities(Resource):
    """What the device reported of itself when its session began; variants' capabilities
    are matched against it."""

    arch: ShortText = Field(
        default="", description="CPU architecture as Python's platform.machine() names it, "
                                "e.g. x86_64, aarch64")
    cpus: Count = Field(default=0, description="Logical CPUs of the host")
    memory_bytes: Count = Field(default=0,
                                description="Physical memory of the host, in bytes")
    execution_providers: list[ShortText] = Field(
        default_factory=list, max_length=16,
        description="ONNX Runtime execution providers available on the device")


ModelState = Literal["Pending", "Downloading", "Verifying", "Loading", "Ready", "Failed",
                     "Removing"]


class DeviceModelStatus(Resource):
    """One model version the device holds, as it last reported."""

    name: ObjectName = Field(description=MODEL_NAME)
    version: ShortText = Field(description="The version")
    digest: Digest = Field(description="The digest of what it holds: the variant's build, or "
                                       "the source")
    state: ModelState = Field(
        description="Pending, Downloading, Verifying, Loading, Ready (serving), Failed (why "
                    "in message) or Removing")
    message: Message = Field(default="",
                             description="Why it failed, or a note such as a missing "
                                         "execution provider")
    variant: VariantName | None = Field(default=None,
                                        description="The variant it holds; absent: the source")
    execution_providers: list[ShortText] = Field(
        default_factory=list, max_length=16,
        description="The providers the loaded model runs on, in order")
    bytes_done: Count | None = Field(default=None,
                                     description="While Downloading: the bytes the device holds")
    bytes_total: Count | None = Field(default=None,
                                      description="While Downloading: the artifact's size")


LATENCY_COUNTS_RULE = ("size(self.latencyCounts) == 0 || "
                       "size(self.latencyCounts) == size(self.latencyBoundsSeconds) + 1")
CORRECT_RULE = "self.correct <= self.labelled"


class VersionInference(Resource):
    """How one loaded model version answered on the device since it was loaded (the
    device's heartbeats carry it; rollout analysis sums it over a cohort)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": LATENCY_COUNTS_RULE,
         "message": "latencyCounts needs one count per bound and one above them"},
        {"rule": CORRECT_RULE, "message": "correct cannot exceed labelled"}]})

    model: ObjectName = Field(description=MODEL_NAME)
    version: ShortText = Field(description="The version")
    requests: Count = Field(description="Requests answered; requests refused as malformed "
                                        "count in neither requests nor errors")
    errors: Count = Field(description="Requests that failed inside the model")
    latency_bounds_seconds: list[float] = Field(
        default_factory=list, max_length=32,
        description="Upper bounds of the request-latency histogram's buckets, in seconds")
    latency_counts: list[Count] = Field(
        default_factory=list, max_length=33,
        description="Per bucket up to each bound; the last, above every bound")
    top_class_counts: list[Count] = Field(
        default_factory=list, max_length=64,
        description="Answered rows per top class of the primary output")
    labelled: Count = Field(default=0, description="Answered rows feedback labelled")
    correct: Count = Field(default=0, description="Labelled rows the version got right")

    @model_validator(mode="after")
    def _one_count_per_bucket(self) -> VersionInference:
        if self.latency_counts and len(self.latency_counts) != len(
                self.latency_bounds_seconds) + 1:
            raise ValueError("latencyCounts needs one count per bound and one above them")
        if self.correct > self.labelled:
            raise ValueError("correct cannot exceed labelled")
        return self


class DeviceHealth(Resource):
    """The device itself, from its last heartbeat (figures it cannot read are absent;
    in a container with limits, memory and CPU are the container's)."""

    cpu_percent: float | None = Field(default=None, ge=0, le=100,
                                      description="CPU used, of what the runtime may use")
    cpu_throttled_percent: float | None = Field(
        default=None, ge=0, le=100, description="CPU quota periods throttled (a quota only)")
    memory_available_bytes: Count | None = Field(
        default=None, description="Memory available, in bytes (under a container's limit: "
                                  "what is left of it)")
    memory_total_bytes: Count | None = Field(
        default=None, description="Memory in all, in bytes (a container's limit where it is "
                                  "below the host's memory)")
    disk_free_bytes: Count | None = Field(default=None,
                                          description="free on the data directory's disk")
    disk_total_bytes: Count | None = Field(default=None,
                                           description="Size of the data directory's disk, "
                                                       "in bytes")
    temperature_celsius: float | None = Field(default=None, ge=-100, le=200,
                                              description="the hottest thermal zone")
    uptime_seconds: Count | None = Field(default=None, description="the host's uptime")
    restarts: Count | None = Field(default=None, description="runtime starts on its data "
                                                             "directory, less one")
    runtime_version: ShortText | None = Field(default=None,
                                              description="The edge runtime's release")
    os: ShortText | None = Field(default=None, description="The operating system, e.g. Linux")
    kernel: ShortText | None = Field(default=None,
                                     description="The kernel's release, e.g. 6.1.0-18-arm64")
    clock_offset_seconds: float | None = Field(
        default=None, description="the device's clock less the gateway's, when it reported")


DevicePhase = Literal["Pending", "Online", "Offline"]
SERIAL_PATTERN = r"^[0-9a-f]{1,40}$"


class DeviceIdentity(Resource):
    """The device's client certificate, as the gateway issued it; the gateway accepts
    no other (see docs/SECURITY.md)."""

    state: Literal["Enrolled", "Revoked"] = Field(
        description="Enrolled; Revoked once spec.revoked is set, and the gateway refuses the "
                    "certificate")
    serial: Annotated[str, StringConstraints(pattern=SERIAL_PATTERN)] = Field(
        description="Serial number of the one certificate accepted, lower-case hex")
    not_before: datetime = Field(description="When the certificate's validity begins")
    not_after: datetime = Field(
        description="When the certificate expires; the device renews it at two thirds of its "
                    "life")
    enrolled_at: datetime = Field(description="When the device enrolled")
    renewed_at: datetime | None = Field(
        default=None, description="When the device last renewed its certificate; absent "
                                  "until its first renewal after enrolling")
    enrolment: Literal["BootstrapToken", "FleetToken"] = Field(
        description="BootstrapToken: enrolled with the token of spec.bootstrapTokenSecretRef; "
                    "FleetToken: registered itself with a fleet enrolment token")
    token_fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] = Field(
        description="HMAC of the token the device enrolled with: that token admits no "
                    "second enrolment")


SESSION_PATTERN = r"^[0-9a-f]{8}$"


class DeviceConnection(Resource):
    """The session a fleet gateway replica holds with the device, while it is open."""

    gateway: Annotated[str, StringConstraints(min_length=1, max_length=253)] = Field(
        description="The gateway replica holding the session (its identity)")
    session: Annotated[str, StringConstraints(pattern=SESSION_PATTERN)] = Field(
        description="A random id of the session, 8 lower-case hex characters: the session "
                    "writes the device's status only while this names it")
    since: datetime = Field(description="When the session began")


class DeviceData(Resource):
    """What the dataset holds of one model's records from this device."""

    model: ObjectName = Field(description=MODEL_NAME)
    samples: Count = Field(description=SAMPLES_UPLOADED)
    labelled: Count = Field(description=LABELS_UPLOADED)
    bytes: Count = Field(description=BYTES_UPLOADED)
    last_upload: datetime | None = Field(
        default=None, description="When the dataset last stored records of the model from "
                                  "the device")


class EdgeDeviceStatus(Resource):
    """What the device reported, and what the gateway and the controller observed of it."""

    phase: DevicePhase = Field(
        default="Pending",
        description=f"Pending until the device is first seen, and while a device that "
                    f"registered itself awaits approval (annotation {DEVICE_APPROVED_ANNOTATION}"
                    "); Online while a live gateway replica holds its session; Offline "
                    "otherwise")
    last_seen: datetime | None = Field(
        default=None,
        description="When the device was last heard from; while it is connected and nothing "
                    "else changes, written every --last-seen-write-seconds (300 by default)")
    capabilities: Capabilities | None = None
    models: list[DeviceModelStatus] = Field(
        default_factory=list, max_length=64,
        description="The model versions the device holds, as it last reported")
    inference: list[VersionInference] = Field(
        default_factory=list, max_length=64,
        description="How each loaded model version answered since it was loaded")
    data: list[DeviceData] = Field(
        default_factory=list, max_length=64,
        description="Per model, what the dataset holds of the samples and labels it uploaded")
    model_count: Count = Field(default=0, description="len(models), for the printer column")
    identity: DeviceIdentity | None = None
    connection: DeviceConnection | None = Field(
        default=None,
        description="The open session with a fleet gateway; absent while the device is "
                    "not connected")
    health: DeviceHealth | None = None
    health_summary: ShortText = Field(
        default="", description="The health conditions that are True (Healthy: none; "
                                "NotReported: the runtime sends no health), for the printer "
                                "column")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, json_schema_extra=CONDITIONS_LIST_MAP,
        description="Ready, MemoryPressure, DiskPressure, Overheating, ClockSkew")
    observed_generation: int | None = Field(
        default=None, ge=0,
        description="The metadata.generation of the spec the controller last judged")


def field_path(loc: tuple[int | str, ...], root: str = "spec") -> str:
    """A pydantic error location in the API server's notation: spec.steps[0].percent."""
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe_validation_error(error: ValidationError, root: str = "spec") -> str:
    """Every problem in one line, each with its field: for conditions and Events."""
    return "; ".join(f"{field_path(e['loc'], root)}: {e['msg']}" for e in error.errors())
