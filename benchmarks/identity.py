"""Device identity benchmark: what mutual TLS costs at the fleet gateway on session
set-up and on artifact throughput, next to plaintext, in the same run.

    .venv/bin/python benchmarks/identity.py [--devices 20] [--rounds 5] [--artifact-mib 64]

One local control plane and two operators, both alive throughout: one serves the
namespace identity-tls with mutual TLS (the default), the other identity-plain with
--insecure-plaintext. Each namespace holds --devices EdgeDevices with bootstrap token
Secrets and one EdgeModel, a generated ONNX artifact, selecting them all. The benchmark
speaks the protocol by hand, as a device does:

- enrolment (mutual TLS only): Enroll with the device's token and a CSR over a new TLS
  channel, once per device; the key and certificate are kept for what follows;
- session set-up: a new channel (its own TCP connection, and TLS handshake), Connect
  with a hello, until the desired state arrives (with TLS a `certificate` message with
  the trust bundle comes first); every round connects each device once in each mode,
  the two modes alternating, so that the machine's noise hits both alike;
- artifact throughput: FetchArtifact of the whole artifact on a connected channel,
  twice a mode in each round, in the order TLS, plaintext, plaintext, TLS (or the
  reverse), so that a drift hits both alike.

The operators' CPU seconds (utime + stime of /proc/PID/stat) over each phase are
divided by its sessions or gigabytes: each operator serves only its own mode, so its
CPU is that mode's cost (its idle background, kopf's watches, included). The client and
both operators share the machine's cores. Prints min/median/p90 (max for throughput)
and the TLS/plaintext ratios.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client, config

from edgefleet.operator.gateway.policy import GatewayLimits
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from edgefleet.protocol.identity import GATEWAY_SERVER_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))
import testmodels  # noqa: E402

import localcluster  # noqa: E402

GROUP, VERSION = "edgefleet.io", "v1alpha1"
SERVICE = "/edgefleet.v1.FleetGateway"
CA_SECRET = "edgefleet-gateway-ca"
MODEL = "bench-model"
# A device's hello is a status write, and the gateway allows each device about one a
# second past a small burst: rounds that start at least this far apart are never
# slowed by it, so the figures are the gateway's and not its rate limit's.
ROUND_MIN_S = 1.0 / GatewayLimits().status_writes_per_second


@dataclass
class Device:
    name: str
    token: str
    key_pem: bytes = b""
    certificate_pem: bytes = b""


@dataclass
class Gateway:
    """One operator serving one namespace in one mode, and how devices reach it."""

    label: str
    namespace: str
    tls: bool
    process: subprocess.Popen[bytes]
    grpc_port: int
    enrolment_port: int
    metrics_port: int
    log_path: Path
    devices: list[Device]
    trust_bundle: bytes = b""

    def channel(self, device: Device, port: int | None = None) -> grpc.Channel:
        """A new channel with a subchannel pool of its own: its own TCP connection
        (and TLS handshake), never one an earlier channel to the address opened."""
        target = f"127.0.0.1:{port or self.grpc_port}"
        options: list[tuple[str, int | str]] = [("grpc.use_local_subchannel_pool", 1)]
        if not self.tls:
            return grpc.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            self.trust_bundle, device.key_pem or None, device.certificate_pem or None)
        return grpc.secure_channel(
            target, credentials,
            options=[*options, ("grpc.ssl_target_name_override", GATEWAY_SERVER_NAME)])

    def metadata(self, device: Device) -> tuple[tuple[str, str], ...]:
        """With TLS the certificate names the device; in plaintext every call does."""
        if self.tls:
            return ()
        return (("authorization", f"Bearer {device.token}"),
                ("edgefleet-namespace", self.namespace), ("edgefleet-device", device.name))

    def cpu_seconds(self) -> float:
        """utime + stime of the operator process, all its threads."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc_pid_stat(5)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def wait(check: Callable[[], object], what: str, gateways: list[Gateway],
         timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for gateway in gateways:
            if gateway.process.poll() is not None:
                raise SystemExit(f"the {gateway.label} operator exited; its log:\n"
                                 f"{gateway.log_tail()}")
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def ready(gateway: Gateway) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/readyz",
                                    timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_operator(cluster: localcluster.Cluster, root: Path, namespace: str, label: str,
                   tls: bool, devices: list[Device]) -> Gateway:
    """An operator for `namespace` alone, its CA Secret in that namespace too."""
    grpc_port, enrolment_port, metrics_port = (localcluster.free_port() for _ in range(3))
    log_path = root / f"operator-{namespace}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.operator", "--listen-host", "127.0.0.1",
             "--grpc-port", str(grpc_port), "--enrolment-port", str(enrolment_port),
             "--metrics-port", str(metrics_port), "--no-leader-election",
             "--namespaces", namespace, "--lease-namespace", namespace,
             "--artifact-cache-dir", str(root / f"cache-{namespace}"),
             "--artifact-file-roots", str(root / "artifacts"),
             *([] if tls else ["--insecure-plaintext"])],
            env=cluster.env(), stdout=log, stderr=subprocess.STDOUT)
    return Gateway(label, namespace, tls, process, grpc_port, enrolment_port, metrics_port,
                   log_path, devices)


def enrolment_s(gateway: Gateway, device: Device) -> float:
    """Enrolls the device (its key made beforehand, as a device does, untimed); the
    seconds from a new TLS channel to the issued certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    started = time.perf_counter()
    with gateway.channel(device, gateway.enrolment_port) as channel:
        call = channel.unary_unary(f"{SERVICE}/Enroll",
                                   request_serializer=pb.EnrollRequest.SerializeToString,
                                   response_deserializer=pb.EnrollResponse.FromString)
        response = call(pb.EnrollRequest(namespace=gateway.namespace, device=device.name,
                                         csr=csr),
                        metadata=(("authorization", f"Bearer {device.token}"),), timeout=30)
    elapsed = time.perf_counter() - started
    device.key_pem = key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    device.certificate_pem = response.certificate.certificate
    return elapsed


def session(gateway: Gateway, device: Device) -> tuple[float, pb.DesiredState]:
    """A session on a new channel: seconds until the desired state arrives, and it.
    The request stream stays open, as a device's does, until the session is cancelled."""
    done = threading.Event()

    def requests() -> Iterator[pb.DeviceMessage]:
        yield pb.DeviceMessage(hello=pb.Hello())
        done.wait()

    started = time.perf_counter()
    try:
        with gateway.channel(device) as channel:
            connect = channel.stream_stream(
                f"{SERVICE}/Connect", request_serializer=pb.DeviceMessage.SerializeToString,
                response_deserializer=pb.CloudMessage.FromString)
            responses = connect(requests(), metadata=gateway.metadata(device), timeout=30)
            for message in responses:
                if message.WhichOneof("kind") == "desired":
                    elapsed = time.perf_counter() - started
                    responses.cancel()
                    return elapsed, message.desired
    finally:
        done.set()
    raise SystemExit(f"{gateway.label}: the session of {device.name} ended before its "
                     "desired state came")


def fetch(gateway: Gateway, device: Device, digest: str, size: int,
          verify: bool = False) -> float:
    """FetchArtifact of the whole artifact on a connected channel (the handshake done
    before the clock starts); its seconds. `verify` also hashes what came and checks
    it: devices do, but that is not the transport's cost, so timed fetches do not."""
    with gateway.channel(device) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        call = channel.unary_stream(f"{SERVICE}/FetchArtifact",
                                    request_serializer=pb.ArtifactRequest.SerializeToString,
                                    response_deserializer=pb.ArtifactChunk.FromString)
        sha = hashlib.sha256()
        received = 0
        started = time.perf_counter()
        for chunk in call(pb.ArtifactRequest(digest=digest), metadata=gateway.metadata(device),
                          timeout=300):
            received += len(chunk.data)
            if verify:
                sha.update(chunk.data)
        elapsed = time.perf_counter() - started
    if received != size or (verify and f"sha256:{sha.hexdigest()}" != digest):
        raise SystemExit(f"{gateway.label}: fetched {received} bytes (sha256:"
                         f"{sha.hexdigest() if verify else '?'}), not {size} of {digest}")
    return elapsed


def in_turn(gateways: tuple[Gateway, Gateway], step: int) -> tuple[Gateway, Gateway]:
    """Both gateways, in an order that flips at every step, so that neither mode always
    goes first (after the other's work, or onto a warmer cache)."""
    return gateways if step % 2 == 0 else (gateways[1], gateways[0])


def p90(samples: list[float]) -> float:
    return sorted(samples)[math.ceil(0.9 * len(samples)) - 1]


def create_fleet(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str,
                 count: int, uri: str, sha: str) -> list[Device]:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    devices = []
    for index in range(count):
        device = Device(f"dev-{index}", f"token-{index}-{os.urandom(8).hex()}")
        core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"{device.name}-token"),
            string_data={"token": device.token}))
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "edgedevices", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeDevice",
            "metadata": {"name": device.name, "labels": {"bench": "identity"}},
            "spec": {"bootstrapTokenSecretRef": {"name": f"{device.name}-token"}}})
        devices.append(device)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "edgemodels", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeModel",
        "metadata": {"name": MODEL},
        "spec": {"version": "1", "source": {"uri": uri, "sha256": sha},
                 "selector": {"matchLabels": {"bench": "identity"}}}})
    return devices


def settled(custom: client.CustomObjectsApi, namespace: str) -> bool:
    model = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "edgemodels", MODEL)
    devices = custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                   "edgedevices")["items"]
    return bool(model.get("status", {}).get("artifact")) and all(
        device.get("status", {}).get("phase") for device in devices)


@dataclass
class Costs:
    """One mode's figures. CPU seconds are per session set-up or per GB fetched, of
    its operator and of this process (the devices' side)."""

    enrolment_s: list[float] = field(default_factory=list)
    setup_s: list[float] = field(default_factory=list)
    setup_operator_cpu_s: float = 0.0
    setup_client_cpu_s: float = 0.0
    fetch_mb_s: list[float] = field(default_factory=list)
    fetch_operator_cpu_s: float = 0.0
    fetch_client_cpu_s: float = 0.0


def measure(gateways: tuple[Gateway, Gateway], digest: str, size: int,
            rounds: int) -> dict[str, Costs]:
    costs = {g.label: Costs() for g in gateways}
    tls = gateways[0]
    costs[tls.label].enrolment_s = [enrolment_s(tls, device) for device in tls.devices]

    def lists_the_model(gateway: Gateway, device: Device) -> bool:
        return any(m.digest == digest for m in session(gateway, device)[1].models)

    # Untimed: the operators have planned, every device's desired state lists the
    # model, and each device's first session is behind us.
    for gateway in gateways:
        for device in gateway.devices:
            wait(lambda g=gateway, d=device: lists_the_model(g, d),
                 f"{gateway.label} {device.name}'s desired state to list the model",
                 list(gateways))
    time.sleep(ROUND_MIN_S)

    operator_cpu = {g.label: g.cpu_seconds() for g in gateways}
    for turn in range(rounds):
        started = time.monotonic()
        for index in range(len(tls.devices)):
            for gateway in in_turn(gateways, turn + index):
                client_cpu = time.process_time()
                costs[gateway.label].setup_s.append(session(gateway,
                                                            gateway.devices[index])[0])
                costs[gateway.label].setup_client_cpu_s += time.process_time() - client_cpu
        time.sleep(max(0.0, started + ROUND_MIN_S - time.monotonic()))
    for gateway in gateways:
        mode = costs[gateway.label]
        mode.setup_operator_cpu_s = ((gateway.cpu_seconds() - operator_cpu[gateway.label])
                                     / len(mode.setup_s))
        mode.setup_client_cpu_s /= len(mode.setup_s)

    for gateway in gateways:  # untimed: checks what comes, fills the page cache
        fetch(gateway, gateway.devices[0], digest, size, verify=True)
    operator_cpu = {g.label: g.cpu_seconds() for g in gateways}
    for turn in range(rounds):
        order = in_turn(gateways, turn)
        for gateway in (*order, *reversed(order)):  # ABBA: a drift hits both alike
            client_cpu = time.process_time()
            seconds = fetch(gateway, gateway.devices[0], digest, size)
            costs[gateway.label].fetch_client_cpu_s += time.process_time() - client_cpu
            costs[gateway.label].fetch_mb_s.append(size / 1e6 / seconds)
    for gateway in gateways:
        mode = costs[gateway.label]
        fetched_gb = len(mode.fetch_mb_s) * size / 1e9
        mode.fetch_operator_cpu_s = (gateway.cpu_seconds() - operator_cpu[gateway.label]
                                     ) / fetched_gb
        mode.fetch_client_cpu_s /= fetched_gb
    return costs


def report(costs: dict[str, Costs], args: argparse.Namespace) -> None:
    (tls_label, tls), (plain_label, plain) = costs.items()

    def ms(samples: list[float]) -> str:
        return (f"{min(samples) * 1e3:.1f} / {statistics.median(samples) * 1e3:.1f} / "
                f"{p90(samples) * 1e3:.1f}" if samples else "-")

    def mb(samples: list[float]) -> str:
        return f"{min(samples):.0f} / {statistics.median(samples):.0f} / {max(samples):.0f}"

    rows = [
        ("enrolment ms (min / median / p90)", ms(tls.enrolment_s), ms(plain.enrolment_s),
         ""),
        ("session set-up ms (min / median / p90)", ms(tls.setup_s), ms(plain.setup_s),
         statistics.median(tls.setup_s) / statistics.median(plain.setup_s)),
        ("  operator CPU ms per session set-up", f"{tls.setup_operator_cpu_s * 1e3:.1f}",
         f"{plain.setup_operator_cpu_s * 1e3:.1f}",
         tls.setup_operator_cpu_s / plain.setup_operator_cpu_s),
        ("  client CPU ms per session set-up", f"{tls.setup_client_cpu_s * 1e3:.1f}",
         f"{plain.setup_client_cpu_s * 1e3:.1f}",
         tls.setup_client_cpu_s / plain.setup_client_cpu_s),
        ("artifact fetch MB/s (min / median / max)", mb(tls.fetch_mb_s), mb(plain.fetch_mb_s),
         statistics.median(tls.fetch_mb_s) / statistics.median(plain.fetch_mb_s)),
        ("  operator CPU s per GB fetched", f"{tls.fetch_operator_cpu_s:.2f}",
         f"{plain.fetch_operator_cpu_s:.2f}",
         tls.fetch_operator_cpu_s / plain.fetch_operator_cpu_s),
        ("  client CPU s per GB fetched", f"{tls.fetch_client_cpu_s:.2f}",
         f"{plain.fetch_client_cpu_s:.2f}", tls.fetch_client_cpu_s / plain.fetch_client_cpu_s),
    ]
    print(f"\nDevice identity, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, loopback: {args.devices} devices a mode, {args.rounds} "
          f"rounds ({len(tls.setup_s)} session set-ups and {len(tls.fetch_mb_s)} fetches "
          f"a mode), {args.artifact_mib} MiB artifact")
    print(f"{'':42} {tls_label:>20} {plain_label:>20} {'ratio':>6}")
    for name, tls_value, plain_value, ratio in rows:
        shown = f"{ratio:.2f}" if isinstance(ratio, float) else ratio
        print(f"{name:42} {tls_value:>20} {plain_value:>20} {shown:>6}")
    print(f"ratio: {tls_label} / {plain_label} (of the medians); a session set-up is a new "
          "connection, Connect with a hello (a status write) and the first desired state; "
          "client: this process, the devices' side")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--artifact-mib", type=int, default=64)
    args = parser.parse_args()
    if min(args.devices, args.rounds, args.artifact_mib) < 1:
        parser.error("--devices, --rounds and --artifact-mib must be at least 1")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = testmodels.large(args.artifact_mib)
        sha = hashlib.sha256(model).hexdigest()
        artifact = root / "artifacts" / f"{sha}.onnx"
        artifact.parent.mkdir()
        artifact.write_bytes(model)
        size = len(model)
        del model

        cluster = localcluster.up(root / "cluster")
        started: list[Gateway] = []
        try:
            localcluster.install_crds(cluster)
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
            for namespace, label, tls in (("identity-tls", "mutual TLS", True),
                                          ("identity-plain", "plaintext", False)):
                devices = create_fleet(core, custom, namespace, args.devices,
                                       artifact.as_uri(), sha)
                started.append(start_operator(cluster, root, namespace, label, tls, devices))
            wait(lambda: all(ready(g) for g in started), "the operators to be ready", started)
            # Each device known to its gateway (the operator writes its phase after
            # publishing it there) and each artifact verified.
            wait(lambda: all(settled(custom, g.namespace) for g in started),
                 "the operators to verify the artifact and take in the devices", started)
            tls_gateway = started[0]
            tls_gateway.trust_bundle = base64.b64decode(core.read_namespaced_secret(
                CA_SECRET, tls_gateway.namespace).data["ca.crt"])
            costs = measure((started[0], started[1]), f"sha256:{sha}", size, args.rounds)
        finally:
            for gateway in started:
                gateway.process.terminate()
            for gateway in started:
                try:
                    gateway.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    gateway.process.kill()
                    gateway.process.wait()
            localcluster.down(cluster.state_dir)
    report(costs, args)


if __name__ == "__main__":
    main()
