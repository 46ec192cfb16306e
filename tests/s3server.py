"""A real S3-compatible server on loopback for the tests: SeaweedFS's `weed mini`, built
by hack/s3bin/build.sh, with its data, sockets, config and home in a temporary folder,
every port chosen free on 127.0.0.1, telemetry off, and signed requests required (one
identity, the credentials below)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import free_port  # hack/ is on pytest's pythonpath

REPO_ROOT = Path(__file__).resolve().parent.parent


def weed_binary() -> Path:
    """The pinned weed, built once (minutes) and cached outside the repository."""
    built = subprocess.run([str(REPO_ROOT / "hack" / "s3bin" / "build.sh")],
                           capture_output=True, text=True, check=True)
    return Path(built.stdout.strip()) / "weed"


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    endpoint: str
    access_key: str
    secret_key: str
    log_path: Path

    def client(self, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3(folder: Path, bucket: str) -> S3Server:
    """Starts the server and creates `bucket`; ready once a write succeeds (the filer
    takes a few seconds after the port answers)."""
    data, home = folder / "data", folder / "home"
    data.mkdir(parents=True)
    home.mkdir()
    access_key, secret_key = "edgefleet-test", secrets.token_hex(16)
    (folder / "s3.json").write_text(json.dumps({"identities": [{
        "name": "edgefleet-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    # Each component's HTTP and gRPC ports (gRPC would default to HTTP + 10000).
    ports = {component: (free_port(), free_port())
             for component in ("master", "volume", "filer", "s3", "admin")}
    args = [str(weed_binary()), "-logtostderr=true", "mini", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-dir={data}",
            *(flag for component, (http, grpc) in ports.items()
              for flag in (f"-{component}.port={http}", f"-{component}.port.grpc={grpc}")),
            # Off: the admin's legacy port, WebDAV, the Iceberg and Lance catalogues (fixed
            # ports otherwise), and telemetry (which would call out).
            "-admin.port.legacy=0", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-s3.config={folder / 's3.json'}",
            f"-filer.localSocket={data / 'filer.sock'}", f"-s3.localSocket={data / 's3.sock'}"]
    log_path = folder / "weed.log"
    with open(log_path, "wb") as log:
        # A clean environment: weed takes AWS_* variables as one more admin identity.
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                   env={"PATH": os.environ.get("PATH", ""),
                                        "HOME": str(home)})
    server = S3Server(process, f"http://127.0.0.1:{ports['s3'][0]}", access_key, secret_key,
                      log_path)
    client = server.client()
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="ready", Body=b"")
            return server
        except Exception as error:  # not up yet: refused connections, 5xx
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"weed mini did not come up ({error}); its log: "
                                   f"{log_path.read_text(errors='replace')[-3000:]}") from None
            time.sleep(0.3)
