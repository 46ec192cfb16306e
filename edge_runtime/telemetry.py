"""The edge runtime's Prometheus metrics. Label sets stay bounded: model and version
come from what is loaded (requests for unknown models count under model="")."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgefleet.edge_runtime.health import HealthSample
from edgefleet.edge_runtime.stats import LATENCY_BOUNDS_S

LATENCY_BUCKETS = LATENCY_BOUNDS_S

REQUESTS = Counter("edgefleet_inference_requests", "Inference requests by outcome",
                   ["model", "version", "outcome"])
REQUEST_SECONDS = Histogram("edgefleet_inference_request_duration_seconds",
                            "Request time in the runtime, from its bytes in hand to its outputs "
                            "(decode, routing, waiting and run; encoding the answer is not in it)",
                            ["model", "version"], buckets=LATENCY_BUCKETS)
QUEUE_SECONDS = Histogram("edgefleet_inference_queue_duration_seconds",
                          "Time a request waited (batch queue and thread pool) before it ran",
                          ["model", "version"], buckets=LATENCY_BUCKETS)
COMPUTE_SECONDS = Histogram("edgefleet_inference_compute_duration_seconds",
                            "ONNX Runtime time of the run (a batch's run for batched requests)",
                            ["model", "version"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("edgefleet_inference_batch_size", "Rows per dynamic batch",
                       ["model", "version"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
LOADED = Gauge("edgefleet_model_loaded", "1 for each model version loaded and serving",
               ["model", "version", "digest"])
CLOUD_CONNECTED = Gauge("edgefleet_cloud_connected",
                        "1 while the session to the fleet gateway is up (0 in standalone mode)")
ARTIFACT_BYTES = Counter("edgefleet_artifact_received_bytes",
                         "Artifact bytes received from the fleet gateway")
# reason: one of serving/admission.py REJECTIONS, a fixed set.
REQUESTS_REJECTED = Counter("edgefleet_edge_requests_rejected",
                            "Inference requests refused before they ran, by reason",
                            ["reason"])
METRICS_DROPPED = Counter("edgefleet_metrics_buffer_dropped_samples",
                          "Metric samples dropped unsent because the on-disk buffer was full")
IDENTITY_STATES = ("Enrolled", "NotEnrolled", "Revoked", "Refused")
IDENTITY_STATE = Gauge("edgefleet_edge_identity_state",
                       "1 for the device identity's state: Enrolled, NotEnrolled, Revoked (the "
                       "gateway refuses the device) or Refused (the gateway refused enrolment)",
                       ["state"])
CERTIFICATE_EXPIRY = Gauge("edgefleet_edge_certificate_expiry_timestamp_seconds",
                           "notAfter of the device's client certificate (0: none)")
CLOUD_INSECURE = Gauge("edgefleet_edge_cloud_insecure",
                       "1 when the gateway session is plaintext (--insecure-plaintext)")
# reason: Unsigned or BadSignature.
ASSIGNMENTS_REFUSED = Counter("edgefleet_edge_assignments_refused",
                              "Model assignments refused because their signature does not "
                              "verify with the pinned signing key, by reason", ["reason"])

# Data collection (capture.py). model: a name with a policy (a valid EdgeModel name);
# reason: sampled or lowConfidence; dropped: budget, busy, storage or tooLarge.
CAPTURED = Counter("edgefleet_capture_samples", "Requests kept as samples, by why",
                   ["model", "reason"])
CAPTURE_DROPPED = Counter("edgefleet_capture_dropped_records",
                          "Samples and labels lost before upload: past the disk budget "
                          "(oldest first), behind a busy writer, on a storage error, or "
                          "too large to upload",
                          ["model", "reason"])
CAPTURE_STORED_BYTES = Gauge("edgefleet_capture_stored_bytes",
                             "Bytes of samples and labels on disk waiting for upload",
                             ["model"])
FEEDBACK = Counter("edgefleet_feedback_answers",
                   "Answered rows labelled by feedback, right or wrong (outcome)",
                   ["model", "version", "outcome"])

RUNTIME_INFO = Gauge("edgefleet_edge_runtime_info", "1, labelled with the runtime's version",
                     ["version"])
RESTARTS = Gauge("edgefleet_edge_restarts", "Runtime starts on this data dir before this one")


class HealthCollector(Collector):
    """The device itself, as health.HealthProbe last read it: a figure it could not read
    is absent, never a zero that reads as a fact."""

    def __init__(self) -> None:
        self.sample: HealthSample | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sample = self.sample
        if sample is None:
            return
        for name, help_text, value in (
            ("edgefleet_device_cpu_usage_ratio",
             "CPU used since the last sample, of what the runtime may use (0..1)",
             None if sample.cpu_percent is None else sample.cpu_percent / 100),
            ("edgefleet_device_cpu_throttled_ratio",
             "Share of CPU quota periods throttled since the last sample (0..1)",
             None if sample.cpu_throttled_percent is None
             else sample.cpu_throttled_percent / 100),
            ("edgefleet_device_memory_available_bytes",
             "Memory available (of the container's limit, where it has one)",
             sample.memory_available_bytes),
            ("edgefleet_device_memory_total_bytes",
             "Memory in all (the container's limit, where it has one)",
             sample.memory_total_bytes),
            ("edgefleet_device_disk_free_bytes", "Free on the data directory's disk",
             sample.disk_free_bytes),
            ("edgefleet_device_disk_total_bytes", "Size of the data directory's disk",
             sample.disk_total_bytes),
            ("edgefleet_device_temperature_celsius", "The hottest thermal zone",
             sample.temperature_celsius),
            ("edgefleet_device_uptime_seconds", "Seconds since the host booted",
             sample.uptime_seconds),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)


HEALTH = HealthCollector()
REGISTRY.register(HEALTH)


def set_identity_state(state: str) -> None:
    """One state at 1, the others 0."""
    for each in IDENTITY_STATES:
        IDENTITY_STATE.labels(each).set(1 if each == state else 0)


@dataclass(frozen=True)
class VersionMetrics:
    """The per-request series of one loaded version, looked up once when it loads
    (a `labels()` call costs microseconds on every request otherwise)."""

    succeeded: Counter
    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram

    @classmethod
    def of(cls, model: str, version: str) -> VersionMetrics:
        return cls(REQUESTS.labels(model, version, "success"),
                   REQUEST_SECONDS.labels(model, version), QUEUE_SECONDS.labels(model, version),
                   COMPUTE_SECONDS.labels(model, version), BATCH_SIZE.labels(model, version))
