"""Bad input and faults on the edge-cloud link, with real processes on loopback."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import testmodels

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from tests.conftest import Fleet, Kube, launch_edge, stop_edge
from tests.helpers import eventually, serve_fleet_gateway
from tests.integration.test_edge_cloud_link import (
    answer,
    edge_model,
    one_device_serving,
    publish,
    reported,
)
from tests.integration.test_inference import infer
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration


def connect(fleet: Fleet, device: str, token: str, namespace: str | None = None
            ) -> grpc.RpcError:
    """A hand-made session: hello, then whatever the gateway answers."""
    with grpc.insecure_channel(f"127.0.0.1:{fleet.operator.grpc_port}") as channel:
        call = channel.stream_stream("/edgefleet.v1.FleetGateway/Connect",
                                     request_serializer=pb.DeviceMessage.SerializeToString,
                                     response_deserializer=pb.CloudMessage.FromString)
        metadata = (("authorization", f"Bearer {token}"),
                    ("edgefleet-namespace", namespace or fleet.namespace),
                    ("edgefleet-device", device))
        responses = call(iter([pb.DeviceMessage(hello=pb.Hello())]), metadata=metadata,
                         timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in responses:
                pass
    return caught.value


def test_unknown_device_wrong_token_and_a_second_session_are_refused(
    plaintext_fleet: Fleet,
) -> None:
    fleet = plaintext_fleet  # the hand-made sessions carry bearer tokens
    fleet.add_device("cam-1", site="plant-7")
    token = (fleet.root / "cam-1.token").read_text()
    fleet.start("cam-1")
    wait_status(fleet.kube, "edgedevices", fleet.namespace, "cam-1", {"phase": "Online"})
    # One answer, naming nothing, whether the device exists or not.
    for error in (connect(fleet, "cam-1", "wrong"), connect(fleet, "cam-9", token)):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "unknown device or wrong token"

    error = connect(fleet, "cam-1", token)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    # Nothing else happened: the real session is still the one that is online.
    assert fleet.edges["cam-1"].process.poll() is None


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """Serves tmp_path/www over HTTP on loopback; returns its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: an artifact URL that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/model.onnx"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def artifact_condition(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    status = kube.get("edgemodels", namespace, name).get("status", {})
    for condition in status.get("conditions", []):
        if condition["type"] == "ArtifactReady" and condition["status"] == "False":
            return condition
    return None


def test_artifacts_that_cannot_be_verified_reach_no_device(
    fleet: Fleet, http_server: str, silent_server: str,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.restart_operator("--artifact-max-bytes", str(2**20),
                           "--artifact-http-timeout-seconds", "2",
                           "--artifact-allow-private-networks")  # the servers are on loopback
    fleet.add_device("cam-1", site="plant-7")
    fleet.start("cam-1")
    uri, sha = publish(fleet.root, testmodels.scaled(1.0))
    cases = {
        "mismatch": (uri, "f" * 64, "DigestMismatch", "does not match the digest in the spec"),
        "missing": (f"{http_server}/missing.onnx", sha, "Unreachable", "answered HTTP 404"),
        "hangs": (silent_server, sha, "Unreachable", silent_server),
        "oversized": (uri.replace(".onnx", ".big"), "0" * 64, "TooLarge", "larger than"),
    }
    big = fleet.root / Path(uri.replace(".onnx", ".big").removeprefix("file://")).name
    big.write_bytes(b"\0" * (3 * 2**20))
    for name, (source, digest, _, _) in cases.items():
        kube.create("edgemodels", namespace, edge_model(name, "1", source, digest,
                                                        site="plant-7"))
    for name, (_, _, reason, message) in cases.items():
        condition = eventually(lambda n=name: artifact_condition(kube, namespace, n),
                               timeout=60, what=f"{name}: ArtifactReady=False")
        assert condition["reason"] == reason, condition
        assert message in condition["message"], condition
        events = eventually(lambda n=name, r=reason: [
            e for e in kube.events(namespace, n) if e.reason == f"Artifact{r}"],
            what=f"{name}: an Artifact{reason} Event")
        assert events[0].type == "Warning"
        status = kube.get("edgemodels", namespace, name)["status"]
        assert status["phase"] == "Pending"
    assert reported(kube, namespace, "cam-1") == []


def test_a_model_that_is_not_onnx_fails_at_loading_and_is_rolled_back(fleet: Fleet) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    edge = one_device_serving(fleet, 2.0)
    bad_uri, bad_sha = publish(fleet.root, b"this is not an ONNX model")
    kube.patch("edgemodels", namespace, "digits", {"spec": {
        "version": "2", "source": {"uri": bad_uri, "sha256": bad_sha}}})
    status = wait_status(kube, "edgemodels", namespace, "digits", {"phase": "RolledBack"},
                         timeout=60)
    (progressing,) = [c for c in status["conditions"] if c["type"] == "Progressing"]
    assert "cam-1" in progressing["message"] and "cannot be served" in progressing["message"]
    assert answer(edge, "digits") == 2.0  # version 1 answered throughout, and still does
    eventually(lambda: [(m["version"], m["state"]) for m in reported(kube, namespace, "cam-1")]
               == [("1", "Ready")], what="cam-1 back on version 1")
    event = eventually(lambda: [e for e in kube.events(namespace, "digits")
                                if e.reason == "RolledBack"], what="a RolledBack Event")
    assert "cam-1" in event[0].message and "cannot be served" in event[0].message


def test_an_unwritable_data_dir_fails_the_download_with_its_reason_and_serving_goes_on(
    fleet: Fleet,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    edge = one_device_serving(fleet, 2.0)
    # Root ignores permissions; a file where the downloads directory was cannot be
    # written into by anyone.
    partial = fleet.root / "cam-1-data" / "partial"
    partial.rmdir()
    partial.write_text("")
    other_uri, other_sha = publish(fleet.root, testmodels.scaled(7.0))
    kube.create("edgemodels", namespace, edge_model("other", "1", other_uri, other_sha,
                                                    site="plant-7"))
    failed = eventually(lambda: [m for m in reported(kube, namespace, "cam-1")
                                 if m["name"] == "other" and m["state"] == "Failed"],
                        timeout=60, what="the download to fail")
    assert "cannot write the download" in failed[0]["message"]
    assert answer(edge, "digits") == 2.0


def received_bytes(metrics: str) -> float:
    found = re.search(r"^edgefleet_artifact_received_bytes_total (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_download_cut_by_a_gateway_crash_resumes_from_its_offset(fleet: Fleet) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    model = testmodels.large(300)
    uri, sha = publish(fleet.root, model)
    kube.create("edgemodels", namespace, edge_model("large", "1", uri, sha, site="plant-7"))
    wait_status(kube, "edgemodels", namespace, "large", {"readySummary": "0/0"}, timeout=120)
    fleet.add_device("cam-1", site="plant-7")
    edge = fleet.start("cam-1")
    partial = fleet.root / "cam-1-data" / "partial" / f"{sha}.partial"
    eventually(lambda: partial.exists() and partial.stat().st_size > 2**20, interval=0.005,
               timeout=60, what="the download to start")
    fleet.restart_operator()
    cut_at = partial.stat().st_size
    assert 0 < cut_at < len(model), "the download finished before the cut; no resume tested"
    eventually(lambda: [m for m in reported(kube, namespace, "cam-1")
                        if m["state"] == "Ready"], timeout=120, what="the model Ready")
    total = received_bytes(edge.metrics())
    assert total < 1.5 * len(model), f"{total} bytes received for {len(model)}"


def test_an_edge_killed_mid_download_resumes_from_its_offset_after_restart(
    fleet: Fleet,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    model = testmodels.large(300)
    uri, sha = publish(fleet.root, model)
    kube.create("edgemodels", namespace, edge_model("large", "1", uri, sha, site="plant-7"))
    eventually(lambda: kube.get("edgemodels", namespace, "large").get("status", {}).get(
        "artifact"), timeout=120, what="the operator to verify the artifact")
    fleet.add_device("cam-1", site="plant-7")
    edge = fleet.start("cam-1")
    partial = fleet.root / "cam-1-data" / "partial" / f"{sha}.partial"
    eventually(lambda: partial.exists() and partial.stat().st_size > 2**20, interval=0.005,
               timeout=60, what="the download to start")
    edge.process.kill()
    edge.process.wait()
    cut_at = partial.stat().st_size
    assert 0 < cut_at < len(model), "the download finished before the cut; no resume tested"

    restarted = fleet.start("cam-1")
    eventually(lambda: [m for m in reported(kube, namespace, "cam-1")
                        if m["state"] == "Ready"], timeout=120, what="the model Ready")
    # The new process asked from the offset on disk: it received only the rest.
    assert received_bytes(restarted.metrics()) == len(model) - cut_at


class TruncatingGateway:
    """A stand-in gateway on loopback whose first artifact stream ends halfway."""

    def __init__(self, model: bytes) -> None:
        self.model = model
        self.digest = f"sha256:{hashlib.sha256(model).hexdigest()}"
        self.fetches: list[int] = []  # offsets asked for
        self.states: list[str] = []
        self.server, self.port = serve_fleet_gateway(self.connect, self.fetch)

    def connect(self, requests: Iterator[pb.DeviceMessage], _: Any) -> Iterator[pb.CloudMessage]:
        next(requests)  # hello
        desired = pb.DesiredState(revision="r1")
        desired.models.add(name="digits", version="1", digest=self.digest,
                           size_bytes=len(self.model))
        yield pb.CloudMessage(desired=desired)
        for message in requests:
            kind = message.WhichOneof("kind")
            for model in getattr(message, kind).models:
                self.states.append(pb.ModelState.State.Name(model.state))

    def fetch(self, request: pb.ArtifactRequest, _: Any) -> Iterator[pb.ArtifactChunk]:
        self.fetches.append(request.offset)
        end = len(self.model) // 2 if len(self.fetches) == 1 else len(self.model)
        for start in range(request.offset, end, 4096):
            yield pb.ArtifactChunk(offset=start, data=self.model[start:min(start + 4096, end)],
                                   total_size=len(self.model))


def test_a_truncated_chunk_stream_is_resumed_not_trusted(tmp_path: Path) -> None:
    gateway = TruncatingGateway(testmodels.scaled(6.0, width=4096))
    (tmp_path / "token").write_text("t")
    edge = launch_edge(tmp_path / "edge.log", "run", "--cloud", f"127.0.0.1:{gateway.port}",
                       "--namespace", "fleet", "--device", "cam-1",
                       "--token-file", str(tmp_path / "token"), "--data-dir",
                       str(tmp_path / "data"), "--heartbeat-seconds", "0.5",
                       "--backoff-base-seconds", "0.1", "--insecure-plaintext")
    try:
        eventually(lambda: "READY" in gateway.states, timeout=60, what="the model Ready")
        half = len(gateway.model) // 2
        assert gateway.fetches[:2] == [0, half]  # the second asked from where the first ended
        x = np.ones((1, 4096), dtype=np.float32)
        assert infer(edge, "grpc", "digits", {"x": x}).as_numpy("y")[0, 0] == 6.0
    finally:
        stop_edge(edge)
        gateway.server.stop(0)


def test_a_version_that_failed_to_replace_the_serving_one_leaves_it_last_known_good(
    fleet: Fleet,
) -> None:
    """Halted (no automatic rollback), the device keeps serving version 1 beside the
    version 2 that failed; restarted with the cloud gone, it serves version 1 again."""
    kube, namespace = fleet.kube, fleet.namespace
    edge = one_device_serving(fleet, 2.0)
    (held,) = reported(kube, namespace, "cam-1")
    held_digest = held["digest"]
    bad_uri, bad_sha = publish(fleet.root, b"this is not an ONNX model")
    kube.patch("edgemodels", namespace, "digits", {"spec": {
        "version": "2", "source": {"uri": bad_uri, "sha256": bad_sha},
        "rollout": {"autoRollback": False}}})
    wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Paused"}, timeout=60)
    eventually(lambda: ("2", "Failed") in {(m["version"], m["state"])
                                           for m in reported(kube, namespace, "cam-1")},
               what="version 2 failed on cam-1")
    state = fleet.root / "cam-1-data" / "state.json"
    eventually(lambda: [(m["version"], m["digest"]) for m in
                        json.loads(state.read_text())["lastKnownGood"]] == [("1", held_digest)],
               what="version 1 kept as last-known-good in state.json")
    fleet.operator.kill()
    edge.process.send_signal(signal.SIGTERM)
    edge.process.wait(timeout=20)
    restarted = fleet.start("cam-1")  # ready means serving, with no cloud to ask
    assert answer(restarted, "digits") == 2.0
