"""The edge runtime's trust boundaries, each attack replayed against real `edgefleet-edge`
processes on loopback: digests from a hostile gateway that would name paths outside the
store, models that make ONNX Runtime read files of the device, a state file the runtime
did not write, and inference endpoints that answered anyone, any size, any number.

The gateway here is a stand-in on loopback: the attacker is the party that speaks for
the cloud (a compromised gateway or whoever sits on the network), which a real operator
would never play.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import queue
import re
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import testmodels
import tritonclient.grpc as triton_grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

import localcluster
from edgefleet.protocol import signing
from edgefleet.protocol.edgefleet.v1 import feedback_pb2
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as fleet
from edgefleet.protocol.inference import grpc_service_pb2 as pb
from tests.conftest import EdgeProcess, StartEdge, launch_edge, stop_edge
from tests.helpers import eventually, http_get, serve_fleet_gateway

pytestmark = pytest.mark.integration
HOSTNAME = Path("/etc/hostname")
INFER = "/inference.GRPCInferenceService/ModelInfer"


# ---------------------------------------------------------------- helpers


def external_data_model(location: str, length: int) -> bytes:
    """y = w, where w's bytes are external data at `location`: served, the model hands
    back whatever file that names."""
    weights = TensorProto(name="w", data_type=TensorProto.UINT8, dims=[length])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "leak", [],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [length])],
        initializer=[weights])
    model = helper.make_model(graph, opset_imports=testmodels.OPSET)
    model.ir_version = 8
    return model.SerializeToString()


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def post(url: str, body: bytes, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any], Any]:
    """(status, JSON body, headers) of a POST."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def scaled_body(x: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "data": x}]}).encode()


def grpc_request(model: str = "scaled") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version="1")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), dtype=np.float32).tobytes())
    return request


def grpc_infer(channel: grpc.Channel, request: pb.ModelInferRequest,
               metadata: tuple[tuple[str, str], ...] = ()) -> pb.ModelInferResponse:
    call = channel.unary_unary(INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                               response_deserializer=pb.ModelInferResponse.FromString)
    return call(request, metadata=metadata, timeout=30)


def grpc_code(channel: grpc.Channel, request: pb.ModelInferRequest,
              metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_infer(channel, request, metadata)
    return caught.value.code(), caught.value.details()


def rejected(edge: EdgeProcess, reason: str) -> float:
    match = re.search(rf'^edgefleet_edge_requests_rejected_total{{reason="{reason}"}} (\S+)$',
                      edge.metrics(), re.MULTILINE)
    assert match, f"no rejected series for reason {reason}"
    return float(match.group(1))


def peak_rss_bytes(edge: EdgeProcess) -> int:
    status = Path(f"/proc/{edge.process.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match
    return int(match.group(1)) * 1024


def scaled_repository(root: Path) -> Path:
    testmodels.write_model(root, "scaled", "1", testmodels.scaled(2.0))
    return root


# ---------------------------------------------------------------- a hostile gateway


class HostileGateway:
    """Speaks the fleet protocol to one device on loopback and assigns whatever a test
    tells it to; records what the device fetches and reports."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None,
                 signing_key: Ed25519PrivateKey | None = None) -> None:
        """`credentials`: TLS (plaintext without); `signing_key`: assignments are signed
        for device fleet/cam-1 with it, as the operator signs them."""
        self.artifacts: dict[str, bytes] = {}
        self.fetched: list[str] = []
        self.reported: dict[tuple[str, str], fleet.ModelState] = {}
        self._signing_key = signing_key
        self._lock = threading.Lock()
        self._latest: fleet.DesiredState | None = None
        self._pushed: queue.Queue[fleet.DesiredState] = queue.Queue()
        self.server, self.port = serve_fleet_gateway(self.connect, self.fetch, credentials)

    def assign(self, revision: str, *models: tuple[str, str, str],
               unsigned: frozenset[str] = frozenset(),
               tampered: dict[str, str] | None = None) -> None:
        """A desired state of (name, version, digest) assignments, signed when the
        gateway has a key, except the models named `unsigned`; `tampered` changes a
        model's digest after it was signed."""
        desired = fleet.DesiredState(revision=revision)
        for name, version, digest in models:
            model = desired.models.add(name=name, version=version, digest=digest,
                                       size_bytes=len(self.artifacts.get(digest, b"")))
            if self._signing_key and name not in unsigned:
                model.signature = signing.sign(self._signing_key, "fleet", "cam-1", revision,
                                               model)
            if name in (tampered or {}):
                model.digest = (tampered or {})[name]
        self._latest = desired
        self._pushed.put(desired)

    def state(self, name: str, version: str) -> tuple[str, str] | None:
        with self._lock:
            model = self.reported.get((name, version))
        return (fleet.ModelState.State.Name(model.state), model.message) if model else None

    def connect(self, requests: Iterator[fleet.DeviceMessage],
                context: grpc.ServicerContext) -> Iterator[fleet.CloudMessage]:
        threading.Thread(target=self._read, args=(requests,), daemon=True).start()
        if self._latest is not None:
            yield fleet.CloudMessage(desired=self._latest)
        while context.is_active():
            try:
                desired = self._pushed.get(timeout=0.1)
            except queue.Empty:
                continue
            yield fleet.CloudMessage(desired=desired)

    def _read(self, requests: Iterator[fleet.DeviceMessage]) -> None:
        try:
            for message in requests:
                kind = message.WhichOneof("kind")
                if kind in ("hello", "report", "heartbeat"):
                    with self._lock:
                        for model in getattr(message, kind).models:
                            self.reported[(model.name, model.version)] = model
        except grpc.RpcError:
            return  # the session ended

    def fetch(self, request: fleet.ArtifactRequest,
              context: grpc.ServicerContext) -> Iterator[fleet.ArtifactChunk]:
        self.fetched.append(request.digest)
        data = self.artifacts.get(request.digest)
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such artifact")
        yield fleet.ArtifactChunk(offset=request.offset, data=data[request.offset:],
                                  total_size=len(data))


@pytest.fixture
def gateway() -> Iterator[HostileGateway]:
    started = HostileGateway()
    yield started
    started.server.stop(0)


def run_edge(root: Path, cloud_port: int, cwd: Path | None = None) -> EdgeProcess:
    (root / "token").write_text("device-token")
    return launch_edge(root / "edge.log", "run", "--cloud", f"127.0.0.1:{cloud_port}",
                       "--namespace", "fleet", "--device", "cam-1",
                       "--token-file", str(root / "token"), "--data-dir", str(root / "data"),
                       "--heartbeat-seconds", "0.5", "--backoff-base-seconds", "0.1",
                       "--backoff-max-seconds", "1",
                       "--insecure-plaintext",  # the stand-in gateway speaks plaintext
                       cwd=cwd)


def answer(edge: EdgeProcess, model: str) -> float:
    item = triton_grpc.InferInput("x", [1, 4], "FP32")
    item.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    result = triton_grpc.InferenceServerClient(edge.grpc_url).infer(model, [item])
    return float(result.as_numpy("y")[0, 0])


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


# ---------------------------------------------------------------- item 2: digests


BAD_DIGESTS = {
    "parent": "sha256:../../x",
    "deep": "sha256:../../../../../../../../tmp/edgefleet-owned",
    "suffix": "sha256:" + "a" * 64 + "/../../x",
    "uppercase": "sha256:" + "A" * 64,
    "short": "sha256:" + "a" * 63,
    "other-algorithm": "md5:" + "a" * 32,
}


def test_digests_that_would_name_paths_outside_the_store_are_refused_and_serving_goes_on(
    gateway: HostileGateway, tmp_path: Path
) -> None:
    good = testmodels.scaled(3.0)
    gateway.artifacts[digest_of(good)] = good
    gateway.assign("r1", ("digits", "1", digest_of(good)))
    edge = run_edge(tmp_path, gateway.port)
    try:
        eventually(lambda: gateway.state("digits", "1") == ("READY", ""), timeout=60,
                   what="digits 1 Ready")
        gateway.assign("r2", ("digits", "1", digest_of(good)),
                       ("digits", "2", BAD_DIGESTS["parent"]),
                       *((f"bad-{name}", "1", digest) for name, digest in BAD_DIGESTS.items()))
        for name, digest in [("digits", BAD_DIGESTS["parent"]),
                             *((f"bad-{n}", d) for n, d in BAD_DIGESTS.items())]:
            version = "2" if name == "digits" else "1"
            state, message = eventually(lambda n=name, v=version: gateway.state(n, v),
                                        timeout=60, what=f"{name} reported")
            assert state == "FAILED", (name, state, message)
            assert "refused the assignment from the gateway" in message
            assert f"digest {digest!r} is not 'sha256:' and 64 lowercase hex digits" in message
        # Nothing fetched, nothing written anywhere but the store; the old version serves.
        assert gateway.fetched == [digest_of(good)]
        assert files_under(tmp_path) == {"token", "edge.log", "data"} | {
            f"data/{name}" for name in files_under(tmp_path / "data")}
        assert files_under(tmp_path / "data") == {
            "blobs", "blobs/sha256", f"blobs/sha256/{digest_of(good)[7:]}", "partial",
            "state.json", "starts"}
        assert not Path("/tmp/edgefleet-owned.partial").exists()
        assert answer(edge, "digits") == 3.0
        saved = json.loads((tmp_path / "data" / "state.json").read_text())
        assert [m["digest"] for m in saved["desired"]] == [digest_of(good)]
        assert "refused the assignment" in edge.log()
    finally:
        stop_edge(edge)


# ---------------------------------------------------------------- item 3: unsafe models


def test_the_attack_model_really_reads_the_file_when_loaded_from_bytes() -> None:
    """The test model is the attack: plain ONNX Runtime, given it as bytes in `/`,
    returns /etc/hostname."""
    model = external_data_model("etc/hostname", HOSTNAME.stat().st_size)
    leaked = subprocess.run(
        [sys.executable, "-c", "import sys, onnxruntime as o; "
         "s = o.InferenceSession(sys.stdin.buffer.read()); "
         "sys.stdout.buffer.write(bytes(s.run(None, {})[0]))"],
        input=model, capture_output=True, cwd="/", check=True, timeout=60).stdout
    assert leaked == HOSTNAME.read_bytes()


UNSAFE_LOCATIONS = {
    "working-directory": "etc/hostname",
    "traversal": "../../../../../../../../../../etc/hostname",
    "absolute": str(HOSTNAME),
    "beside-the-model": "weights.bin",
}


def test_models_that_name_other_files_are_refused_before_any_session(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    repository = scaled_repository(tmp_path / "models")
    secret = HOSTNAME.read_bytes()
    for name, location in UNSAFE_LOCATIONS.items():
        path = testmodels.write_model(repository, f"leak-{name}", "1",
                                      external_data_model(location, len(secret)))
        (path.parent / "weights.bin").write_bytes(secret)
    # In `/`, as in the images: a path resolved against the working directory would hit.
    edge = start_edge(repository, cwd=Path("/"))
    log = edge.log()
    for name, location in UNSAFE_LOCATIONS.items():
        assert (f"UnsafeModel: model 'leak-{name}' version '1' refers to other files"
                in log), log
        assert f"external data at {location!r}" in log
        status, body, _ = post(f"http://{edge.http_url}/v2/models/leak-{name}/infer",
                               json.dumps({"inputs": []}).encode())
        assert status == 404 and "is not loaded" in body["error"]
        assert secret.decode().strip() not in json.dumps(body)
    assert http_get(f"http://{edge.http_url}/v2/models/scaled/ready")[0] == 200
    assert post(f"http://{edge.http_url}/v2/models/scaled/infer",
                scaled_body([1, 2, 3, 4]))[1]["outputs"][0]["data"] == [2, 4, 6, 8]


def test_an_unsafe_model_from_the_gateway_is_reported_failed_and_never_served(
    gateway: HostileGateway, tmp_path: Path
) -> None:
    good = testmodels.scaled(3.0)
    unsafe = external_data_model("etc/hostname", HOSTNAME.stat().st_size)
    gateway.artifacts.update({digest_of(good): good, digest_of(unsafe): unsafe})
    gateway.assign("r1", ("digits", "1", digest_of(good)), ("leak", "1", digest_of(unsafe)))
    edge = run_edge(tmp_path, gateway.port, cwd=Path("/"))
    try:
        eventually(lambda: gateway.state("digits", "1") == ("READY", ""), timeout=60,
                   what="digits 1 Ready")
        _, message = eventually(
            lambda: (s := gateway.state("leak", "1")) and s[0] == "FAILED" and s,
            timeout=60, what="leak 1 Failed")
        assert message.startswith("UnsafeModel: model 'leak' version '1'")
        assert "external data at 'etc/hostname'" in message
        stock = triton_grpc.InferenceServerClient(edge.grpc_url)
        with pytest.raises(InferenceServerException, match="'leak' is not loaded"):
            stock.infer("leak", [])
        assert answer(edge, "digits") == 3.0
        assert 'model="leak"' not in edge.metrics()
    finally:
        stop_edge(edge)


# ---------------------------------------------------------------- item 12: state.json


FOREIGN_STATES = {
    "extra-key": json.dumps({"version": 1, "revision": "", "desired": [],
                             "lastKnownGood": [], "owner": "another program"}),
    "list": json.dumps([{"revision": "r1"}]),
    "bad-json": '{"version": 1, "revision": ',
    "wrong-types": json.dumps({"version": 1, "revision": 7, "desired": {"digits": "1"},
                               "lastKnownGood": [{"name": "digits", "version": 1,
                                                  "digest": "sha256:../../x"}]}),
}


@pytest.mark.parametrize("content", FOREIGN_STATES.values(), ids=FOREIGN_STATES.keys())
def test_a_foreign_state_file_is_set_aside_and_the_runtime_starts_afresh(
    tmp_path: Path, content: str
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.json").write_text(content)
    # No gateway listens: the runtime must still come up, serving (nothing yet).
    edge = run_edge(tmp_path, localcluster.free_port())
    try:
        (aside,) = (tmp_path / "data").glob("state.json.invalid-*")
        assert aside.read_text() == content
        assert f"moved it to {aside.name} and starting afresh" in edge.log()
        assert edge.process.poll() is None
    finally:
        stop_edge(edge)


# ---------------------------------------------------------------- item 9: endpoints


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets the process listens on; an IPv4-mapped IPv6
    address (how gRPC may bind an IPv4 one) is shown as IPv4."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed while listed: not a listening socket
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            (address, port), state, inode = fields[1].split(":"), fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            # The kernel prints each 32-bit word of the address in host (little) order.
            packed = b"".join(bytes.fromhex(address[i:i + 8])[::-1]
                              for i in range(0, len(address), 8))
            ip = ipaddress.ip_address(packed)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found.add((str(ip), int(port, 16)))
    return found


def test_the_servers_listen_on_loopback_unless_told_otherwise(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    edge = start_edge(scaled_repository(tmp_path), listen_host=None)
    assert listening_addresses(edge.process.pid) == {
        ("127.0.0.1", port) for port in (edge.grpc_port, edge.http_port, edge.metrics_port)}
    assert "host=127.0.0.1" in edge.log()


def test_a_bearer_token_guards_every_inference_call_but_health_and_metrics(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    edge = start_edge(scaled_repository(tmp_path / "models"),
                      "--auth-token-file", str(tmp_path / "token"))
    url = f"http://{edge.http_url}/v2/models/scaled/infer"
    good = {"Authorization": "Bearer s3cret-token"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        status, body, answered = post(url, scaled_body([1, 1, 1, 1]), headers)
        assert status == 401 and "bearer token is required" in body["error"]
        assert answered["WWW-Authenticate"] == "Bearer"
    for path in ("/v2", "/v2/models/scaled", "/v2/models/scaled/ready"):
        assert http_get(f"http://{edge.http_url}{path}")[0] == 401
    feedback = post(f"http://{edge.http_url}/v2/models/scaled/feedback",
                    json.dumps({"id": "r1", "label": 1}).encode())
    assert feedback[0] == 401
    assert post(url, scaled_body([1, 1, 1, 1]), good)[1]["outputs"][0]["data"] == [2] * 4
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert http_get(f"http://{edge.http_url}{path}")[0] == 200
        assert http_get(f"http://127.0.0.1:{edge.metrics_port}{path}")[0] == 200
    assert edge.metrics()  # /metrics is open

    with grpc.insecure_channel(edge.grpc_url) as channel:
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            code, details = grpc_code(channel, grpc_request(), metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(
                "/edgefleet.v1.InferenceFeedback/Feedback",
                request_serializer=feedback_pb2.FeedbackRequest.SerializeToString,
                response_deserializer=feedback_pb2.FeedbackResponse.FromString)(
                feedback_pb2.FeedbackRequest(model_name="scaled", id="r1", labels=["1"]))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answered = grpc_infer(channel, grpc_request(), (("authorization", "Bearer s3cret-token"),))
        assert np.frombuffer(answered.raw_output_contents[0], np.float32).tolist() == [2] * 4
    stock = triton_grpc.InferenceServerClient(edge.grpc_url)
    assert stock.is_server_live() and stock.is_server_ready()  # open, for probes
    with pytest.raises(InferenceServerException, match="bearer token"):
        stock.get_model_metadata("scaled")
    assert stock.get_model_metadata("scaled", headers={"authorization": "Bearer s3cret-token"})
    # REST: 3 infer, 3 metadata, 1 feedback; gRPC: 2 infer, 1 feedback; 1 stock client.
    assert rejected(edge, "unauthenticated") == 3 + 3 + 1 + 2 + 1 + 1


def test_client_certificates_are_required_on_both_inference_ports(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    localcluster.make_pki(pki)  # a CA, a serving certificate for 127.0.0.1, a client's
    edge = start_edge(scaled_repository(tmp_path / "models"),
                      "--tls-cert-file", str(pki / "apiserver.crt"),
                      "--tls-key-file", str(pki / "apiserver.key"),
                      "--tls-client-ca-file", str(pki / "ca.crt"))
    url = f"https://{edge.http_url}/v2/models/scaled/infer"
    with_certificate = ssl.create_default_context(cafile=pki / "ca.crt")
    with_certificate.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    assert post(url, scaled_body([1, 1, 1, 1]), context=with_certificate)[0] == 200
    without = ssl.create_default_context(cafile=pki / "ca.crt")
    # Refused in the handshake (TLS 1.3 tells the client on its first read).
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        post(url, scaled_body([1, 1, 1, 1]), context=without)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext either
        post(f"http://{edge.http_url}/v2/models/scaled/infer", scaled_body([1, 1, 1, 1]))

    ca = (pki / "ca.crt").read_bytes()
    client = grpc.ssl_channel_credentials(ca, (pki / "admin.key").read_bytes(),
                                          (pki / "admin.crt").read_bytes())
    with grpc.secure_channel(edge.grpc_url, client) as channel:
        assert grpc_infer(channel, grpc_request()).model_name == "scaled"
    with grpc.secure_channel(edge.grpc_url, grpc.ssl_channel_credentials(ca)) as channel:
        assert grpc_code(channel, grpc_request())[0] == grpc.StatusCode.UNAVAILABLE
    # Probes and Prometheus keep plain HTTP on the metrics port.
    assert http_get(f"http://127.0.0.1:{edge.metrics_port}/v2/health/ready")[0] == 200


def test_a_body_above_the_limit_is_refused_before_it_is_read(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    edge = start_edge(scaled_repository(tmp_path))  # the default limit, 8 MiB
    before = peak_rss_bytes(edge)
    # The 12 MiB JSON body: refused on its Content-Length, never decoded.
    numbers = b"[" + b"1.5, " * (12 * 2**20 // 5) + b"1.5]"
    body = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ' \
        + numbers + b"}]}"
    status, answer_body, _ = post(f"http://{edge.http_url}/v2/models/scaled/infer", body)
    assert status == 413
    assert f"request size: {len(body)} bytes is above the limit of {8 * 2**20} bytes" \
        in answer_body["error"]
    # Announced as 1 GiB and never sent: the answer comes without waiting for the body.
    connection = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=30)
    connection.putrequest("POST", "/v2/models/scaled/infer")
    connection.putheader("Content-Length", str(2**30))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    assert peak_rss_bytes(edge) - before < 4 * 2**20  # nothing near the body's size held
    # A chunked body has no length to check: it is cut off at the limit.
    chunks = (b"1.5, " * (2**20 // 5) for _ in range(12))
    connection = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=30)
    try:
        connection.request("POST", "/v2/models/scaled/infer", body=chunks,
                           encode_chunked=True)
        assert connection.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused while the client was still sending: counted all the same
    finally:
        connection.close()
    assert rejected(edge, "too_large") == 3
    assert post(f"http://{edge.http_url}/v2/models/scaled/infer",
                scaled_body([1, 1, 1, 1]))[0] == 200


def test_large_json_bodies_decode_one_at_a_time(start_edge: StartEdge, tmp_path: Path) -> None:
    """JSON numbers become Python objects before they become a tensor: one 8 MiB body
    costs ~15 times its size while it decodes. Eight at once cost the eight bodies
    (received, and copied once by the HTTP server) and still one decode."""
    edge = start_edge(scaled_repository(tmp_path))
    numbers = "1.5, " * (8 * 2**20 // 5 - 40)
    body = ('{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ['
            + numbers + '1.5]}]}').encode()
    assert len(body) <= 8 * 2**20
    url = f"http://{edge.http_url}/v2/models/scaled/infer"
    one = post(url, body)
    assert one[0] == 400 and "values given, shape [1, 4] needs 4" in one[1]["error"]
    single = peak_rss_bytes(edge)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(url, body)[0], range(8)))
    assert answers == [400] * 8
    assert peak_rss_bytes(edge) - single < 8 * 2 * len(body) + 32 * 2**20


def test_requests_beyond_the_concurrency_limit_are_refused_and_counted(
    start_edge: StartEdge, tmp_path: Path
) -> None:
    edge = start_edge(scaled_repository(tmp_path), "--max-concurrent-requests", "1")
    url = f"http://{edge.http_url}/v2/models/scaled/infer"
    body = scaled_body([1, 2, 3, 4])
    # A REST request holds the one slot: its body is announced and half sent.
    held = socket.create_connection(("127.0.0.1", edge.http_port), timeout=30)
    head = (f"POST /v2/models/scaled/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    held.sendall(head + body[:10])
    with grpc.insecure_channel(edge.grpc_url) as channel:
        _, details = eventually(
            lambda: (answered := _try_grpc(channel))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
            and answered, what="the slot taken by the held request")
        assert "all 1 inference request slots are busy" in details
        status, answer_body, _ = post(url, body)
        assert status == 429 and "retry later" in answer_body["error"]
        # Metadata and health are no inference: they still answer.
        assert http_get(f"http://{edge.http_url}/v2/models/scaled")[0] == 200
        # The held request ends normally; its slot is free again.
        held.sendall(body[10:])
        response = held.makefile("rb").read()
        held.close()
        head, _, answered = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(answered)["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        assert grpc_infer(channel, grpc_request()).model_name == "scaled"

        # A gRPC call takes its slot before its request is read: a call that has sent
        # nothing yet holds it.
        release = threading.Event()

        def slow_requests() -> Iterator[bytes]:
            release.wait(30)
            yield grpc_request().SerializeToString()

        stream = channel.stream_unary(INFER, request_serializer=None,
                                      response_deserializer=pb.ModelInferResponse.FromString)
        pending = stream.future(slow_requests(), timeout=30)
        eventually(lambda: post(url, body)[0] == 429, what="the slot taken by the stream")
        release.set()
        assert pending.result().model_name == "scaled"
    assert rejected(edge, "overloaded") >= 3
    assert post(url, body)[0] == 200


def _try_grpc(channel: grpc.Channel) -> tuple[grpc.StatusCode, str]:
    try:
        grpc_infer(channel, grpc_request())
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_settings_refuse_half_a_tls_configuration_and_an_empty_token(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "cert").write_text("x")
    for flags, expected in (
        (["--auth-token-file", str(tmp_path / "empty")], "holds no token"),
        (["--tls-cert-file", str(tmp_path / "cert")], "go together"),
        (["--tls-client-ca-file", str(tmp_path / "cert")], "needs --tls-cert-file"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "edgefleet.edge_runtime", "serve", "--model-repository",
             str(tmp_path), *flags], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
