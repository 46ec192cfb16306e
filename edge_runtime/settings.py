"""The edge runtime's settings: one pydantic model read from EDGEFLEET_EDGE_* variables
and overridden by flags (`edgefleet-edge serve --help`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field, FilePath, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.protocol.cli import LogFormat
from edgefleet.protocol.identity import is_ca_cert_hash

ENROLMENT_PORT = 50052
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}")  # HOST:PORT, [V6]:PORT


class ServingSettings(BaseSettings):
    """What both commands share: the servers and the engine."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_EDGE_", cli_kebab_case=True, cli_implicit_flags=True,
        cli_show_env_vars=True, cli_exit_on_error=False,
    )

    # Loopback unless told otherwise: an inference endpoint answers whoever reaches it.
    listen_host: str = Field(
        default="127.0.0.1",
        description="address the servers bind to: 127.0.0.1 serves this host only; 0.0.0.0 "
                    "serves every interface (then set --auth-token-file or "
                    "--tls-client-ca-file)")
    grpc_port: int = Field(default=8001, ge=1, le=65535, description="Open Inference gRPC")
    http_port: int = Field(default=8000, ge=1, le=65535, description="Open Inference REST")
    metrics_port: int = Field(default=8002, ge=1, le=65535,
                              description="Prometheus /metrics and the health endpoints, "
                                          "plain HTTP, never authenticated")
    # 8 MiB: a 1080p RGB frame of UINT8 in binary, twice gRPC's own 4 MiB default.
    max_request_bytes: int = Field(
        default=8 * 2**20, ge=1024,
        description="larger requests are refused before they are read or decoded "
                    "(413 / RESOURCE_EXHAUSTED)")
    max_concurrent_requests: int = Field(
        default=32, ge=1, le=65536,
        description="inference requests in flight at once, both servers together; more "
                    "are refused (429 / RESOURCE_EXHAUSTED). With --max-request-bytes it "
                    "bounds the memory requests take")
    auth_token_file: FilePath | None = Field(
        default=None,
        description="file holding a bearer token that every call on the inference ports "
                    "must carry ('Authorization: Bearer <token>', HTTP header or gRPC "
                    "metadata), except the liveness and readiness checks")
    tls_cert_file: FilePath | None = Field(
        default=None, description="TLS certificate (PEM) of the REST and gRPC inference "
                                  "servers; without it they speak plaintext")
    tls_key_file: FilePath | None = Field(default=None,
                                          description="private key (PEM) of --tls-cert-file")
    tls_client_ca_file: FilePath | None = Field(
        default=None,
        description="CA (PEM) that clients' certificates must chain to: with it, the REST "
                    "and gRPC inference servers accept only clients presenting one "
                    "(mutual TLS); needs --tls-cert-file")
    inference_threads: int = Field(default=os.cpu_count() or 1, ge=1, le=256,
                                   description="threads running ONNX Runtime sessions")
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error)$")
    log_format: LogFormat = Field(
        default="text", description="text: logfmt (key=value); json: one JSON object a line")

    @model_validator(mode="after")
    def _tls_complete(self) -> ServingSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        return self

    def auth_token(self) -> str | None:
        """The bearer token from --auth-token-file (None when unset); raises ValueError
        for a file that holds none."""
        if self.auth_token_file is None:
            return None
        token = self.auth_token_file.read_text().strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"--auth-token-file {self.auth_token_file}: holds no token (one "
                             "line without spaces)")
        return token


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
    data_dir: Path = Field(description="where models and state are kept across restarts "
                                       "(the device's identity in DATA_DIR/identity/)")
    insecure_plaintext: bool = Field(
        default=False,
        description="talk to a gateway started with --insecure-plaintext: no TLS, no "
                    "enrolment, the bootstrap token of --token-file on every call; for "
                    "development only")
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM bundle of the CA(s) to trust for the gateway until it sends its own")
    ca_cert_hash: str | None = Field(
        default=None,
        description="sha256:<hex> of the gateway CA's public key (the operator logs it): "
                    "without a trust bundle yet, the CA is taken from the enrolment port's "
                    "TLS chain and checked against this pin")
    token_file: Path | None = Field(
        default=None,
        description="file holding the device's bootstrap token: needed to enrol (and, "
                    "with --insecure-plaintext, on every call)")
    fleet_token_file: Path | None = Field(
        default=None,
        description="file holding a fleet enrolment token: the gateway creates the "
                    "EdgeDevice when it enrols")
    label: dict[str, str] = Field(
        default={},
        description="KEY=VALUE (repeatable): labels proposed for the EdgeDevice a fleet "
                    "enrolment creates; the fleet's policy keeps the keys it allows")
    enrolment_address: str | None = Field(
        default=None, description="HOST:PORT of the gateway's enrolment port (default: "
                                  "--cloud's host, port 50052)")
    heartbeat_seconds: float = Field(
        default=10.0, gt=0,
        description="how often the device's health is read and a heartbeat sent")
    procfs_path: Path = Field(
        default=Path("/proc"),
        description="where procfs is mounted: memory, CPU and uptime are read there (a "
                    "container that mounts the host's at /host/proc reports the host)")
    sysfs_path: Path = Field(
        default=Path("/sys"),
        description="where sysfs is mounted: thermal zones and cgroup limits are read there")
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
    upload_bytes_per_second: float = Field(
        default=256 * 2**10, gt=0,
        description="pace of uploads of kept samples and labels to the cloud (they go "
                    "after everything else the session carries)")
    feedback_window: int = Field(
        default=10_000, ge=0, le=1_000_000,
        description="answered requests remembered per runtime for feedback (models with "
                    "data collection only); feedback for older ones is refused")

    def enrolment_target(self) -> str:
        """--enrolment-address, else --cloud's host on the enrolment port."""
        if self.enrolment_address:
            return self.enrolment_address
        host = self.cloud.rpartition(":")[0] or self.cloud
        return f"{host}:{ENROLMENT_PORT}"

    def check_cloud_link(self, identity_stored: bool) -> None:
        """The rules between the cloud flags; raises ValueError with the one-line
        reason. `identity_stored`: DATA_DIR/identity/identity.pem exists."""
        if self.token_file and self.fleet_token_file:
            raise ValueError("--token-file and --fleet-token-file: give one of them")
        if self.label and self.fleet_token_file is None:
            raise ValueError("--label goes with --fleet-token-file (labels are proposed "
                             "only when the gateway creates the EdgeDevice)")
        if self.insecure_plaintext:
            tls = [flag for flag, value in (("--tls-ca-file", self.tls_ca_file),
                                            ("--ca-cert-hash", self.ca_cert_hash),
                                            ("--fleet-token-file", self.fleet_token_file),
                                            ("--enrolment-address", self.enrolment_address))
                   if value]
            if tls:
                raise ValueError(f"--insecure-plaintext neither uses TLS nor enrols: drop "
                                 f"{', '.join(tls)}")
            if self.token_file is None:
                raise ValueError("--insecure-plaintext needs --token-file (the bootstrap "
                                 "token goes with every call)")
            return
        for flag, address in (("--cloud", self.cloud),
                              ("--enrolment-address", self.enrolment_address)):
            if address is not None and not _ADDRESS.fullmatch(address):
                raise ValueError(f"{flag} {address!r}: expected HOST:PORT")
        if self.ca_cert_hash is not None and not is_ca_cert_hash(self.ca_cert_hash):
            raise ValueError(f"--ca-cert-hash {self.ca_cert_hash!r}: expected sha256:<64 "
                             "lowercase hex digits>, as the operator logs it")
        if self.tls_ca_file is None and self.ca_cert_hash is None:
            raise ValueError("one of --tls-ca-file and --ca-cert-hash is required to trust "
                             "the gateway (or --insecure-plaintext, for development)")
        if not identity_stored and self.token_file is None and self.fleet_token_file is None:
            raise ValueError(f"no identity in {self.data_dir}/identity yet: one of "
                             "--token-file and --fleet-token-file is required to enrol")
