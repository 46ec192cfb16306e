from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("namespace", "device", "csr", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    device: str
    csr: bytes
    labels: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., device: _Optional[str] = ..., csr: _Optional[bytes] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate", "signing_public_key")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    certificate: IssuedCertificate
    signing_public_key: bytes
    def __init__(self, certificate: _Optional[_Union[IssuedCertificate, _Mapping]] = ..., signing_public_key: _Optional[bytes] = ...) -> None: ...

class IssuedCertificate(_message.Message):
    __slots__ = ("certificate", "trust_bundle")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    trust_bundle: bytes
    def __init__(self, certificate: _Optional[bytes] = ..., trust_bundle: _Optional[bytes] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("csr",)
    CSR_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    def __init__(self, csr: _Optional[bytes] = ...) -> None: ...

class DeviceMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "report", "metrics", "renew", "data")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    report: StateReport
    metrics: MetricsBatch
    renew: CertificateRequest
    data: DataBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., report: _Optional[_Union[StateReport, _Mapping]] = ..., metrics: _Optional[_Union[MetricsBatch, _Mapping]] = ..., renew: _Optional[_Union[CertificateRequest, _Mapping]] = ..., data: _Optional[_Union[DataBatch, _Mapping]] = ...) -> None: ...

class DataBatch(_message.Message):
    __slots__ = ("model", "records")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    records: _containers.RepeatedCompositeFieldContainer[DataRecord]
    def __init__(self, model: _Optional[str] = ..., records: _Optional[_Iterable[_Union[DataRecord, _Mapping]]] = ...) -> None: ...

class DataRecord(_message.Message):
    __slots__ = ("sequence", "data")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    data: bytes
    def __init__(self, sequence: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class MetricsBatch(_message.Message):
    __slots__ = ("sequence", "timestamp_ms", "samples")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    timestamp_ms: int
    samples: _containers.RepeatedCompositeFieldContainer[MetricSample]
    def __init__(self, sequence: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[MetricSample, _Mapping]]] = ...) -> None: ...

class MetricSample(_message.Message):
    __slots__ = ("name", "labels", "value")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    value: float
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("capabilities", "models", "applied_revision", "runtime_version", "health")
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    capabilities: Capabilities
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    applied_revision: str
    runtime_version: str
    health: Health
    def __init__(self, capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ..., applied_revision: _Optional[str] = ..., runtime_version: _Optional[str] = ..., health: _Optional[_Union[Health, _Mapping]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("arch", "cpus", "memory_bytes", "execution_providers")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    arch: str
    cpus: int
    memory_bytes: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, arch: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("name", "version", "digest", "state", "message", "bytes_done", "bytes_total", "variant", "execution_providers")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ModelState.State]
        PENDING: _ClassVar[ModelState.State]
        DOWNLOADING: _ClassVar[ModelState.State]
        VERIFYING: _ClassVar[ModelState.State]
        LOADING: _ClassVar[ModelState.State]
        READY: _ClassVar[ModelState.State]
        FAILED: _ClassVar[ModelState.State]
        REMOVING: _ClassVar[ModelState.State]
    STATE_UNSPECIFIED: ModelState.State
    PENDING: ModelState.State
    DOWNLOADING: ModelState.State
    VERIFYING: ModelState.State
    LOADING: ModelState.State
    READY: ModelState.State
    FAILED: ModelState.State
    REMOVING: ModelState.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    state: ModelState.State
    message: str
    bytes_done: int
    bytes_total: int
    variant: str
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., state: _Optional[_Union[ModelState.State, str]] = ..., message: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., variant: _Optional[str] = ..., execution_providers: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("models", "stats", "health")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    stats: _containers.RepeatedCompositeFieldContainer[VersionStats]
    health: Health
    def __init__(self, models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ..., stats: _Optional[_Iterable[_Union[VersionStats, _Mapping]]] = ..., health: _Optional[_Union[Health, _Mapping]] = ...) -> None: ...

class Health(_message.Message):
    __slots__ = ("cpu_percent", "cpu_throttled_percent", "memory_available_bytes", "memory_total_bytes", "disk_free_bytes", "disk_total_bytes", "temperature_celsius", "uptime_seconds", "restarts", "os", "kernel", "time_ms")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CPU_THROTTLED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    cpu_throttled_percent: float
    memory_available_bytes: int
    memory_total_bytes: int
    disk_free_bytes: int
    disk_total_bytes: int
    temperature_celsius: float
    uptime_seconds: float
    restarts: int
    os: str
    kernel: str
    time_ms: int
    def __init__(self, cpu_percent: _Optional[float] = ..., cpu_throttled_percent: _Optional[float] = ..., memory_available_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., disk_total_bytes: _Optional[int] = ..., temperature_celsius: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., restarts: _Optional[int] = ..., os: _Optional[str] = ..., kernel: _Optional[str] = ..., time_ms: _Optional[int] = ...) -> None: ...

class StateReport(_message.Message):
    __slots__ = ("models", "applied_revision", "stats")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    applied_revision: str
    stats: _containers.RepeatedCompositeFieldContainer[VersionStats]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ..., applied_revision: _Optional[str] = ..., stats: _Optional[_Iterable[_Union[VersionStats, _Mapping]]] = ...) -> None: ...

class VersionStats(_message.Message):
    __slots__ = ("model", "version", "requests", "errors", "latency_bounds_seconds", "latency_counts", "top_class_counts", "labelled", "correct")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BOUNDS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOP_CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    requests: int
    errors: int
    latency_bounds_seconds: _containers.RepeatedScalarFieldContainer[float]
    latency_counts: _containers.RepeatedScalarFieldContainer[int]
    top_class_counts: _containers.RepeatedScalarFieldContainer[int]
    labelled: int
    correct: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency_bounds_seconds: _Optional[_Iterable[float]] = ..., latency_counts: _Optional[_Iterable[int]] = ..., top_class_counts: _Optional[_Iterable[int]] = ..., labelled: _Optional[int] = ..., correct: _Optional[int] = ...) -> None: ...

class CloudMessage(_message.Message):
    __slots__ = ("desired", "ping", "metrics_ack", "refused", "certificate", "data_ack")
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    METRICS_ACK_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    DATA_ACK_FIELD_NUMBER: _ClassVar[int]
    desired: DesiredState
    ping: Ping
    metrics_ack: MetricsAck
    refused: Refused
    certificate: IssuedCertificate
    data_ack: DataAck
    def __init__(self, desired: _Optional[_Union[DesiredState, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., metrics_ack: _Optional[_Union[MetricsAck, _Mapping]] = ..., refused: _Optional[_Union[Refused, _Mapping]] = ..., certificate: _Optional[_Union[IssuedCertificate, _Mapping]] = ..., data_ack: _Optional[_Union[DataAck, _Mapping]] = ...) -> None: ...

class DataAck(_message.Message):
    __slots__ = ("model", "sequence")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    sequence: int
    def __init__(self, model: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("kind", "field", "reason", "message", "sequence")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    field: str
    reason: str
    message: str
    sequence: int
    def __init__(self, kind: _Optional[str] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class MetricsAck(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("revision", "models")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    revision: str
    models: _containers.RepeatedCompositeFieldContainer[ModelAssignment]
    def __init__(self, revision: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelAssignment, _Mapping]]] = ...) -> None: ...

class ModelAssignment(_message.Message):
    __slots__ = ("name", "version", "digest", "size_bytes", "runtime", "weight", "signature", "variant", "data_collection")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    DATA_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    size_bytes: int
    runtime: RuntimeSettings
    weight: int
    signature: bytes
    variant: str
    data_collection: DataCollection
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., runtime: _Optional[_Union[RuntimeSettings, _Mapping]] = ..., weight: _Optional[int] = ..., signature: _Optional[bytes] = ..., variant: _Optional[str] = ..., data_collection: _Optional[_Union[DataCollection, _Mapping]] = ...) -> None: ...

class DataCollection(_message.Message):
    __slots__ = ("sample_rate", "low_confidence_below", "include_outputs", "max_bytes_per_device", "max_bytes_per_day")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    LOW_CONFIDENCE_BELOW_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_PER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    sample_rate: float
    low_confidence_below: float
    include_outputs: bool
    max_bytes_per_device: int
    max_bytes_per_day: int
    def __init__(self, sample_rate: _Optional[float] = ..., low_confidence_below: _Optional[float] = ..., include_outputs: _Optional[bool] = ..., max_bytes_per_device: _Optional[int] = ..., max_bytes_per_day: _Optional[int] = ...) -> None: ...

class RuntimeSettings(_message.Message):
    __slots__ = ("intra_op_threads", "inter_op_threads", "max_batch_size", "max_delay_micros", "execution_providers")
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    INTER_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MICROS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    intra_op_threads: int
    inter_op_threads: int
    max_batch_size: int
    max_delay_micros: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, intra_op_threads: _Optional[int] = ..., inter_op_threads: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_delay_micros: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ...) -> None: ...

class ArtifactRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...
