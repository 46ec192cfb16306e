"""Fleet scale benchmark: the operator and its fleet gateway against N simulated devices
that speak the real protocol over mutual TLS, beside a real kube-apiserver and etcd.

    .venv/bin/python benchmarks/fleet_scale.py [--devices 500,1000] [--sim-processes 1]
        [--steady-seconds 300] [--operator-flag=--heartbeat-write-seconds=60 ...]
        [--gateway-replicas 2] [--json results.json] [--svg docs/fleet-scale.svg]

One local control plane for the whole run; for each fleet size N a namespace of its
own, a fresh operator serving it, and N devices (benchmarks/fleet_sim.py: the edge
runtime's CloudAgent with an engine that loads nothing, a real Store each, one gRPC
connection each, heartbeats every 10 s as the runtime's default). Devices are
provisioned as enrolled ones are: the benchmark supplies the gateway CA and the
signing key as Secrets (as an admin or cert-manager does), issues each device its
certificate with operator/pki.py, writes DATA/identity/ and records status.identity, so
that N devices never queue at the enrolment rate limit. Then, per N:

- start: operator spawned until every EdgeDevice has a phase (it lists and publishes all);
- online: devices started until every EdgeDevice is Online (a watch on the API); also
  until every device received its desired state (the devices' side);
- steady (devices idle, --steady-seconds, by default one period of the operator's
  --last-seen-write-seconds, so that every device's lastSeen is written once in it):
  API writes/s from the kube-apiserver's own
  apiserver_request_total (POST/PUT/PATCH/DELETE, by resource/subresource); operator
  CPU (utime+stime of /proc/PID/stat, % of one core) and RSS (VmRSS); TCP payload bytes
  per device per second on the gateway connections (`ss -ti`: bytes_acked, what the
  device sent, plus bytes_received, what it got; TLS records and HTTP/2 frames
  included, TCP/IP headers not);
- rollouts of a ~40 KB ONNX model (hack/testmodels.py mlp): the first deployment, an
  AllAtOnce rollout (maxUnavailable 100%) and a Canary of 10% then 100% (pauseSeconds 0,
  no analysis): seconds until status.stableVersion is the new version with
  status.devices.ready == N, the API writes by resource and the operator's reconciles
  (edgefleet_operator_reconciles_total) until then (plus 5 s to settle);
- storm: the gateway restarted (SIGTERM, then started again on the same ports) with
  every device connected: seconds until every device has its desired state again and
  every EdgeDevice is Online with a lastSeen the new process wrote.

With --gateway-replicas K the operator runs as `--role controller` and K processes as
`--role gateway` listen on one gRPC port (gRPC sets SO_REUSEPORT: the kernel spreads new
connections over the live replicas, as a Service does over its ready endpoints); the
storm restarts every replica at once. With K >= 2 a further phase, failover, kills one
replica (SIGKILL: it writes nothing more) and measures the seconds until every device it
served has a new session and every EdgeDevice is Online on another replica, then counts
the devices whose status still shows the last version Ready (no status lost); it comes
after the rollouts, before the storm (which starts the killed replica again).

CPU of the operator, the devices (the simulator processes), kube-apiserver, etcd and
the whole machine is printed per phase: where the simulator itself takes a large share,
the figures are the machine's, not the operator's. Prints a table per N; --json writes
every figure, --svg a plot of cost per device against N.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from edgefleet.operator import pki

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))
import testmodels  # noqa: E402

import localcluster  # noqa: E402

SIMULATOR = Path(__file__).resolve().with_name("fleet_sim.py")
GROUP, VERSION = "edgefleet.io", "v1alpha1"
CA_SECRET, SIGNING_SECRET = "edgefleet-gateway-ca", "edgefleet-assignment-signing"
MODEL = "fleet-model"
LABELS = {"edgefleet-bench": "fleet"}
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
CERT_VALIDITY = timedelta(days=30)  # the operator's default: no renewal during a run
GROUPS = ("operator", "gateways", "devices", "apiserver", "etcd", "kcm", "bench", "others",
          "machine")
SETTLE_S = 5.0  # after a rollout completes, for its last writes to land
# The rollouts measured, in order, each to a new version of the model: its first
# deployment, then AllAtOnce, then a Canary of two steps; analysis off, no pauses.
ROLLOUTS: list[tuple[str, dict[str, Any]]] = [
    ("first", {"strategy": "AllAtOnce", "maxUnavailable": "100%"}),
    ("allAtOnce", {"strategy": "AllAtOnce", "maxUnavailable": "100%"}),
    ("canary", {"strategy": "Canary", "maxUnavailable": "100%", "steps": [
        {"percent": 10, "pauseSeconds": 0}, {"percent": 100, "pauseSeconds": 0}]}),
]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f">> {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc_pid_stat(5)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Usage:
    """CPU seconds of named groups of processes, read at phase boundaries: a phase's
    share of one core is its delta over the wall time."""

    def __init__(self) -> None:
        self.groups: dict[str, Callable[[], list[int]]] = {}

    def snapshot(self) -> dict[str, float]:
        shot = {name: sum(cpu_seconds(pid) for pid in pids())
                for name, pids in self.groups.items()}
        busy, total = machine_jiffies()
        shot["machine"] = busy / CLK_TCK
        shot["wall"] = time.monotonic()
        shot["cores"] = total / CLK_TCK  # all cores' seconds, for the machine's share
        return shot

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """% of one core per group; `machine`: % of all cores busy."""
        wall = max(after["wall"] - before["wall"], 1e-9)
        shares = {name: round(100 * (after[name] - before[name]) / wall, 1)
                  for name in before if name not in ("wall", "cores", "machine")}
        cores = max(after["cores"] - before["cores"], 1e-9)
        shares["machine"] = round(100 * (after["machine"] - before["machine"]) / cores, 1)
        # Everything else on the machine (other work beside the benchmark), % of a core.
        machine_core_s = (after["machine"] - before["machine"]) / wall
        shares["others"] = round(max(0.0, 100 * machine_core_s - sum(
            v for k, v in shares.items() if k != "machine")), 1)
        return shares


class PeakRss(threading.Thread):
    """Samples one process's VmRSS every half second; the peak of what it saw."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self.peak = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            pid = self._pid()
            if pid:
                self.peak = max(self.peak, rss_mib(pid))


# ---------------------------------------------------------------- metrics


def parse_samples(text: str, name: str) -> Iterable[tuple[dict[str, str], float]]:
    """(labels, value) of each sample of one metric in Prometheus text format."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels_text, _, value = line[len(name) + 1:].rpartition("} ")
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_text))
        yield labels, float(value)


def apiserver_writes(cluster: localcluster.Cluster) -> Counter[str]:
    """Write requests the kube-apiserver served since it started, by resource (with
    `/subresource`), from its own /metrics."""
    pki_dir = cluster.state_dir / "pki"
    context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
    with urllib.request.urlopen(f"{cluster.server}/metrics", context=context,
                                timeout=30) as response:
        text = response.read().decode()
    writes: Counter[str] = Counter()
    for labels, value in parse_samples(text, "apiserver_request_total"):
        if labels.get("verb") in WRITE_VERBS:
            sub = labels.get("subresource", "")
            writes[labels.get("resource", "?") + (f"/{sub}" if sub else "")] += int(value)
    return writes


def operator_counter(metrics_ports: Iterable[int], name: str, label: str) -> Counter[str]:
    """One of the operator's counters by one label, summed over processes (a process
    that does not answer counts nothing)."""
    counts: Counter[str] = Counter()
    for port in metrics_ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=30) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            continue
        for labels, value in parse_samples(text, name):
            counts[labels.get(label, "?")] += int(value)
    return counts


def operator_reconciles(metrics_port: int) -> Counter[str]:
    """edgefleet_operator_reconciles_total by resource, all outcomes."""
    return operator_counter([metrics_port], "edgefleet_operator_reconciles_total", "resource")


def gateway_status_writes(gateways: list[OperatorProcess]) -> Counter[str]:
    """The gateways' EdgeDevice status writes by cause (Connect, Models, Liveness,
    Disconnect)."""
    return operator_counter([g.metrics_port for g in gateways],
                            "edgefleet_operator_gateway_status_writes_total", "cause")


def operator_took_in(metrics_port: int) -> int:
    """How many EdgeDevices the operator has reconciled at least once (published to its
    gateway): its devices-by-phase gauge, or its EdgeDevice reconciles."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=30) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return 0
    by_phase = sum(value for _, value in parse_samples(text, "edgefleet_operator_devices"))
    reconciled = sum(value for labels, value in parse_samples(
        text, "edgefleet_operator_reconciles_total") if labels.get("resource") == "EdgeDevice")
    return int(max(by_phase, reconciled))


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in sorted(after)
            if after[key] - before[key] > 0}


def wire_bytes(gateway_port: int) -> dict[str, tuple[int, int]]:
    """Per device connection (its local address) to the gateway port: TCP payload bytes
    it sent that were acknowledged, and bytes it received (tcp_info, via `ss -ti`)."""
    listed = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( dport = :{gateway_port} )"],
        check=True, capture_output=True, text=True).stdout
    sockets: dict[str, tuple[int, int]] = {}
    local = ""
    for line in listed.splitlines():
        if not line[:1].isspace():
            parts = line.split()
            local = parts[2] if len(parts) >= 4 else ""
            continue
        acked = re.search(r"\bbytes_acked:(\d+)", line)
        received = re.search(r"\bbytes_received:(\d+)", line)
        if local:
            sockets[local] = (int(acked.group(1)) if acked else 0,
                              int(received.group(1)) if received else 0)
    return sockets


# ---------------------------------------------------------------- the operator


@dataclass
class OperatorProcess:
    """One operator process (or gateway replica) serving one namespace, on ports kept
    across restarts."""

    name: str
    namespace: str
    root: Path
    env: dict[str, str]
    extra: list[str]
    grpc_port: int = field(default_factory=localcluster.free_port)
    enrolment_port: int = field(default_factory=localcluster.free_port)
    metrics_port: int = field(default_factory=localcluster.free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def command(self) -> list[str]:
        """The operator's command line: the one place that says how it runs."""
        return [sys.executable, "-m", "edgefleet.operator",
                "--listen-host", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                "--grpc-port", str(self.grpc_port),
                "--enrolment-port", str(self.enrolment_port),
                "--namespaces", self.namespace, "--lease-namespace", self.namespace,
                "--artifact-cache-dir", str(self.root / "operator-cache"),
                "--artifact-file-roots", str(self.root / "artifacts"), *self.extra]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def start(self) -> None:
        self.starts += 1
        with open(self.root / f"{self.name}-{self.starts}.log", "wb") as log_file:
            self.process = subprocess.Popen(self.command(), env=self.env, cwd=self.root,
                                            stdout=log_file, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: a crash, a node lost; the process writes nothing more."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise SystemExit(f"{self.name} exited; its log:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz",
                                        timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self) -> str:
        return (self.root / f"{self.name}-{self.starts}.log").read_text(
            errors="replace")[-3000:]


# ---------------------------------------------------------------- the devices


class Simulator:
    """The fleet_sim.py processes, and when each device last received its first desired
    state in a session."""

    def __init__(self, root: Path, names: list[str], namespace: str, cloud: str,
                 processes: int) -> None:
        self.names = names
        self.sessions: dict[str, float] = {}
        self._changed = threading.Condition()
        self.workers: list[subprocess.Popen[str]] = []
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        for index in range(processes):
            chunk = names[index::processes]
            with open(root / f"devices-{index}.log", "wb") as log_file:
                worker = subprocess.Popen(
                    [sys.executable, str(SIMULATOR), "--root", str(root / "devices"),
                     "--cloud", cloud, "--namespace", namespace, "--devices", *chunk],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                    text=True, env=env)
            self.workers.append(worker)
        for worker in self.workers:  # each says `ready N` once its devices are built
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if not line.startswith("ready"):
                raise SystemExit(f"a device simulator failed to start (see {root})")
            threading.Thread(target=self._read, args=(worker,), daemon=True).start()

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.poll() is None]

    def _read(self, worker: subprocess.Popen[str]) -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "session":
                name, at = rest.split()
                with self._changed:
                    self.sessions[name] = float(at)
                    self._changed.notify_all()

    def go(self) -> None:
        for worker in self.workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()

    def connected_since(self, since: float) -> int:
        with self._changed:
            return sum(1 for at in self.sessions.values() if at >= since)

    def wait_sessions(self, since: float, timeout: float,
                      names: Iterable[str] | None = None) -> float | None:
        """Unix time at which every device (of `names`, by default all) had a session's
        desired state after `since`."""
        waited = list(self.names if names is None else names)
        deadline = time.monotonic() + timeout
        with self._changed:
            while any(self.sessions.get(n, 0.0) < since for n in waited):
                if not self._changed.wait(max(0.0, deadline - time.monotonic())):
                    return None
            return max((self.sessions[n] for n in waited), default=since)

    def missing_since(self, since: float) -> list[str]:
        """The devices with no desired state from a session after `since`."""
        with self._changed:
            return [n for n in self.names if self.sessions.get(n, 0.0) < since]

    def where(self, names: list[str]) -> None:
        """Has each simulator print where these devices' loops wait (to its log)."""
        for worker in self.workers:
            assert worker.stdin is not None
            worker.stdin.write(f"where {' '.join(names)}\n")
            worker.stdin.flush()

    def stop(self) -> None:
        for worker in self.workers:
            try:
                assert worker.stdin is not None
                worker.stdin.write("stop\n")
                worker.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        for worker in self.workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def issue_identity(ca: pki.CertificateAuthority, namespace: str, name: str,
                   data_dir: Path, signing_public: bytes) -> pki.IssuedCertificate:
    """What an enrolled device holds in DATA/identity/: its key and certificate, the
    trust bundle and the operator's signing key (edge_runtime/identity.py)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    issued = ca.issue_device(csr, namespace, name, CERT_VALIDITY)
    directory = data_dir / "identity"
    directory.mkdir(mode=0o700, parents=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (directory / "identity.pem").write_bytes(key_pem + issued.pem)
    (directory / "trust.pem").write_bytes(ca.bundle_pem)
    (directory / "signing.pub").write_bytes(signing_public)
    return issued


def rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def provision(api: client.ApiClient, namespace: str, names: list[str], root: Path) -> None:
    """The namespace, the gateway CA and signing key Secrets, and N enrolled devices."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    ca_pem, ca_key = pki.new_ca(datetime.now(UTC))
    signing_key = pki.new_signing_key()
    for name, kind, data in (
            (CA_SECRET, "kubernetes.io/tls",
             {"tls.crt": ca_pem, "tls.key": ca_key, "ca.crt": ca_pem}),
            (SIGNING_SECRET, "Opaque", {pki.SIGNING_SECRET_KEY: signing_key})):
        core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), type=kind,
            data={k: base64.b64encode(v).decode() for k, v in data.items()}))
    ca = pki.CertificateAuthority(ca_pem, ca_key, ca_pem)
    signing_public = pki.public_key_bytes(pki.load_signing_key(signing_key))

    def one(name: str) -> None:
        issued = issue_identity(ca, namespace, name, root / "devices" / name, signing_public)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "edgedevices", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeDevice",
            "metadata": {"name": name, "labels": LABELS,
                         "annotations": {f"{GROUP}/approved": "true"}},
            "spec": {}})
        token = os.urandom(16).hex()  # never used: the device is enrolled already
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "edgedevices", name, {"status": {"identity": {
                "state": "Enrolled", "serial": issued.serial,
                "notBefore": rfc3339(issued.not_before), "notAfter": rfc3339(issued.not_after),
                "enrolledAt": rfc3339(datetime.now(UTC)), "enrolment": "FleetToken",
                "tokenFingerprint": pki.token_fingerprint(signing_key, namespace, name,
                                                          token)}}})

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, names))


# ---------------------------------------------------------------- watching the API


@dataclass(frozen=True)
class Seen:
    """What the API says of one device."""

    phase: str
    last_seen: datetime | None
    gateway: str  # the replica holding its session (status.connection), "" when none


class DeviceWatch(threading.Thread):
    """Every EdgeDevice's phase, lastSeen and gateway in one namespace, from a list and a
    watch."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self._custom = client.CustomObjectsApi(api)
        self._namespace = namespace
        self.devices: dict[str, Seen] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._listed = threading.Event()

    def _take(self, body: dict[str, Any], deleted: bool = False) -> None:
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        seen = status.get("lastSeen")
        with self._changed:
            if deleted:
                self.devices.pop(name, None)
            else:
                self.devices[name] = Seen(
                    status.get("phase", ""), datetime.fromisoformat(seen) if seen else None,
                    (status.get("connection") or {}).get("gateway", ""))
            self._changed.notify_all()

    def run(self) -> None:
        version = ""
        while not self._stop.is_set():
            if not version:
                listed = self._custom.list_namespaced_custom_object(
                    GROUP, VERSION, self._namespace, "edgedevices")
                for item in listed["items"]:
                    self._take(item)
                version = listed["metadata"]["resourceVersion"]
                self._listed.set()
            try:
                for event in watch.Watch().stream(
                        self._custom.list_namespaced_custom_object, GROUP, VERSION,
                        self._namespace, "edgedevices", resource_version=version,
                        timeout_seconds=60):
                    if self._stop.is_set():
                        return
                    body = event["object"]
                    if event["type"] == "ERROR":
                        version = ""  # expired: list again
                        break
                    version = body["metadata"]["resourceVersion"]
                    self._take(body, deleted=event["type"] == "DELETED")
            except ApiException as error:
                if error.status == 410:
                    version = ""
                else:
                    time.sleep(1)
            except Exception:  # a dropped stream: watch again from where it was
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()

    def names(self, check: Callable[[Seen], bool]) -> list[str]:
        with self._changed:
            return [name for name, seen in self.devices.items() if check(seen)]

    def wait(self, check: Callable[[Seen], bool], n: int, timeout: float) -> float | None:
        """Unix time at which `n` devices passed `check`; None after `timeout`."""
        self._listed.wait(timeout)
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for seen in self.devices.values() if check(seen)) < n:
                if not self._changed.wait(max(0.0, deadline - time.monotonic())):
                    return None
            return time.time()


# ---------------------------------------------------------------- one fleet size


@dataclass
class Rollout:
    seconds: float | None
    writes: dict[str, int]
    reconciles: dict[str, int]
    cpu: dict[str, float]
    status_writes: dict[str, int]  # the gateways' EdgeDevice writes by cause

    @property
    def device_writes(self) -> int:
        return sum(v for k, v in self.writes.items() if k.startswith("edgedevices"))

    @property
    def model_writes(self) -> int:
        return sum(v for k, v in self.writes.items() if k.startswith("edgemodels"))


@dataclass
class SizeResult:
    devices: int
    gateway_replicas: int = 0  # 0: the gateway runs in the operator (--role all)
    provision_s: float = 0.0
    start_s: float | None = None  # operator spawned -> every EdgeDevice has a phase
    online_s: float | None = None  # devices started -> every EdgeDevice Online
    sessions_s: float | None = None  # devices started -> every device got desired state
    connections: int = 0  # TCP connections to the gateway port seen while steady
    steady_s: float = 0.0
    steady_writes: dict[str, int] = field(default_factory=dict)
    steady_writes_per_s: float = 0.0
    wire_up_bytes_per_device_s: float = 0.0  # device -> gateway
    wire_down_bytes_per_device_s: float = 0.0  # gateway -> device
    rss_idle_mib: float = 0.0
    rss_peak_mib: float = 0.0
    gateway_rss_idle_mib: float = 0.0  # all replicas together
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> group -> %
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    storm_down_s: float | None = None  # SIGTERM -> the old process exited
    storm_ready_s: float | None = None  # SIGTERM -> the new process ready
    storm_sessions_s: float | None = None  # SIGTERM -> every device has desired state
    storm_online_s: float | None = None  # SIGTERM -> every EdgeDevice Online, new lastSeen
    storm_writes: dict[str, int] = field(default_factory=dict)
    failover_moved: int = 0  # devices whose replica was killed
    failover_sessions_s: float | None = None  # SIGKILL -> each of them has a new session
    failover_online_s: float | None = None  # SIGKILL -> every EdgeDevice Online elsewhere
    failover_status_kept: int = 0  # devices whose status still shows the last version Ready

    @property
    def steady_cpu(self) -> float:
        return self.cpu.get("steady", {}).get("operator", 0.0)


def models_built(root: Path) -> list[tuple[str, str, int]]:
    """Three versions of a ~40 KB model (same shape, other weights): (uri, sha, size)."""
    built = []
    for seed in range(3):
        model = testmodels.mlp(seed=seed)
        sha = hashlib.sha256(model).hexdigest()
        path = root / "artifacts" / f"{sha}.onnx"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(model)
        built.append((path.as_uri(), sha, len(model)))
    return built


class ModelProgress:
    """Whether the EdgeModel reports the version stable on all N devices; gives up on a
    status that stays the same for `stall_s` (a rollout that stopped moving)."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str, version: str,
                 n: int, stall_s: float) -> None:
        self._custom, self._namespace, self._version, self._n = custom, namespace, version, n
        self._stall_s = stall_s
        self._last: dict[str, Any] | None = None
        self._changed_at = time.monotonic()
        self.stalled = False

    def __call__(self) -> bool:
        try:
            status = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self._namespace, "edgemodels", MODEL).get("status") or {}
        except ApiException:
            return False
        if status != self._last:
            self._last, self._changed_at = status, time.monotonic()
        elif time.monotonic() - self._changed_at > self._stall_s:
            self.stalled = True
            return True
        return (status.get("stableVersion") == self._version and not status.get("rollout")
                and (status.get("devices") or {}).get("ready") == self._n)


def wait_for(check: Callable[[], bool], timeout: float, every: float = 0.25) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(every)
    return None


def measure_size(cluster: localcluster.Cluster, api: client.ApiClient, n: int,
                 args: argparse.Namespace, root: Path) -> SizeResult:
    namespace = f"fleet-{n}"
    names = [f"dev-{i}" for i in range(n)]
    result = SizeResult(devices=n)
    custom = client.CustomObjectsApi(api)
    # Generous bounds: a size that does not finish says so and goes on.
    timeout = args.wait_seconds or 120.0 + 0.2 * n

    started = time.monotonic()
    provision(api, namespace, names, root)
    models = models_built(root)
    result.provision_s = round(time.monotonic() - started, 1)
    log(f"N={n}: provisioned in {result.provision_s}s")

    env = {**cluster.env(), "PYTHONSAFEPATH": "1"}
    replicas = result.gateway_replicas = args.gateway_replicas
    operator = OperatorProcess("operator", namespace, root, env, [
        *(["--role", "controller"] if replicas else []), *args.operator_flags])
    # The processes devices connect to, all on the operator's gRPC port.
    gateways = [OperatorProcess(
        f"gateway-{i}", namespace, root, env,
        ["--role", "gateway", "--identity", f"gateway-{i}", *args.operator_flags],
        grpc_port=operator.grpc_port) for i in range(replicas)] or [operator]
    processes = [operator, *gateways] if replicas else [operator]
    usage = Usage()
    usage.groups["operator"] = lambda: [operator.pid] if operator.pid else []
    if replicas:
        usage.groups["gateways"] = lambda: [g.pid for g in gateways if g.pid]
    usage.groups["apiserver"] = lambda: pid_of(cluster, "kube-apiserver")
    usage.groups["etcd"] = lambda: pid_of(cluster, "etcd")
    usage.groups["kcm"] = lambda: pid_of(cluster, "kube-controller-manager")
    usage.groups["bench"] = lambda: [os.getpid()]
    peak = PeakRss(lambda: operator.pid)
    peak.start()
    devices = DeviceWatch(api, namespace)
    devices.start()
    simulator: Simulator | None = None
    try:
        before = usage.snapshot()
        spawned = time.time()
        operator.start()
        for gateway in gateways if replicas else []:
            gateway.start()
        at = wait_for(lambda: operator_took_in(operator.metrics_port) >= n, timeout)
        result.start_s = round(at - spawned, 2) if at else None
        wait_for(lambda: all(p.ready() for p in processes), 60)
        result.cpu["start"] = Usage.percent(before, usage.snapshot())
        log(f"N={n}: operator took in every device in {result.start_s}s")

        sim = simulator = Simulator(root, names, namespace,
                                    f"127.0.0.1:{operator.grpc_port}", args.sim_processes)
        usage.groups["devices"] = sim.pids
        before = usage.snapshot()
        went = time.time()
        sim.go()
        done = sim.wait_sessions(went, timeout)
        result.sessions_s = round(done - went, 2) if done else None
        at = devices.wait(lambda seen: seen.phase == "Online", n, timeout)
        result.online_s = round(at - went, 2) if at else None
        result.cpu["online"] = Usage.percent(before, usage.snapshot())
        log(f"N={n}: sessions {result.sessions_s}s, Online {result.online_s}s")

        time.sleep(5)  # the connect's last writes land first
        writes_before, wire_before = apiserver_writes(cluster), wire_bytes(operator.grpc_port)
        before = usage.snapshot()
        time.sleep(args.steady_seconds)
        after = usage.snapshot()
        writes_after, wire_after = apiserver_writes(cluster), wire_bytes(operator.grpc_port)
        result.steady_s = after["wall"] - before["wall"]
        result.cpu["steady"] = Usage.percent(before, after)
        result.steady_writes = delta(writes_after, writes_before)
        result.steady_writes_per_s = round(sum(result.steady_writes.values())
                                           / result.steady_s, 2)
        result.rss_idle_mib = round(rss_mib(operator.pid or 0), 1)
        if replicas:
            result.gateway_rss_idle_mib = round(sum(rss_mib(g.pid or 0) for g in gateways), 1)
        common = wire_before.keys() & wire_after.keys()
        result.connections = len(wire_after)
        per = n * result.steady_s
        result.wire_up_bytes_per_device_s = round(sum(
            wire_after[k][0] - wire_before[k][0] for k in common) / per, 1)
        result.wire_down_bytes_per_device_s = round(sum(
            wire_after[k][1] - wire_before[k][1] for k in common) / per, 1)
        log(f"N={n}: steady {result.steady_writes_per_s} writes/s, operator "
            f"{result.steady_cpu}% CPU, {result.connections} connections")

        for (label, rollout), (uri, sha, _) in zip(ROLLOUTS if args.rollouts else [],
                                                   models, strict=False):
            version = str(len(result.rollouts) + 1)
            spec = {"version": version, "source": {"uri": uri, "sha256": sha},
                    "selector": {"matchLabels": LABELS}, "rollout": rollout}
            writes_before = apiserver_writes(cluster)
            reconciles_before = operator_reconciles(operator.metrics_port)
            causes_before = gateway_status_writes(gateways)
            before = usage.snapshot()
            began = time.time()
            if label == "first":
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "edgemodels", {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeModel",
                    "metadata": {"name": MODEL}, "spec": spec})
            else:
                custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "edgemodels",
                                                      MODEL, {"spec": spec})
            progress = ModelProgress(custom, namespace, version, n, args.stall_seconds)
            at = wait_for(progress, timeout)
            if progress.stalled:
                log(f"N={n}: rollout {label}: the EdgeModel status has not changed for "
                    f"{args.stall_seconds:.0f}s; giving up on it")
                at = None
            cpu = Usage.percent(before, usage.snapshot())
            time.sleep(SETTLE_S)
            result.rollouts[label] = Rollout(
                round(at - began, 2) if at else None,
                delta(apiserver_writes(cluster), writes_before),
                delta(operator_reconciles(operator.metrics_port), reconciles_before), cpu,
                delta(gateway_status_writes(gateways), causes_before))
            log(f"N={n}: rollout {label} {result.rollouts[label].seconds}s")
        result.rss_peak_mib = round(max(peak.peak, rss_mib(operator.pid or 0, "VmHWM")), 1)
        if replicas >= 2:  # the killed replica comes back in the storm
            measure_failover(result, gateways[0], sim, devices, custom, namespace, timeout)

        writes_before = apiserver_writes(cluster)
        stopped = time.time()
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda gateway: gateway.stop(), gateways))
        result.storm_down_s = round(time.time() - stopped, 2)
        before = usage.snapshot()  # the storm's CPU is the new processes', from their spawn
        respawned = time.time()
        for gateway in gateways:
            gateway.start()
        at = wait_for(lambda: all(g.ready() for g in gateways), 120, every=0.1)
        result.storm_ready_s = round(at - stopped, 2) if at else None
        done = sim.wait_sessions(respawned, timeout)
        result.storm_sessions_s = round(done - stopped, 2) if done else None
        if not done:
            missing = sim.missing_since(respawned)
            sim.where(missing[:10])
            log(f"N={n}: storm: {len(missing)} devices without a new session, e.g. "
                f"{' '.join(missing[:10])} (where they wait: devices-*.log)")
        fresh = datetime.fromtimestamp(math.floor(respawned), UTC)
        at = devices.wait(lambda seen: seen.phase == "Online" and seen.last_seen is not None
                          and seen.last_seen >= fresh, n, timeout)
        result.storm_online_s = round(at - stopped, 2) if at else None
        result.cpu["storm"] = Usage.percent(before, usage.snapshot())
        time.sleep(SETTLE_S)
        result.storm_writes = delta(apiserver_writes(cluster), writes_before)
        log(f"N={n}: storm: ready {result.storm_ready_s}s, sessions "
            f"{result.storm_sessions_s}s, Online {result.storm_online_s}s")
    finally:
        peak.stopped.set()
        devices.stop()
        if simulator:
            simulator.stop()
        for process in processes:
            process.stop()
    return result


def measure_failover(result: SizeResult, victim: OperatorProcess, sim: Simulator,
                     devices: DeviceWatch, custom: client.CustomObjectsApi, namespace: str,
                     timeout: float) -> None:
    """Kills one gateway replica: its devices reconnect to the others; nothing written
    about them before may be lost."""
    n = result.devices
    moved = devices.names(lambda seen: seen.gateway == victim.name)
    result.failover_moved = len(moved)
    killed = time.time()
    victim.kill()
    done = sim.wait_sessions(killed, timeout, moved)
    result.failover_sessions_s = round(done - killed, 2) if done else None
    at = devices.wait(lambda seen: seen.phase == "Online" and seen.gateway not in ("",
                      victim.name), n, timeout)
    result.failover_online_s = round(at - killed, 2) if at else None
    time.sleep(SETTLE_S)
    version = str(len(result.rollouts))  # the last one rolled out ("0": none, none kept)
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "edgedevices")
    result.failover_status_kept = sum(
        1 for item in listed["items"]
        if any(m.get("name") == MODEL and m.get("version") == version
               and m.get("state") == "Ready"
               for m in (item.get("status") or {}).get("models") or []))
    log(f"N={n}: failover: {len(moved)} devices on {victim.name}; new sessions "
        f"{result.failover_sessions_s}s, all Online elsewhere {result.failover_online_s}s; "
        f"{result.failover_status_kept} of {n} still report version {version} Ready")


def pid_of(cluster: localcluster.Cluster, name: str) -> list[int]:
    try:
        return [int((cluster.state_dir / f"{name}.pid").read_text())]
    except (OSError, ValueError):
        return []


# ---------------------------------------------------------------- reporting


def show(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(results: list[SizeResult], args: argparse.Namespace, described: str) -> str:
    lines = [f"Fleet scale, {time.strftime('%Y-%m-%d %H:%M')}, {described}, "
             f"{platform.machine()}, {os.cpu_count()} cores, "
             f"{args.sim_processes} simulator process(es), "
             f"{args.gateway_replicas or 'no'} gateway replicas, steady window "
             f"{args.steady_seconds:.0f}s, operator flags: {' '.join(args.operator_flags)}"]
    head = (f"{'N':>6} {'start':>6} {'online':>7} {'sess':>6} {'storm':>6} {'stormOn':>7} "
            f"{'wr/s':>6} {'opCPU%':>6} {'RSS':>6} {'peak':>6} {'B/dev/s':>8} {'conns':>6}")
    lines += ["", head]
    for r in results:
        lines.append(
            f"{r.devices:>6} {show(r.start_s):>6} {show(r.online_s):>7} "
            f"{show(r.sessions_s):>6} {show(r.storm_sessions_s):>6} "
            f"{show(r.storm_online_s):>7} {r.steady_writes_per_s:>6.2f} "
            f"{r.steady_cpu:>6.1f} {r.rss_idle_mib:>6.0f} {r.rss_peak_mib:>6.0f} "
            f"{r.wire_up_bytes_per_device_s + r.wire_down_bytes_per_device_s:>8.1f} "
            f"{r.connections:>6}")
    lines += ["", f"{'N':>6} {'rollout':>10} {'s':>7} {'ED wr':>7} {'models':>7} "
              f"{'EM wr':>6} {'all wr':>7} {'ED rec':>7} {'EM rec':>6} {'opCPU%':>6}"]
    for r in results:
        for label, rollout in r.rollouts.items():
            lines.append(
                f"{r.devices:>6} {label:>10} {show(rollout.seconds):>7} "
                f"{rollout.device_writes:>7} {rollout.status_writes.get('Models', 0):>7} "
                f"{rollout.model_writes:>6} "
                f"{sum(rollout.writes.values()):>7} "
                f"{rollout.reconciles.get('EdgeDevice', 0):>7} "
                f"{rollout.reconciles.get('EdgeModel', 0):>6} "
                f"{rollout.cpu.get('operator', 0):>6.1f}")
    lines += ["", f"{'N':>6} {'phase':>10} " + " ".join(
        f"{g:>9}" for g in GROUPS)]
    for r in results:
        phases = {**r.cpu, **{f"r:{k}": v.cpu for k, v in r.rollouts.items()}}
        for phase, shares in phases.items():
            lines.append(f"{r.devices:>6} {phase:>10} " + " ".join(
                f"{shares.get(g, 0):>9.1f}" for g in
                GROUPS))
    if any(r.gateway_replicas for r in results):
        lines += ["", f"{'N':>6} {'replicas':>8} {'gwRSS':>6} {'moved':>6} {'sess':>6} "
                      f"{'Online':>7} {'kept':>6}"]
        lines += [f"{r.devices:>6} {r.gateway_replicas:>8} {r.gateway_rss_idle_mib:>6.0f} "
                  f"{r.failover_moved:>6} {show(r.failover_sessions_s):>6} "
                  f"{show(r.failover_online_s):>7} {r.failover_status_kept:>6}"
                  for r in results if r.gateway_replicas]
    lines += ["", "steady writes by resource: " + "; ".join(
        f"N={r.devices}: " + ", ".join(f"{k} {v}" for k, v in r.steady_writes.items())
        for r in results)]
    lines += [
        "",
        "start: operator spawned -> every EdgeDevice has a phase; online: devices started "
        "-> every EdgeDevice Online (API); sess: -> every device got its desired state; "
        "storm/stormOn: gateway SIGTERM -> every device has its desired state again / "
        "every EdgeDevice Online with a lastSeen the new process wrote (seconds)",
        "wr/s: API writes/s while idle (kube-apiserver apiserver_request_total, POST/PUT/"
        "PATCH/DELETE, all clients); opCPU%: operator, % of one core; RSS/peak: operator "
        "VmRSS idle / highest seen (MiB); B/dev/s: TCP payload bytes per device per second "
        "both ways on the gateway connections (ss bytes_acked + bytes_received); conns: "
        "connections to the gateway port",
        "replicas: gwRSS: every replica's VmRSS idle (MiB, opCPU% and RSS are then the "
        "controller's); moved: devices on the replica killed; sess/Online: SIGKILL -> each "
        "moved device has a new session / every EdgeDevice Online on another replica (s); "
        "kept: devices whose status shows the last version Ready 5 s later",
        "rollouts: until stableVersion is the new version and devices.ready == N; writes "
        "(ED: edgedevices incl. status, idle liveness writes included; models: the "
        "gateways' writes of what devices hold, edgefleet_operator_gateway_status_writes"
        "_total{cause=\"Models\"}; EM: edgemodels incl. status; all: every resource) "
        f"and reconciles until then + {SETTLE_S:.0f}s",
        "CPU table: % of one core per process group (devices: the simulator processes; kcm: "
        "kube-controller-manager; "
        "bench: this process, its API watch included; others: the rest of the machine); "
        "machine: % of all cores busy",
    ]
    return "\n".join(lines)


def svg_plot(results: list[SizeResult], path: Path) -> None:
    """Cost per device, each series divided by its value at the smallest N: a flat line
    is a cost linear in N, a rising one grows faster than N."""
    series: dict[str, list[tuple[int, float]]] = {}

    def add(name: str, values: Iterable[tuple[int, float | None]]) -> None:
        points = [(n, v / n) for n, v in values if v]
        if points:
            series[name] = [(n, v / points[0][1]) for n, v in points]

    add("time to Online", ((r.devices, r.online_s) for r in results))
    add("storm: time to Online", ((r.devices, r.storm_online_s) for r in results))
    add("API writes per AllAtOnce rollout", (
        (r.devices, float(sum(r.rollouts["allAtOnce"].writes.values())))
        for r in results if "allAtOnce" in r.rollouts))
    add("reconciles per AllAtOnce rollout", (
        (r.devices, float(sum(r.rollouts["allAtOnce"].reconciles.values())))
        for r in results if "allAtOnce" in r.rollouts))
    add("steady operator CPU", ((r.devices, r.steady_cpu) for r in results))
    add("operator RSS (idle)", ((r.devices, r.rss_idle_mib) for r in results))
    add("steady API writes/s", ((r.devices, r.steady_writes_per_s) for r in results))
    width, height, left, right, top, bottom = 760, 420, 60, 250, 30, 50
    sizes = sorted({r.devices for r in results})
    top_value = max([2.0, *(v for points in series.values() for _, v in points)])
    low, high = math.log(sizes[0]), math.log(sizes[-1]) if len(sizes) > 1 else 1 + math.log(
        sizes[0])

    def x(n: int) -> float:
        return left + (width - left - right) * (math.log(n) - low) / (high - low)

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / top_value)

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="18">Cost per device relative to N={sizes[0]} '
             '(flat: linear in N)</text>']
    for tick in range(int(top_value) + 1):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f'{tick}</text>')
    for n in sizes:
        parts.append(f'<text x="{x(n):.1f}" y="{height - bottom + 18}" '
                     f'text-anchor="middle">{n}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 10}" '
                 'text-anchor="middle">devices (N, log scale)</text>')
    for index, (name, points) in enumerate(series.items()):
        colour = colours[index % len(colours)]
        coordinates = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in points)
        parts.append(f'<polyline points="{coordinates}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')
        parts += [f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>'
                  for n, v in points]
        legend_y = top + 18 * index
        parts.append(f'<rect x="{width - right + 12}" y="{legend_y}" width="12" height="3" '
                     f'fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 30}" y="{legend_y + 5}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def write_outputs(results: list[SizeResult], args: argparse.Namespace, sizes: list[int],
                  described: str) -> None:
    if args.json:
        args.json.write_text(json.dumps({
            "commit": described, "cores": os.cpu_count(), "args": {
                "devices": sizes, "sim_processes": args.sim_processes,
                "gateway_replicas": args.gateway_replicas,
                "steady_seconds": args.steady_seconds, "operator_flags": args.operator_flags},
            "results": [asdict(r) for r in results]}, indent=1) + "\n")
    if args.svg:
        svg_plot(results, args.svg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="500,1000",
                        help="fleet sizes, comma-separated (default 500,1000)")
    parser.add_argument("--sim-processes", type=int, default=1,
                        help="processes the simulated devices are spread over")
    parser.add_argument("--steady-seconds", type=float, default=300.0)
    parser.add_argument("--gateway-replicas", type=int, default=0,
                        help="run the gateway as this many --role gateway processes beside a "
                             "--role controller (default 0: one --role all operator); 2 or "
                             "more adds the failover phase")
    parser.add_argument("--operator-flag", dest="operator_flags", action="append",
                        default=[], metavar="FLAG",
                        help="extra operator flag(s), repeatable; write "
                             "--operator-flag=--heartbeat-write-seconds=60")
    parser.add_argument("--wait-seconds", type=float, default=0.0,
                        help="the longest wait for any one phase (default 120 + 0.2 N)")
    parser.add_argument("--stall-seconds", type=float, default=90.0,
                        help="a rollout whose EdgeModel status stays the same this long is "
                             "recorded as not finished")
    parser.add_argument("--rollouts", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the three rollouts (--no-rollouts: connect, steady "
                             "and storm only)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--svg", type=Path, help="write the cost plot here")
    parser.add_argument("--logs", type=Path,
                        help="keep the operator's, the devices' and the cluster's logs here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.devices.split(",") if s.strip()]
    args.operator_flags = [part for flag in args.operator_flags for part in shlex.split(flag)]
    if not sizes or min(sizes) < 1 or args.sim_processes < 1:
        parser.error("--devices and --sim-processes must be at least 1")
    if args.gateway_replicas < 0:
        parser.error("--gateway-replicas must be 0 or more")

    # Each device holds a connection in a simulator and one in the operator.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(sizes) * 2 + 4096
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
        if hard < wanted:
            log(f"open files limited to {hard}; {max(sizes)} devices may need {wanted}")
    # Device stores fsync every write: tmpfs keeps that the devices' cost, not the disk's.
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    described = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "--oneline", "-1"],
                               capture_output=True, text=True).stdout.strip() or "?"

    # SIGTERM (`timeout`, a CI runner) unwinds like Ctrl-C: the cluster, the operator and
    # the devices are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-fleet-") as tmp, \
            tempfile.TemporaryDirectory(prefix="edgefleet-fleet-", dir=base) as data:
        cluster = localcluster.up(Path(tmp) / "cluster")
        try:
            for attempt in range(3):  # `kubectl wait` can miss a CRD created an instant ago
                try:
                    localcluster.install_crds(cluster)
                    break
                except subprocess.CalledProcessError:
                    if attempt == 2:
                        raise
                    time.sleep(2)
            configuration = client.Configuration()
            config.load_kube_config(config_file=str(cluster.kubeconfig),
                                    client_configuration=configuration)
            configuration.connection_pool_maxsize = 32
            api = client.ApiClient(configuration)
            for n in sizes:
                root = Path(data) / f"n{n}"
                root.mkdir()
                results.append(measure_size(cluster, api, n, args, root))
                # After each size: a run cut short keeps what it measured.
                print("\n" + report(results, args, described), flush=True)
                write_outputs(results, args, sizes, described)
                shutil.rmtree(root / "devices", ignore_errors=True)
                if args.logs:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    for log_file in root.glob("*.log"):
                        shutil.copy(log_file, args.logs / f"n{n}-{log_file.name}")
        finally:
            if args.logs:
                shutil.copytree(cluster.state_dir / "logs", args.logs / "cluster",
                                dirs_exist_ok=True)
            localcluster.down(cluster.state_dir)


if __name__ == "__main__":
    main()
