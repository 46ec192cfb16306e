"""The edge runtime's settings: one pydantic model read from EDGEFLEET_EDGE_* variables
and overridden by flags (`edgefleet-edge serve --help`)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_EDGE_", cli_kebab_case=True, cli_prog_name="edgefleet-edge serve",
        cli_implicit_flags=True,
    )

    model_repository: Path = Field(description="DIR/<model>/<version>/model.onnx")
    listen_host: str = Field(default="0.0.0.0", description="address the servers bind to")
    grpc_port: int = Field(default=8001, ge=1, le=65535, description="Open Inference gRPC")
    http_port: int = Field(default=8000, ge=1, le=65535, description="Open Inference REST")
    metrics_port: int = Field(default=8002, ge=1, le=65535, description="Prometheus /metrics")
    poll_seconds: float = Field(
        default=0, ge=0, description="re-read the repository this often (0: only at start)")
    max_request_bytes: int = Field(default=64 * 2**20, ge=1024,
                                   description="larger requests are refused unread")
    inference_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256,
                                   description="threads running ONNX Runtime sessions")
    log_level: str = "INFO"
