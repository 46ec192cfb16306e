"""The edge runtime's settings: one pydantic model read from EDGEFLEET_EDGE_* variables
and overridden by flags (`edgefleet-edge serve --help`)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """What both commands share: the servers and the engine."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_EDGE_", cli_kebab_case=True, cli_implicit_flags=True,
    )

    listen_host: str = Field(default="0.0.0.0", description="address the servers bind to")
    grpc_port: int = Field(default=8001, ge=1, le=65535, description="Open Inference gRPC")
    http_port: int = Field(default=8000, ge=1, le=65535, description="Open Inference REST")
    metrics_port: int = Field(default=8002, ge=1, le=65535, description="Prometheus /metrics")
    max_request_bytes: int = Field(default=64 * 2**20, ge=1024,
                                   description="larger requests are refused unread")
    inference_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256,
                                   description="threads running ONNX Runtime sessions")
    log_level: str = "INFO"


class ServeSettings(ServingSettings):
    """`edgefleet-edge serve`: a local model repository, no cloud."""

    model_repository: Path = Field(description="DIR/<model>/<version>/model.onnx")
    poll_seconds: float = Field(
        default=0, ge=0, description="re-read the repository this often (0: only at start)")


class RunSettings(ServingSettings):
    """`edgefleet-edge run`: serve what the cloud assigns, and keep serving without it."""

    cloud: str = Field(description="HOST:PORT of the fleet gateway")
    namespace: str = Field(min_length=1, description="the EdgeDevice's namespace")
    device: str = Field(min_length=1, description="the EdgeDevice's name")
    token_file: Path = Field(description="file holding the device's bootstrap token")
    data_dir: Path = Field(description="where models and state are kept across restarts")
    tls_ca_file: Path | None = Field(default=None,
                                     description="CA of the gateway's TLS certificate")
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    backoff_base_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=30.0, gt=0)
    gc_grace_seconds: float = Field(default=600.0, ge=0,
                                    description="unreferenced blobs are deleted after this")
    metrics_push_seconds: float = Field(
        default=0, ge=0,
        description="sample the runtime's metrics this often and send them to the cloud "
                    "over the gateway session, for a Prometheus that cannot scrape the "
                    "device (set it where the operator has a remote-write URL; 15 is a "
                    "good value); 0, the default, sends none")
    metrics_buffer_bytes: int = Field(
        default=32 * 2**20, ge=2**16,
        description="disk bound of the samples not yet acknowledged; the oldest go first")
