"""The operator's settings: one pydantic model read from EDGEFLEET_* environment
variables and overridden by command-line flags (`edgefleet-operator --help`)."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.operator.metrics import device_label_name
from edgefleet.operator.resources import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, LABEL_KEY_PATTERN
from edgefleet.protocol.cli import LogFormat

Role = Literal["all", "controller", "gateway"]


def _default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_", cli_kebab_case=True, cli_prog_name="edgefleet-operator",
        cli_implicit_flags=True, cli_show_env_vars=True, cli_exit_on_error=False,
    )

    grpc_port: int = Field(default=50051, ge=1, le=65535,
                           description="port of the fleet gateway's device sessions (mutual "
                                       "TLS: a device presents the certificate it enrolled for)")
    enrolment_port: int = Field(default=50052, ge=1, le=65535,
                                description="port where devices enrol (TLS; a bootstrap or "
                                            "fleet token buys a client certificate once)")
    insecure_plaintext: bool = Field(
        default=False,
        description="serve the gateway without TLS, devices proving themselves by bearer "
                    "token alone (devices need it too); for a laboratory, never a fleet")
    ca_secret_name: str = Field(
        default="edgefleet-gateway-ca", min_length=1,
        description="Secret in the operator's namespace (--lease-namespace) holding the "
                    "gateway CA as cert-manager lays it out (tls.crt, tls.key, ca.crt: the "
                    "trust bundle, old and new CA while it rotates); created if absent")
    signing_secret_name: str = Field(
        default="edgefleet-assignment-signing", min_length=1,
        description="Secret in the operator's namespace holding the Ed25519 key "
                    "(signing.key) every assignment is signed with; created if absent")
    device_cert_validity: timedelta = Field(
        default=timedelta(days=30), gt=timedelta(seconds=1),
        description="lifetime of device certificates (seconds or ISO 8601, e.g. P30D); "
                    "devices renew them at two thirds")
    gateway_dns_names: list[str] = Field(
        default=[],
        description="DNS names the gateway's certificate carries besides edgefleet-gateway "
                    "(the name devices check), for other clients")
    ca_refresh_seconds: float = Field(
        default=30.0, gt=0, description="how often the CA Secret is read again (rotation)")
    role: Role = Field(
        default="all",
        description="all: one process decides and serves devices; controller: the "
                    "leader-elected model decisions and device phases, no gateway; gateway: "
                    "a fleet gateway replica (any number behind one Service), deriving "
                    "desired state from the same watches, writing only its devices' status")
    heartbeat_write_seconds: float = Field(
        default=60.0, gt=0,
        description="a connected device's inference statistics (what rollout analysis "
                    "reads), when they changed, are written at most this often; connecting "
                    "and disconnecting are written at once")
    last_seen_write_seconds: float = Field(
        default=300.0, gt=0,
        description="a connected device's lastSeen, when nothing else is written, is "
                    "written this often (its gateway's Lease says meanwhile that it is "
                    "connected)")
    download_progress_write_seconds: float = Field(
        default=30.0, gt=0,
        description="a model on its way to a device (downloading, with bytes done of total; "
                    "verifying; loading) is written to the device's status at most this often; "
                    "Ready or Failed soon after the device reports it")
    memory_pressure_percent: float = Field(
        default=10.0, ge=0, le=100,
        description="a device whose available memory is below this share of its total (its "
                    "container's limit, where it has one) has MemoryPressure")
    disk_pressure_percent: float = Field(
        default=10.0, ge=0, le=100,
        description="a device whose data directory's disk has less than this share free has "
                    "DiskPressure")
    overheating_celsius: float = Field(
        default=85.0, ge=-50, le=200,
        description="a device whose hottest thermal zone is above this is Overheating")
    clock_skew_seconds: float = Field(
        default=60.0, gt=0,
        description="a device whose clock is further than this from the gateway's has "
                    "ClockSkew (its metric samples and certificates misbehave)")
    device_metric_labels: list[str] = Field(
        default=[], max_length=10,
        description="EdgeDevice labels the per-device info series carries (as "
                    "label_<key>), e.g. site: each adds no series, only a label to the one "
                    "per device")
    model_status_write_seconds: float = Field(
        default=10.0, ge=0,
        description="an EdgeModel status whose only change is its device counts is written "
                    "at most this often; a new phase, step or condition is written at once")
    api_concurrency: int = Field(
        default=16, ge=1, le=256,
        description="Kubernetes API calls in flight at once (threads and connections of "
                    "their own, apart from file and CPU work)")
    metrics_remote_write_url: str = Field(
        default="", pattern=r"^(https?://\S+)?$",
        description="Prometheus remote-write endpoint for the metric samples devices send "
                    "over their sessions; empty leaves them on the devices, unacknowledged")
    dataset_uri: str = Field(
        default=str(Path(tempfile.gettempdir()) / "edgefleet-dataset"),
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?|file:///\S*|/\S*)$",
        description="where the samples and labels devices keep (spec.dataCollection) are "
                    "stored: a directory (a volume), or s3://BUCKET[/PREFIX] on any "
                    "S3-compatible store (credentials from AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or as boto3 finds them)")
    dataset_s3_endpoint: str = Field(
        default="", pattern=r"^(https?://\S+)?$",
        description="the S3 API's URL for a store other than AWS (e.g. SeaweedFS, Ceph)")
    dataset_s3_region: str = Field(default="us-east-1", min_length=1, max_length=64)
    dataset_expiry_seconds: float = Field(
        default=3600.0, gt=0,
        description="how often samples older than their model's retentionDays are deleted")
    # Retraining Jobs run tenants' images with the operator's right to create Jobs: the
    # admin chooses where, and as whom (retraining.py).
    retraining_namespaces: list[str] = Field(
        default=[],
        description="namespaces whose EdgeModels may have the operator create retraining "
                    "Jobs (spec.retraining); * for all; none by default")
    retraining_service_account: str = Field(
        default="edgefleet-retrain", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253,
        description="the ServiceAccount retraining Jobs run as, in the model's namespace "
                    "(what it may reach, e.g. the tenant's part of the dataset bucket, is "
                    "the admin's to grant); the template cannot name another")
    retraining_poll_seconds: float = Field(
        default=10.0, gt=0, description="how often a running retraining Job and its output "
                                        "are looked at")
    artifact_cache_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "edgefleet-artifacts",
        description="where verified model artifacts are kept")
    artifact_cache_max_bytes: int = Field(default=10 * 2**30, ge=2**20,
                                          description="the cache evicts beyond this size")
    artifact_max_bytes: int = Field(default=2 * 2**30, ge=1,
                                    description="larger artifacts are refused (TooLarge)")
    artifact_http_timeout_seconds: float = Field(
        default=30.0, gt=0, description="an artifact server silent this long is Unreachable")
    # Variants are built in child processes: tenants' models and datasets never reach
    # the operator's own.
    variant_build_concurrency: int = Field(default=1, ge=1, le=64,
                                           description="variant builds running at once")
    variant_build_timeout_seconds: float = Field(
        default=600.0, gt=0, description="a variant build running longer is stopped (failed)")
    variant_build_memory_bytes: int = Field(
        default=4 * 2**30, ge=256 * 2**20,
        description="memory (data segment) each variant build may use; past it the build fails")
    # Tenants name artifact sources; these two say what such a source may reach.
    artifact_file_roots: list[Path] = Field(
        default=[],
        description="directories whose files file:// artifact sources may name (symlinks "
                    "and '..' resolved first); none by default, refusing every file:// source")
    artifact_allow_private_networks: bool = Field(
        default=False,
        description="let http(s) artifact sources reach loopback, link-local, private and "
                    "other non-public addresses (in-cluster services, cloud metadata)")
    metrics_port: int = Field(default=8080, ge=1, le=65535,
                              description="port serving /healthz, /readyz and /metrics")
    listen_host: str = Field(default="0.0.0.0", description="address the servers bind to")
    namespaces: list[str] = Field(default=[],
                                  description="namespaces to serve; empty serves all")
    deletion_timeout_seconds: float = Field(
        default=120.0, ge=0,
        description="how long a deleted EdgeModel waits for devices to confirm withdrawal")
    status_debounce_seconds: float = Field(
        default=0.2, ge=0, description="coalesces bursts of fleet changes into one status write")
    leader_election: bool = Field(default=True,
                                  description="hold a Lease so only one replica acts")
    lease_name: str = "edgefleet-operator"
    lease_namespace: str = Field(default=os.environ.get("POD_NAMESPACE", "default"),
                                 description="the Lease's namespace, which also holds the CA "
                                             "and signing Secrets (POD_NAMESPACE in a pod)")
    lease_duration_seconds: int = Field(
        default=15, ge=1,
        description="the controller's Lease and each gateway replica's: a replica silent "
                    "this long is gone, and the devices it held are Offline")
    lease_renew_seconds: float = Field(default=5.0, gt=0,
                                       description="how often a Lease is renewed (and the "
                                                   "gateways' Leases read)")
    # Defaults are computed when the process starts, so that --help shows them.
    identity: str = Field(default=_default_identity(),
                          description="this replica's name in the Lease")
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error)$")
    log_format: LogFormat = Field(
        default="text", description="text: logfmt (key=value); json: one JSON object a line")

    @field_validator("device_cert_validity", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        """A plain number is seconds (pydantic reads only ISO 8601 from a string)."""
        if isinstance(value, str) and value.replace(".", "", 1).isdigit():
            return float(value)
        return value

    @field_validator("device_metric_labels")
    @classmethod
    def _label_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not re.fullmatch(LABEL_KEY_PATTERN, key) or len(key) > 317:
                raise ValueError(f"{key!r} is not a Kubernetes label key")
        names = [device_label_name(key) for key in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"{keys} name the same metric label twice once '.', '/' and "
                             "'-' become '_'")
        return keys

    @field_validator("retraining_namespaces")
    @classmethod
    def _namespaces(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != "*" and not re.fullmatch(DNS_LABEL_PATTERN, name):
                raise ValueError(f"{name[:80]!r} is neither a namespace nor *")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> OperatorSettings:
        if self.enrolment_port == self.grpc_port and not self.insecure_plaintext:
            raise ValueError("--enrolment-port and --grpc-port must differ")
        if self.lease_renew_seconds >= self.lease_duration_seconds:
            raise ValueError(
                f"--lease-renew-seconds ({self.lease_renew_seconds:g}) must be shorter than "
                f"--lease-duration-seconds ({self.lease_duration_seconds}): a Lease would "
                "expire between two renewals")
        return self
