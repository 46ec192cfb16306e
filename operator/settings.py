"""The operator's settings: one pydantic model read from EDGEFLEET_* environment
variables and overridden by command-line flags (`edgefleet-operator --help`)."""

from __future__ import annotations

import os
import socket

from pydantic import Field
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
