"""The operator's Prometheus metrics and the HTTP server for /metrics, /healthz, /readyz."""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import get_args

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from edgefleet.operator.fleet import PhaseTally
from edgefleet.operator.resources import DevicePhase, EdgeModelStatus, ModelPhase

BUILD = Info("edgefleet_operator_build", "The running operator's release and Python")
RECONCILES = Counter(
    "edgefleet_operator_reconciles", "Status reconciliations by resource and outcome",
    ["resource", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "edgefleet_operator_reconcile_duration_seconds", "Time to reconcile one object's status",
    ["resource"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEADER = Gauge("edgefleet_operator_leader", "1 while this replica holds the leader lease")
VARIANT_BUILDS = Counter(
    "edgefleet_operator_variant_builds",
    "Variant builds finished: built, or the reason one failed (BuildFailed, InvalidDataset, "
    "BuildTimedOut, ...)",
    ["outcome"],
)
ARTIFACT_FAILURES = Counter(
    "edgefleet_operator_artifact_failures",
    "Artifact fetches that failed, by reason (DigestMismatch, Unreachable, TooLarge, ...)",
    ["reason"],
)
# The fleet gateway: what it refused to strangers and to devices (policy in
# gateway/policy.py; reasons and kinds are small fixed sets).
GATEWAY_AUTH_FAILURES = Counter(
    "edgefleet_operator_gateway_auth_failures",
    "Gateway calls refused before a session: Unauthenticated (unknown device, wrong token, "
    "a certificate not current), Revoked, TokenReused (an enrolment replayed) or "
    "RateLimited (too many failures from the peer's address)",
    ["reason"],
)
GATEWAY_CERTIFICATES = Counter(
    "edgefleet_operator_gateway_certificates_issued",
    "Device certificates issued, by how: Enrolment (bootstrap token), FleetEnrolment, "
    "Renewal",
    ["kind"],
)
GATEWAY_CA_EXPIRY = Gauge(
    "edgefleet_operator_gateway_ca_expiry_timestamp_seconds",
    "When the gateway's issuing CA certificate expires (Unix time)",
)
GATEWAY_INSECURE = Gauge(
    "edgefleet_operator_gateway_insecure_plaintext",
    "1 while the gateway serves plaintext (--insecure-plaintext): no TLS, bearer tokens",
)
GATEWAY_REFUSED_MESSAGES = Counter(
    "edgefleet_operator_gateway_refused_messages",
    "Device messages the gateway refused, by kind and reason (TooLarge, Malformed, "
    "Implausible, NotAllowed, Busy)",
    ["kind", "reason"],
)
GATEWAY_REFUSED_SAMPLES = Counter(
    "edgefleet_operator_gateway_refused_samples",
    "Metric samples from devices that were not forwarded, by reason",
    ["reason"],
)
GATEWAY_STATUS_WRITES = Counter(
    "edgefleet_operator_gateway_status_writes",
    "EdgeDevice status writes by the gateway, by cause: Connect (a session began), "
    "Models (what a device holds settled), Liveness (lastSeen and statistics only, at most "
    "every --heartbeat-write-seconds), Disconnect (a session ended: Offline)",
    ["cause"],
)
GATEWAY_DATA_RECORDS = Counter(
    "edgefleet_gateway_data_records",
    "Records of devices' kept samples and labels: Stored in the dataset, or Refused",
    ["outcome"])
EVENTS_DROPPED = Counter(
    "edgefleet_operator_device_events_dropped",
    "EdgeDevice Events not posted because the fleet's Event rate was spent (the status "
    "still says it all), by who would have posted them: gateway or controller",
    ["by"],
)
GATEWAY_QUEUED_BYTES = Gauge(
    "edgefleet_operator_gateway_queued_metrics_bytes",
    "Bytes of device metrics batches waiting for Prometheus, all sessions together",
)

MODEL_PHASES = PhaseTally(get_args(ModelPhase))
DEVICE_PHASES = PhaseTally(get_args(DevicePhase))


def describe_process(release: str) -> None:
    """What /metrics says of the process: its build, and no `_created` series (a
    timestamp per counter and histogram that dashboards never read)."""
    disable_created_metrics()
    BUILD.info({"version": release, "python": platform.python_version()})


def device_label_name(key: str) -> str:
    """The metric label a device label becomes on the info series: `site` is
    `label_site`, `topology.kubernetes.io/zone` is `label_topology_kubernetes_io_zone`."""
    return "label_" + re.sub(r"[^A-Za-z0-9_]", "_", key)


@dataclass(frozen=True)
class DeviceSeries:
    """What the per-device series say of one EdgeDevice."""

    up: bool | None  # Online; None while Pending (never seen: no series, no alert)
    conditions: tuple[str, ...] = ()  # health conditions that are True
    runtime_version: str = ""
    labels: tuple[str, ...] = ()  # the values of DeviceTally.label_keys, in order
    failed: tuple[tuple[str, str], ...] = ()  # (model, version) it reports Failed


class DeviceTally:
    """Every device's series, as the controller last judged it. `label_keys`: the device
    labels the info series carries (--device-metric-labels)."""

    def __init__(self) -> None:
        self.by_device: dict[tuple[str, str], DeviceSeries] = {}
        self.label_keys: tuple[str, ...] = ()

    def set(self, namespace: str, name: str, series: DeviceSeries) -> None:
        self.by_device[(namespace, name)] = series

    def discard(self, namespace: str, name: str) -> None:
        self.by_device.pop((namespace, name), None)


DEVICES = DeviceTally()


class DeviceCollector(Collector):
    """Per-device series, bounded for fleets of thousands: `up` and `info` are one series
    per device seen; a condition or a failed model version is a series only while it is
    True, so that a healthy fleet of 5,000 exports 10,000 series here, not 40,000."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        device = ["namespace", "device"]
        up = GaugeMetricFamily("edgefleet_operator_device_up",
                               "1 while the EdgeDevice is Online, 0 while Offline (no series "
                               "until it is first seen)", labels=device)
        conditions = GaugeMetricFamily(
            "edgefleet_operator_device_condition",
            "1 for each health condition that is True on the EdgeDevice (MemoryPressure, "
            "DiskPressure, Overheating, ClockSkew); no series while it is not",
            labels=[*device, "condition"])
        info = GaugeMetricFamily(
            "edgefleet_operator_device_info",
            "1, labelled with the EdgeDevice's runtime version and the device labels "
            "--device-metric-labels names",
            labels=[*device, "runtime_version",
                    *(device_label_name(key) for key in DEVICES.label_keys)])
        failed = GaugeMetricFamily(
            "edgefleet_operator_device_model_failed",
            "1 for each model version the EdgeDevice reports Failed; no series otherwise",
            labels=[*device, "model", "version"])
        keys = len(DEVICES.label_keys)
        for (namespace, name), series in sorted(DEVICES.by_device.items()):
            if series.up is not None:
                up.add_metric([namespace, name], 1 if series.up else 0)
            for condition in series.conditions:
                conditions.add_metric([namespace, name, condition], 1)
            labels = [*series.labels[:keys], *[""] * (keys - len(series.labels))]
            info.add_metric([namespace, name, series.runtime_version, *labels], 1)
            for model, version in series.failed:
                failed.add_metric([namespace, name, model, version], 1)
        yield from (up, conditions, info, failed)


class PhaseCollector(Collector):
    """Reads the tallies at scrape time, so the gauges never go stale."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, help_text, tally in (
            ("edgefleet_operator_models", "EdgeModels by phase", MODEL_PHASES),
            ("edgefleet_operator_devices", "EdgeDevices by phase", DEVICE_PHASES),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["phase"])
            for phase, count in tally.counts().items():
                family.add_metric([phase], count)
            yield family


class RolloutTally:
    """The last status written for each EdgeModel and how many of its devices hold
    each version in each state, for the rollout gauges."""

    def __init__(self) -> None:
        self.by_model: dict[tuple[str, str],
                            tuple[EdgeModelStatus, dict[tuple[str, str], int]]] = {}

    def set(self, namespace: str, name: str, status: EdgeModelStatus,
            device_states: dict[tuple[str, str], int]) -> None:
        self.by_model[(namespace, name)] = (status, device_states)

    def discard(self, namespace: str, name: str) -> None:
        self.by_model.pop((namespace, name), None)


ROLLOUTS = RolloutTally()


class RolloutCollector(Collector):
    """Each EdgeModel's phase; devices per model, version and state; each rollout's
    step and its last analysis."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        model_labels = ["namespace", "model"]
        phases = GaugeMetricFamily("edgefleet_operator_model_phase",
                                   "1 for each EdgeModel's current phase",
                                   labels=[*model_labels, "phase"])
        devices = GaugeMetricFamily(
            "edgefleet_operator_model_devices",
            "Targeted devices holding a model version, by the state they report",
            labels=[*model_labels, "version", "state"])
        step = GaugeMetricFamily("edgefleet_operator_rollout_step",
                                 "The running rollout's step (0: none runs)", labels=model_labels)
        steps = GaugeMetricFamily("edgefleet_operator_rollout_steps",
                                  "Steps of the running rollout (0: none runs)",
                                  labels=model_labels)
        requests = GaugeMetricFamily("edgefleet_operator_rollout_analysis_requests",
                                     "Requests of the rollout's target in its last analysis",
                                     labels=model_labels)
        errors = GaugeMetricFamily("edgefleet_operator_rollout_analysis_error_ratio",
                                   "Error rate of the rollout's target in its last analysis",
                                   labels=model_labels)
        p99 = GaugeMetricFamily("edgefleet_operator_rollout_analysis_p99_latency_seconds",
                                "p99 latency of the rollout's target in its last analysis",
                                labels=model_labels)
        drift = GaugeMetricFamily("edgefleet_operator_rollout_analysis_drift",
                                  "PSI of the target's top classes against the stable version",
                                  labels=model_labels)
        accuracy = GaugeMetricFamily(
            "edgefleet_operator_model_field_accuracy",
            "Share of a version's labelled answers that were right, over its devices",
            labels=[*model_labels, "version"])
        labelled = GaugeMetricFamily(
            "edgefleet_operator_model_labelled_answers",
            "Answers of a version that feedback labelled, as counted for its accuracy",
            labels=[*model_labels, "version"])
        for (namespace, name), (status, device_states) in sorted(ROLLOUTS.by_model.items()):
            phases.add_metric([namespace, name, status.phase], 1)
            for (version, state), count in sorted(device_states.items()):
                devices.add_metric([namespace, name, version, state], count)
            rollout = status.rollout
            running = rollout is not None and rollout.state == "Progressing"
            step.add_metric([namespace, name], rollout.step if rollout and running else 0)
            steps.add_metric([namespace, name], rollout.steps if rollout and running else 0)
            last = rollout.analysis if rollout else None
            if last:
                requests.add_metric([namespace, name], last.requests)
                errors.add_metric([namespace, name], last.error_rate)
                if last.p99_latency_ms is not None:
                    p99.add_metric([namespace, name], last.p99_latency_ms / 1000)
                if last.drift is not None:
                    drift.add_metric([namespace, name], last.drift)
            for served in status.inference:
                if served.accuracy is not None:
                    accuracy.add_metric([namespace, name, served.version], served.accuracy)
                    labelled.add_metric([namespace, name, served.version], served.labelled)
        yield from (phases, devices, step, steps, requests, errors, p99, drift, accuracy,
                    labelled)


REGISTRY.register(PhaseCollector())
REGISTRY.register(RolloutCollector())
REGISTRY.register(DeviceCollector())


def health_app(is_ready: Callable[[], bool]) -> web.Application:
    """/healthz: the process answers. /readyz: it leads and kopf is up (or it stands by
    ready to take over: a standby is healthy, just not acting). /metrics: Prometheus."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if is_ready() else web.Response(
            status=503, text="not leading\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/metrics", metrics)])
    return app
