"""Fixtures that start real things: the local control plane and operator processes.

The control plane is the one `make cluster-up` starts (hack/localcluster.py), in a
throwaway directory per test session. To run against an existing cluster instead, say
so explicitly: EDGEFLEET_TEST_KUBECONFIG=/path/to/kubeconfig. Nothing else is ever used.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

import localcluster  # hack/ is on pytest's pythonpath
from tests.helpers import eventually, http_get

REPO_ROOT = Path(__file__).resolve().parent.parent
# Processes the tests start run from the repository root, where the operator/ folder
# would shadow the standard library's operator module if '' led sys.path.
os.environ["PYTHONSAFEPATH"] = "1"

GROUP, VERSION = "edgefleet.io", "v1alpha1"
# Artifacts a whole test module shares (test_operator.py); operators may read them.
SHARED_ARTIFACTS = Path(tempfile.gettempdir()) / "edgefleet-tests"


def terminate(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, a grace period for a clean shutdown, then SIGKILL; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Kube:
    """A connected cluster: its kubeconfig, kubectl and API clients."""

    kubeconfig: Path
    kubectl_bin: str
    api: client.ApiClient

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.kubectl_bin, *args], input=input, capture_output=True,
                                text=True, env=self.env, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def list(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        return list(listed["items"])

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                           body)

    def patch(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, body)

    def patch_status(self, plural: str, namespace: str, name: str,
                     status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural,
                                                          name, {"status": status})

    def delete(self, plural: str, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)

    def events(self, namespace: str, name: str) -> list[client.CoreV1Event]:
        listed = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}")
        return list(listed.items)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    existing = os.environ.get("EDGEFLEET_TEST_KUBECONFIG")
    if existing:
        kubeconfig, kubectl_bin, state_dir = Path(existing), "kubectl", None
    else:
        state_dir = tmp_path_factory.mktemp("cluster")
        started = localcluster.up(state_dir)
        kubeconfig, kubectl_bin = started.kubeconfig, str(started.kubectl)
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        connected = Kube(kubeconfig=kubeconfig, kubectl_bin=kubectl_bin, api=api)
        connected.kubectl("apply", "--server-side", "--force-conflicts",
                          "-f", str(REPO_ROOT / "crds"))
        # kubectl wait fails at once, not waiting, while a new CRD has no conditions yet.
        eventually(lambda: connected.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/edgemodels.edgefleet.io", "crd/edgedevices.edgefleet.io",
            check=False).returncode == 0, timeout=60, what="the CRDs established")
        yield connected
    finally:
        if state_dir is not None:
            localcluster.down(state_dir)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    kube.core.delete_namespace(name)


@dataclass
class OperatorProcess:
    """One `edgefleet-operator` process with its own metrics port."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    grpc_port: int
    log_path: Path
    args: list[str] = field(default_factory=list)
    enrolment_port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url(path))

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample on /metrics, or None if it is not exported."""
        _, text = self.get("/metrics")
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == (f"{name}{{{wanted}}}" if labels else name):
                return float(value)
        return None

    def is_ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """Simulates a crash: no clean shutdown, no lease release."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        return terminate(self.process)


StartOperator = Callable[..., OperatorProcess]


@pytest.fixture
def start_operator(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[StartOperator]:
    """Starts operators serving the test's namespace; all are stopped afterwards.
    By default each gets a Lease of its own, so tests never wait on each other's."""
    started: list[OperatorProcess] = []
    own_lease = f"edgefleet-test-{uuid.uuid4().hex[:8]}"

    def start(*extra: str, lease: str = own_lease, wait_ready: bool = True,
              grpc_port: int | None = None, enrolment_port: int | None = None,
              kubeconfig: Path | None = None, artifact_cache: str = "artifacts",
              ) -> OperatorProcess:
        """`kubeconfig`: credentials other than the admin's (a ServiceAccount's). The
        operator's own namespace (its Lease, its CA Secret) is the test's unless
        `--lease-namespace` says otherwise. `artifact_cache`: its cache folder's name
        (restarts share it, as a volume would)."""
        port = localcluster.free_port()
        grpc_port = grpc_port or localcluster.free_port()
        enrolment_port = enrolment_port or localcluster.free_port()
        own_namespace = [] if "--lease-namespace" in extra else ["--lease-namespace", namespace]
        log_path = tmp_path / f"operator-{len(started)}.log"
        args = [
            sys.executable, "-m", "edgefleet.operator",
            "--listen-host", "127.0.0.1", "--metrics-port", str(port),
            "--grpc-port", str(grpc_port), "--enrolment-port", str(enrolment_port),
            "--artifact-cache-dir", str(tmp_path / artifact_cache), *own_namespace,
            *([] if "--dataset-uri" in extra else ["--dataset-uri", str(tmp_path / "dataset")]),
            # Where tests publish artifacts; http(s) sources keep the default (public
            # addresses only), so a test serving them from loopback says so itself.
            "--artifact-file-roots", str(tmp_path), "--artifact-file-roots", str(SHARED_ARTIFACTS),
            "--namespaces", namespace, "--lease-name", lease,
            "--lease-duration-seconds", "3", "--lease-renew-seconds", "1",
            "--status-debounce-seconds", "0.05", "--model-status-write-seconds", "1", *extra,
        ]
        with open(log_path, "wb") as log_file:
            env = {**kube.env, "KUBECONFIG": str(kubeconfig)} if kubeconfig else kube.env
            process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                       env=env)
        operator = OperatorProcess(process, port, grpc_port, log_path, args, enrolment_port)
        started.append(operator)
        if wait_ready:
            eventually(lambda: operator.process.poll() is None and operator.is_ready(),
                       timeout=60, what=f"operator ready; log:\n{operator.log()[-3000:]}")
        return operator

    yield start
    for operator in started:
        operator.stop()


@dataclass
class EdgeProcess:
    """One `edgefleet-edge serve` process on free loopback ports."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        status, text = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200, f"/metrics answered {status}: {text}"
        return text

    def is_ready(self) -> bool:
        # On the metrics port: plain HTTP and open, whatever the inference ports require.
        return http_get(f"http://127.0.0.1:{self.metrics_port}/v2/health/ready",
                        timeout=2)[0] == 200


StartEdge = Callable[..., EdgeProcess]


def launch_edge(log_path: Path, command: str, *args: str,
                listen_host: str | None = "127.0.0.1", cwd: Path | None = None) -> EdgeProcess:
    """Starts `edgefleet-edge COMMAND ARGS` on free ports and waits until it is ready.
    `listen_host=None` leaves the runtime's default; `cwd` is its working directory."""
    ports = [localcluster.free_port() for _ in range(3)]
    host = ["--listen-host", listen_host] if listen_host else []
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.edge_runtime", command, *args, *host,
             "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
             "--metrics-port", str(ports[2])],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd)
    edge = EdgeProcess(process, *ports, log_path)
    try:
        eventually(lambda: edge.process.poll() is None and edge.is_ready(), timeout=60,
                   what="edge runtime ready")
    except AssertionError:
        stop_edge(edge)
        raise AssertionError(f"edge runtime did not start; log:\n{edge.log()[-3000:]}") from None
    return edge


def stop_edge(edge: EdgeProcess) -> None:
    terminate(edge.process)


@pytest.fixture
def start_edge(tmp_path: Path) -> Iterator[StartEdge]:
    """Starts edge runtimes serving a model repository; all are stopped afterwards."""
    started: list[EdgeProcess] = []

    def start(repository: Path, *extra: str, listen_host: str | None = "127.0.0.1",
              cwd: Path | None = None) -> EdgeProcess:
        started.append(launch_edge(tmp_path / f"edge-{len(started)}.log", "serve",
                                   "--model-repository", str(repository), *extra,
                                   listen_host=listen_host, cwd=cwd))
        return started[-1]

    yield start
    for edge in started:
        stop_edge(edge)


class Fleet:
    """An operator and the edge runtimes dialling its gateway; all stopped at the end.
    Devices enrol with their bootstrap token and hold sessions over mutual TLS, trusting
    the CA the operator made; `insecure` runs both sides with --insecure-plaintext."""

    OPERATOR_FLAGS = ("--heartbeat-write-seconds", "2", "--last-seen-write-seconds", "2")

    def __init__(self, kube: Kube, namespace: str, start_operator: StartOperator,
                 root: Path, insecure: bool = False, role: str = "all") -> None:
        self.kube, self.namespace, self.root = kube, namespace, root
        self.insecure, self.role = insecure, role
        self._start_operator = start_operator
        self.operator = start_operator(*self.operator_flags())
        self.edges: dict[str, EdgeProcess] = {}
        # Where devices dial and enrol, when not the operator's own gateway (a Service
        # in front of gateway replicas).
        self.gateway_address = ""
        self.enrolment_address = ""

    def operator_flags(self, *extra: str, role: str = "") -> tuple[str, ...]:
        return (*self.OPERATOR_FLAGS, *(("--insecure-plaintext",) if self.insecure else ()),
                "--role", role or self.role, *extra)

    def start_gateway_replica(self, identity: str) -> OperatorProcess:
        """A gateway replica (--role gateway) beside the operator, named `identity`, with
        an artifact cache of its own (a pod's emptyDir)."""
        return self._start_operator(*self.operator_flags("--identity", identity,
                                                         role="gateway"),
                                    artifact_cache=f"artifacts-{identity}")

    def restart_operator(self, *extra: str) -> None:
        """A crash and a new operator on the same gateway address (edges reconnect)."""
        self.operator.kill()
        self.operator = self._start_operator(*self.operator_flags(*extra),
                                             grpc_port=self.operator.grpc_port,
                                             enrolment_port=self.operator.enrolment_port)

    def ca_file(self) -> Path:
        """The gateway CA's trust bundle (ca.crt of its Secret), as a device's file."""
        secret = self.kube.core.read_namespaced_secret("edgefleet-gateway-ca", self.namespace)
        path = self.root / "gateway-ca.crt"
        path.write_bytes(base64.b64decode(secret.data["ca.crt"]))
        return path

    def add_device(self, name: str, **labels: str) -> None:
        token = f"token-{name}-{os.urandom(4).hex()}"
        self.kube.core.create_namespaced_secret(self.namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"{name}-token"), string_data={"token": token}))
        (self.root / f"{name}.token").write_text(token)
        self.kube.create("edgedevices", self.namespace, {
            "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
            "metadata": {"name": name, "labels": labels},
            "spec": {"bootstrapTokenSecretRef": {"name": f"{name}-token"}}})

    def link_flags(self) -> list[str]:
        """How a device reaches and trusts the gateway."""
        if self.insecure:
            return ["--insecure-plaintext"]
        return ["--tls-ca-file", str(self.ca_file()), "--enrolment-address",
                self.enrolment_address or f"127.0.0.1:{self.operator.enrolment_port}"]

    def start(self, name: str, *extra: str, link: list[str] | None = None) -> EdgeProcess:
        """`link`: how the device reaches and trusts the gateway, if not link_flags()."""
        token = self.root / f"{name}.token"
        edge = launch_edge(
            self.root / f"{name}.log", "run",
            "--cloud", self.gateway_address or f"127.0.0.1:{self.operator.grpc_port}",
            "--namespace", self.namespace, "--device", name,
            *(["--token-file", str(token)] if token.exists() else []),
            *(self.link_flags() if link is None else link),
            "--data-dir", str(self.root / f"{name}-data"), "--heartbeat-seconds", "1",
            "--backoff-base-seconds", "0.2", "--backoff-max-seconds", "2", *extra)
        self.edges[name] = edge
        return edge

    def stop(self) -> None:
        for edge in self.edges.values():
            stop_edge(edge)


@pytest.fixture
def fleet(kube: Kube, namespace: str, start_operator: StartOperator,
          tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(kube, namespace, start_operator, tmp_path)
    yield started
    started.stop()


@pytest.fixture
def plaintext_fleet(kube: Kube, namespace: str, start_operator: StartOperator,
                    tmp_path: Path) -> Iterator[Fleet]:
    """Both sides with --insecure-plaintext: calls carry the bearer token and name the
    device themselves, so a test can speak the protocol by hand with any token."""
    started = Fleet(kube, namespace, start_operator, tmp_path, insecure=True)
    yield started
    started.stop()


@pytest.fixture
def devices() -> Iterator[list[Any]]:
    """Fake devices (test_gateway_security.FakeDevice) a test connects; all closed
    afterwards."""
    connected: list[Any] = []
    yield connected
    for device in connected:
        device.close()


@dataclass
class Prometheus:
    """A real Prometheus scraping the given targets every second."""

    process: subprocess.Popen[bytes]
    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of a PromQL query (empty when nothing matches yet)."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        status, body = http_get(address, timeout=10)
        answer = json.loads(body) if status else {"status": "unreachable", "error": body}
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def samples(self, selector: str, start: float, end: float) -> list[tuple[float, float]]:
        """The raw samples (timestamp, value) a series selector stored between two Unix
        times, whatever time they arrived."""
        seconds = max(1, int(end - start) + 1)
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": f"{selector}[{seconds}s]", "time": f"{end:.3f}"})
        status, body = http_get(address, timeout=10)
        answer = json.loads(body) if status else {"status": "unreachable", "error": body}
        assert answer["status"] == "success", answer
        return [(float(t), float(v)) for series in answer["data"]["result"]
                for t, v in series["values"] if float(t) >= start]


StartPrometheus = Callable[..., Prometheus]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[StartPrometheus]:
    started: list[Prometheus] = []
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make prometheus` (make test does)"

    def start(targets: list[str], labels: dict[str, dict[str, str]] | None = None,
              rule_files: list[Path] | None = None) -> Prometheus:
        """Scrapes `targets` every second; `labels` adds labels per target (a device's
        name, as a site's scrape configuration would); `rule_files` are evaluated every
        second."""
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files or []],
            "scrape_configs": [{"job_name": "edgefleet", "static_configs": [
                {"targets": [target], "labels": (labels or {}).get(target, {})}
                for target in targets]}],
        }))
        port = localcluster.free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver"],
                stdout=log, stderr=log)
        server = Prometheus(process, f"http://127.0.0.1:{port}")
        started.append(server)

        eventually(lambda: http_get(f"{server.url}/-/ready", timeout=2)[0] == 200,
                   timeout=60, what="prometheus ready")
        return server

    yield start
    for server in started:
        terminate(server.process)
