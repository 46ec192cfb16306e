"""The metric families an edge runtime emits, and so the only ones the fleet gateway
forwards from a device into the cloud Prometheus.

Both sides import this list: the gateway checks each sample against it, and a unit
test compares it with what the runtime's own registry exposes, so the two never drift.
A device names none of the identity labels: the gateway sets them (`namespace`,
`device`, `instance`, `job`) from the session's authenticated identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEVICE_JOB = "edgefleet-edge"


@dataclass(frozen=True)
class Family:
    name: str
    type: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...] = ()

    def samples(self) -> dict[str, frozenset[str]]:
        """The sample names this family exposes, each with the labels it may carry."""
        labels = frozenset(self.labels)
        if self.type == "counter":
            return {f"{self.name}_total": labels}
        if self.type == "histogram":
            return {f"{self.name}_bucket": labels | {"le"}, f"{self.name}_count": labels,
                    f"{self.name}_sum": labels}
        return {self.name: labels}


_VERSION = ("model", "version")
FAMILIES = (
    Family("edgefleet_inference_requests", "counter", (*_VERSION, "outcome")),
    Family("edgefleet_inference_request_duration_seconds", "histogram", _VERSION),
    Family("edgefleet_inference_queue_duration_seconds", "histogram", _VERSION),
    Family("edgefleet_inference_compute_duration_seconds", "histogram", _VERSION),
    Family("edgefleet_inference_batch_size", "histogram", _VERSION),
    Family("edgefleet_model_loaded", "gauge", (*_VERSION, "digest")),
    Family("edgefleet_cloud_connected", "gauge"),
    Family("edgefleet_artifact_received_bytes", "counter"),
    Family("edgefleet_metrics_buffer_dropped_samples", "counter"),
    Family("edgefleet_edge_requests_rejected", "counter", ("reason",)),
    Family("edgefleet_edge_identity_state", "gauge", ("state",)),
    Family("edgefleet_edge_certificate_expiry_timestamp_seconds", "gauge"),
    Family("edgefleet_edge_cloud_insecure", "gauge"),
    Family("edgefleet_edge_assignments_refused", "counter", ("reason",)),
    Family("edgefleet_edge_runtime_info", "gauge", ("version",)),
    Family("edgefleet_capture_samples", "counter", ("model", "reason")),
    Family("edgefleet_capture_dropped_records", "counter", ("model", "reason")),
    Family("edgefleet_capture_stored_bytes", "gauge", ("model",)),
    Family("edgefleet_feedback_answers", "counter", (*_VERSION, "outcome")),
    Family("edgefleet_edge_restarts", "gauge"),
    # The device itself (edge_runtime/health.py), sampled every heartbeat interval.
    Family("edgefleet_device_cpu_usage_ratio", "gauge"),
    Family("edgefleet_device_cpu_throttled_ratio", "gauge"),
    Family("edgefleet_device_memory_available_bytes", "gauge"),
    Family("edgefleet_device_memory_total_bytes", "gauge"),
    Family("edgefleet_device_disk_free_bytes", "gauge"),
    Family("edgefleet_device_disk_total_bytes", "gauge"),
    Family("edgefleet_device_temperature_celsius", "gauge"),
    Family("edgefleet_device_uptime_seconds", "gauge"),
    # prometheus_client's default collectors: the runtime's own process.
    Family("process_virtual_memory_bytes", "gauge"),
    Family("process_resident_memory_bytes", "gauge"),
    Family("process_start_time_seconds", "gauge"),
    Family("process_cpu_seconds", "counter"),
    Family("process_open_fds", "gauge"),
    Family("process_max_fds", "gauge"),
    Family("python_gc_objects_collected", "counter", ("generation",)),
    Family("python_gc_objects_uncollectable", "counter", ("generation",)),
    Family("python_gc_collections", "counter", ("generation",)),
    Family("python_info", "gauge", ("implementation", "major", "minor", "patchlevel",
                                    "version")),
)

# Sample name -> the labels a device may set on it.
ALLOWED_SAMPLES: dict[str, frozenset[str]] = {
    name: labels for family in FAMILIES for name, labels in family.samples().items()}
# Counters, histogram buckets and counts only ever grow from zero.
NON_NEGATIVE_SUFFIXES = ("_total", "_bucket", "_count")
