"""The operator's settings: one pydantic model read from EDGEFLEET_* environment
variables and overridden by command-line flags (`edgefleet-operator --help`)."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_", cli_kebab_case=True, cli_prog_name="edgefleet-operator",
        cli_implicit_flags=True,
    )

    grpc_port: int = Field(default=50051, ge=1, le=65535,
                           description="port of the fleet gateway that edge runtimes dial")
    tls_cert_file: Path | None = Field(
        default=None, description="gateway TLS certificate (PEM); plaintext if unset")
    tls_key_file: Path | None = Field(default=None, description="gateway TLS private key (PEM)")
    heartbeat_write_seconds: float = Field(
        default=30.0, gt=0,
        description="a quiet device's lastSeen and inference statistics (what rollout "
                    "analysis reads) are written at most this often")
    metrics_remote_write_url: str = Field(
        default="", pattern=r"^(https?://\S+)?$",
        description="Prometheus remote-write endpoint for the metric samples devices send "
                    "over their sessions; empty leaves them on the devices, unacknowledged")
    artifact_cache_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "edgefleet-artifacts",
        description="where verified model artifacts are kept")
    artifact_cache_max_bytes: int = Field(default=10 * 2**30, ge=2**20,
                                          description="the cache evicts beyond this size")
    artifact_max_bytes: int = Field(default=2 * 2**30, ge=1,
                                    description="larger artifacts are refused (TooLarge)")
    artifact_http_timeout_seconds: float = Field(
        default=30.0, gt=0, description="an artifact server silent this long is Unreachable")
    # Tenants name artifact sources; these two say what such a source may reach.
    artifact_file_roots: list[Path] = Field(
        default_factory=list,
        description="directories whose files file:// artifact sources may name (symlinks "
                    "and '..' resolved first); none by default, refusing every file:// source")
    artifact_allow_private_networks: bool = Field(
        default=False,
        description="let http(s) artifact sources reach loopback, link-local, private and "
                    "other non-public addresses (in-cluster services, cloud metadata)")
    metrics_port: int = Field(default=8080, ge=1, le=65535,
                              description="port serving /healthz, /readyz and /metrics")
    listen_host: str = Field(default="0.0.0.0", description="address the servers bind to")
    namespaces: list[str] = Field(default_factory=list,
                                  description="namespaces to serve; empty serves all")
    device_offline_after_seconds: float = Field(
        default=90.0, gt=0, description="an Online device turns Offline after this long silent")
    deletion_timeout_seconds: float = Field(
        default=120.0, ge=0,
        description="how long a deleted EdgeModel waits for devices to confirm withdrawal")
    status_debounce_seconds: float = Field(
        default=0.2, ge=0, description="coalesces bursts of fleet changes into one status write")
    leader_election: bool = Field(default=True,
                                  description="hold a Lease so only one replica acts")
    lease_name: str = "edgefleet-operator"
    lease_namespace: str = Field(default_factory=lambda: os.environ.get("POD_NAMESPACE",
                                                                        "default"))
    lease_duration_seconds: int = Field(default=15, ge=1)
    lease_renew_seconds: float = Field(default=5.0, gt=0)
    identity: str = Field(default_factory=_default_identity,
                          description="this replica's name in the Lease")
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _tls_pair(self) -> OperatorSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together")
        return self
