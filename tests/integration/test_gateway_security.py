"""The fleet gateway against a device or a stranger acting as an attacker would, with
real processes (API server, operator, Prometheus, edge runtimes) and real gRPC on
loopback. Each attack of the issue is replayed with its own figures: it is refused
with a clear error, nothing leaks, and the system goes on serving."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from tests.conftest import Fleet, Kube, OperatorProcess, StartOperator, StartPrometheus
from tests.helpers import alert_expressions, eventually
from tests.integration.test_device_identity import enroll, pem_key, tls_options
from tests.integration.test_link_faults import silent_server  # noqa: F401 (a fixture)
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration
CONNECT = "/edgefleet.v1.FleetGateway/Connect"
FETCH = "/edgefleet.v1.FleetGateway/FetchArtifact"
MiB = 2**20


def metadata(namespace: str, device: str, token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), ("edgefleet-namespace", namespace),
            ("edgefleet-device", device))


def device_channel(fleet: Fleet, name: str) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
    """A channel to the gateway as device `name`, and the metadata its calls carry: its
    own certificate over mutual TLS (enrolled once with its token, kept for the test),
    or, for a plaintext fleet, its bearer token."""
    address = f"127.0.0.1:{fleet.operator.grpc_port}"
    options = [("grpc.max_send_message_length", -1)]
    token = (fleet.root / f"{name}.token").read_text()
    if fleet.insecure:
        return (grpc.insecure_channel(address, options=options),
                metadata(fleet.namespace, name, token))
    key_path, certificate_path = fleet.root / f"{name}.fake.key", fleet.root / f"{name}.fake.crt"
    if not key_path.exists():
        key, response = enroll(fleet, name, token)
        key_path.write_bytes(pem_key(key))
        certificate_path.write_bytes(response.certificate.certificate)
    credentials = grpc.ssl_channel_credentials(
        fleet.ca_file().read_bytes(), key_path.read_bytes(), certificate_path.read_bytes())
    return grpc.secure_channel(address, credentials, options=[*options, *tls_options()]), ()


class FakeDevice:
    """A device speaking edgefleet.v1 by hand over a real gRPC channel: it sends what
    the test gives it and collects what the gateway answers on a thread."""

    def __init__(self, fleet: Fleet, name: str, hello: pb.Hello | None = None) -> None:
        self.name = name
        self._channel, call_metadata = device_channel(fleet, name)
        self._outgoing: queue.Queue[pb.DeviceMessage | None] = queue.Queue()
        self._outgoing.put(pb.DeviceMessage(hello=hello or pb.Hello()))
        call = self._channel.stream_stream(
            CONNECT, request_serializer=pb.DeviceMessage.SerializeToString,
            response_deserializer=pb.CloudMessage.FromString)
        self._responses = call(iter(self._outgoing.get, None), metadata=call_metadata)
        self.received: list[pb.CloudMessage] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        try:
            for message in self._responses:
                self.received.append(message)
        except grpc.RpcError as error:
            self.error = error

    def send(self, message: pb.DeviceMessage) -> None:
        self._outgoing.put(message)

    def of_kind(self, kind: str) -> list[pb.CloudMessage]:
        return [m for m in list(self.received) if m.WhichOneof("kind") == kind]

    def refusals(self) -> list[pb.Refused]:
        return [m.refused for m in self.of_kind("refused")]

    def acks(self) -> list[int]:
        return [m.metrics_ack.sequence for m in self.of_kind("metrics_ack")]

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._outgoing.put(None)
        self._responses.cancel()
        self._thread.join(timeout=10)
        self._channel.close()


def connect_fake(fleet: Fleet, devices: list[FakeDevice], name: str,
                 hello: pb.Hello | None = None) -> FakeDevice:
    """Connects a fake device once the gateway knows it (its first desired state
    arrives). The EdgeDevice and its Secret must exist (fleet.add_device)."""
    eventually(lambda: fleet.kube.get("edgedevices", fleet.namespace, name).get(
        "status", {}).get("phase"), what=f"the operator to know {name}")

    def connected() -> FakeDevice | None:
        try:
            device = FakeDevice(fleet, name, hello)
        except grpc.RpcError as error:
            # The token's Secret and the EdgeDevice reach the gateway on separate
            # watches: just after a start, enrolment may see one before the other.
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:  # type: ignore[attr-defined]
                return None
            raise
        devices.append(device)
        eventually(lambda: device.of_kind("desired") or not device.alive, timeout=10,
                   what=f"{name}'s session to answer")
        return device if device.of_kind("desired") else None

    return eventually(connected, timeout=30, interval=1.0, what=f"{name} connected")


def fetch(operator: OperatorProcess, namespace: str, device: str, token: str,
          digest: str) -> grpc.RpcError:
    """FetchArtifact: the cheapest call that authenticates; returns how it ended."""
    with grpc.insecure_channel(f"127.0.0.1:{operator.grpc_port}") as channel:
        call = channel.unary_stream(FETCH, request_serializer=pb.ArtifactRequest.SerializeToString,
                                    response_deserializer=pb.ArtifactChunk.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            list(call(pb.ArtifactRequest(digest=digest), timeout=10,
                      metadata=metadata(namespace, device, token)))
    return caught.value


def memory_kib(operator: OperatorProcess) -> dict[str, int]:
    """The operator process's resident memory now (VmRSS) and at its peak (VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{operator.process.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def heartbeat(*stats: pb.VersionStats, models: list[pb.ModelState] | None = None
              ) -> pb.DeviceMessage:
    return pb.DeviceMessage(heartbeat=pb.Heartbeat(models=models or [], stats=stats))


def written(fleet: Fleet, device: FakeDevice, message: pb.DeviceMessage,
            check: Callable[[dict[str, Any]], object], what: str) -> None:
    """Sends `message` until the device's status passes `check`: a report that changes
    nothing is written only once per heartbeat interval."""
    def status() -> object:
        device.send(message)
        return check(fleet.kube.get("edgedevices", fleet.namespace, device.name)["status"])
    eventually(status, interval=0.5, what=what)


def still_serving(fleet: Fleet, name: str) -> None:
    """The device's status is written again after now: its session is unaffected."""
    before = fleet.kube.get("edgedevices", fleet.namespace, name)["status"]["lastSeen"]
    eventually(lambda: fleet.kube.get("edgedevices", fleet.namespace, name)["status"][
        "lastSeen"] > before, timeout=30, what=f"{name} still reporting")
    wait_status(fleet.kube, "edgedevices", fleet.namespace, name, {"phase": "Online"})


# ---------------------------------------------------------------- probing (item 8)


def test_unknown_devices_and_wrong_tokens_get_one_answer_that_names_nothing(
    plaintext_fleet: Fleet, kube: Kube,
) -> None:
    """The token mode (--insecure-plaintext); with TLS a certificate, not a token, names
    the device (test_device_identity.py)."""
    fleet = plaintext_fleet
    namespace = fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    token = (fleet.root / "cam-1.token").read_text()
    fleet.start("cam-1")
    wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Online"})
    # Authenticated, the gateway checks the digest before anything else.
    error = fetch(fleet.operator, namespace, "cam-1", token, "sha256:../../etc/passwd")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("digest: ") and "64 lowercase hex" in error.details()

    # A Secret of the same name in a namespace the operator does not serve is not seen.
    other = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        kube.core.create_namespaced_secret(other, client.V1Secret(
            metadata=client.V1ObjectMeta(name="cam-2-token"), string_data={"token": "elsewhere"}))
        kube.create("edgedevices", namespace, {
            "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
            "metadata": {"name": "cam-2"},
            "spec": {"bootstrapTokenSecretRef": {"name": "cam-2-token"}}})
        wait_status(kube, "edgedevices", namespace, "cam-2", {"phase": "Pending"})
        answers = [fetch(fleet.operator, namespace, "cam-1", "wrong", "sha256:x"),
                   fetch(fleet.operator, namespace, "cam-9", token, "sha256:x"),
                   fetch(fleet.operator, other, "cam-1", token, "sha256:x"),
                   fetch(fleet.operator, namespace, "cam-2", "elsewhere", "sha256:x"),
                   fetch(fleet.operator, namespace, "cam-1", "", "sha256:x")]
    finally:
        kube.core.delete_namespace(other)
    assert {(a.code(), a.details()) for a in answers} == {
        (grpc.StatusCode.UNAUTHENTICATED, "unknown device or wrong token")}

    # A rotated token counts from the watch on, with no call of the API server per attempt.
    kube.core.patch_namespaced_secret("cam-1-token", namespace,
                                      {"stringData": {"token": "rotated"}})
    eventually(lambda: fetch(fleet.operator, namespace, "cam-1", "rotated", "sha256:x").code()
               == grpc.StatusCode.INVALID_ARGUMENT, what="the rotated token accepted")
    assert fetch(fleet.operator, namespace, "cam-1", token, "sha256:x").code() == (
        grpc.StatusCode.UNAUTHENTICATED)

    # A stranger guessing from one address is soon refused without a look.
    codes = [fetch(fleet.operator, namespace, "cam-1", f"guess-{i}", "sha256:x").code()
             for i in range(80)]
    assert codes[0] == grpc.StatusCode.UNAUTHENTICATED
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (fleet.operator.metric("edgefleet_operator_gateway_auth_failures_total",
                                  reason="RateLimited") or 0) > 0
    assert (fleet.operator.metric("edgefleet_operator_gateway_auth_failures_total",
                                  reason="Unauthenticated") or 0) >= 60
    # The device already connected keeps its session.
    still_serving(fleet, "cam-1")
    log = fleet.operator.log()
    assert "cam-9" not in log and "guess-" not in log and token not in log


# ---------------------------------------------------------------- metrics (items 5, 11)


def test_a_device_writes_only_its_own_runtime_metrics_and_cannot_touch_alerts(
    kube: Kube, namespace: str, start_operator: StartOperator, prometheus: StartPrometheus,
    tmp_path: Path, devices: list[FakeDevice],
) -> None:
    server = prometheus([])
    # Credentials in the URL (Prometheus ignores them) must never show in the log.
    url = server.url.replace("http://", "http://writer:pa55word@") + "/api/v1/write?key=t0k3n"
    fleet = Fleet(kube, namespace, lambda *extra, **kw: start_operator(
        *extra, "--metrics-remote-write-url", url, **kw), tmp_path)
    try:
        fleet.add_device("cam-1", site="plant-7")
        device = connect_fake(fleet, devices, "cam-1")
        now_ms = int(time.time() * 1000)
        device.send(pb.DeviceMessage(metrics=pb.MetricsBatch(
            sequence=1, timestamp_ms=now_ms, samples=[
                pb.MetricSample(name="edgefleet_cloud_connected", value=1),
                # The issue's forgeries: an operator series that silences the offline
                # alert, one that raises it, a 100,000-character label value, and the
                # identity labels set by the device.
                pb.MetricSample(name="edgefleet_operator_devices",
                                labels={"namespace": "prod", "phase": "Offline"}, value=-1e9),
                pb.MetricSample(name="edgefleet_operator_devices",
                                labels={"namespace": "prod", "phase": "Offline"}, value=1e9),
                pb.MetricSample(name="edgefleet_inference_requests_total",
                                labels={"model": "digits", "version": "1",
                                        "outcome": "x" * 100_000}, value=1),
                pb.MetricSample(name="edgefleet_inference_requests_total",
                                labels={"model": "digits", "version": "1",
                                        "outcome": "internal", "device": "cam-2",
                                        "job": "edgefleet-operator"}, value=1e9),
            ])))
        eventually(lambda: device.acks() == [1], what="the batch acknowledged")
        (refused,) = device.refusals()
        assert (refused.kind, refused.reason, refused.sequence) == ("metrics", "NotAllowed", 1)
        assert refused.field == "metrics.samples[1]"
        assert refused.message.startswith(
            "metrics.samples[1]: 4 of 5 samples refused; the first: "
            "'edgefleet_operator_devices' is not a metric the edge runtime emits")

        forced = {"device": "cam-1", "namespace": namespace, "instance": f"{namespace}/cam-1",
                  "job": "edgefleet-edge"}
        (stored,) = eventually(lambda: server.query("edgefleet_cloud_connected"),
                               what="the device's own sample in Prometheus")
        assert {k: v for k, v in stored["metric"].items() if k != "__name__"} == forced
        assert server.query('{__name__=~"edgefleet_operator_.*"}') == []
        assert server.query('{__name__=~".+", outcome=~".{257,}"}') == []
        assert server.query("edgefleet_inference_requests_total") == []
        for alert, expr in alert_expressions().items():
            assert server.query(expr) == [], f"{alert} answers a device's forgery"
        assert fleet.operator.metric("edgefleet_operator_gateway_refused_samples_total",
                                     reason="NotAllowed") == 3
        assert fleet.operator.metric("edgefleet_operator_gateway_refused_samples_total",
                                     reason="TooLarge") == 1
        log = fleet.operator.log()
        assert "pa55word" not in log and "t0k3n" not in log and "x" * 300 not in log
    finally:
        fleet.stop()


def test_the_remote_write_url_never_shows_in_the_log(
    fleet: Fleet, start_operator: StartOperator, devices: list[FakeDevice],
) -> None:
    """Prometheus unreachable: every failed write is logged, with the URL redacted."""
    fleet.operator.stop()
    fleet.operator = start_operator(*fleet.operator_flags(), "--metrics-remote-write-url",
                                    "http://alice:pa55word@127.0.0.1:9/api/v1/write?key=t0k3n")
    fleet.add_device("cam-1", site="plant-7")
    device = connect_fake(fleet, devices, "cam-1")
    device.send(pb.DeviceMessage(metrics=pb.MetricsBatch(
        sequence=1, timestamp_ms=int(time.time() * 1000),
        samples=[pb.MetricSample(name="edgefleet_cloud_connected", value=1)])))
    eventually(lambda: "metrics batch 1 not stored yet" in fleet.operator.log(),
               what="the failed write logged")
    log = fleet.operator.log()
    assert "http://<redacted>@127.0.0.1:9/api/v1/write?<redacted>" in log
    assert "pa55word" not in log and "t0k3n" not in log and "alice" not in log
    assert device.acks() == []  # the device keeps the batch


# ---------------------------------------------------------------- exhaustion (item 6)


def oversized_batches(count: int, size: int) -> Iterator[pb.DeviceMessage]:
    for sequence in range(1, count + 1):
        yield pb.DeviceMessage(metrics=pb.MetricsBatch(sequence=sequence, samples=[
            pb.MetricSample(name="edgefleet_cloud_connected", labels={"pad": "x" * size})]))


def test_batches_of_16_mib_are_refused_before_they_are_read(
    fleet: Fleet, devices: list[FakeDevice],
) -> None:
    for name in ("cam-1", "cam-2"):
        fleet.add_device(name, site="plant-7")
    fleet.start("cam-2")
    wait_status(fleet.kube, "edgedevices", fleet.namespace, "cam-2", {"phase": "Online"})
    before = memory_kib(fleet.operator)
    channel, call_metadata = device_channel(fleet, "cam-1")
    with channel:
        call = channel.stream_stream(CONNECT,
                                     request_serializer=pb.DeviceMessage.SerializeToString,
                                     response_deserializer=pb.CloudMessage.FromString)
        # The issue's figures: 1,024 batches of 16 MiB (16 GiB) from one session.
        messages = iter([pb.DeviceMessage(hello=pb.Hello())])
        requests = (m for part in (messages, oversized_batches(1024, 16 * MiB)) for m in part)
        with pytest.raises(grpc.RpcError) as caught:
            for _ in call(requests, metadata=call_metadata, timeout=60):
                pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    after = memory_kib(fleet.operator)
    print(f"\noperator memory: {before} before, {after} after the 16 MiB batches")
    assert after["VmHWM"] - before["VmRSS"] < 64 * 1024
    still_serving(fleet, "cam-2")
    connect_fake(fleet, devices, "cam-1")  # and the device itself may come back


def test_metrics_waiting_for_prometheus_are_bounded_per_session(
    fleet: Fleet, start_operator: StartOperator, devices: list[FakeDevice],
    silent_server: str,  # noqa: F811 (the fixture imported above)
) -> None:
    """Prometheus accepts connections and never answers: a session's batches queue up
    to 4 MiB; beyond that each is refused as Busy (the device keeps them)."""
    fleet.operator.stop()
    fleet.operator = start_operator(*fleet.operator_flags(),
                                    "--metrics-remote-write-url", silent_server)
    fleet.add_device("cam-1", site="plant-7")
    device = connect_fake(fleet, devices, "cam-1")
    before = memory_kib(fleet.operator)
    sample = pb.MetricSample(name="edgefleet_model_loaded", value=1, labels={
        "model": "digits", "version": "1", "digest": "sha256:" + "a" * 64})
    for sequence in range(1, 1025):  # 1,024 batches of about 16 KiB
        device.send(pb.DeviceMessage(metrics=pb.MetricsBatch(
            sequence=sequence, timestamp_ms=int(time.time() * 1000), samples=[sample] * 150)))
    busy = eventually(lambda: device.refusals() and device.refusals()[-1].sequence == 1024
                      and device.refusals(), timeout=120,
                      what="the batches beyond the bound refused")
    assert len(busy) > 700
    queued = fleet.operator.metric("edgefleet_operator_gateway_queued_metrics_bytes")
    assert queued is not None and 3.9 * MiB < queued <= 4 * MiB
    assert {r.reason for r in busy} == {"Busy"} and device.acks() == []
    # Once one is refused, so is every later one: an acknowledgement would cover them.
    assert [r.sequence for r in busy] == list(range(busy[0].sequence, 1025))
    assert "sends it again in its next session" in busy[0].message
    after = memory_kib(fleet.operator)
    print(f"\noperator memory: {before} before, {after} after 1,024 batches of 16 KiB")
    assert after["VmHWM"] - before["VmRSS"] < 64 * 1024


def test_counts_that_cannot_be_true_are_refused_with_one_event(
    fleet: Fleet, devices: list[FakeDevice],
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    device = connect_fake(fleet, devices, "cam-1")

    def stats(requests: int, errors: int) -> pb.VersionStats:
        return pb.VersionStats(model="digits", version="1", requests=requests, errors=errors)

    written(fleet, device, heartbeat(stats(10, 1)), lambda status: status.get("inference"),
            "the first statistics written")
    # The issue's figures: 2^62 requests, 10^6 errors; then counts going down; each
    # a hundred times over.
    for _ in range(100):
        device.send(heartbeat(stats(2**62, 1)))
        device.send(heartbeat(stats(10**6, 10**6)))
        device.send(heartbeat(stats(5, 1)))
    refusals = eventually(lambda: len(device.refusals()) >= 300 and device.refusals(),
                          timeout=60, what="300 refusals")
    assert {(r.kind, r.reason) for r in refusals} == {("heartbeat", "Implausible")}
    assert "a device answers at most 50000" in refusals[0].message
    assert "went down within a session" in refusals[2].message

    (event,) = eventually(lambda: [e for e in kube.events(namespace, "cam-1")
                                   if e.reason == "ImplausibleReport"],
                          what="an ImplausibleReport Event")
    assert event.involved_object.kind == "EdgeDevice" and event.type == "Warning"
    assert "from device cam-1" in event.message and "heartbeat.stats[0]" in event.message
    (kept,) = kube.get("edgedevices", namespace, "cam-1")["status"]["inference"]
    assert (kept["requests"], kept["errors"]) == (10, 1)
    # Plausible counts go on being taken.
    written(fleet, device, heartbeat(stats(20, 1)),
            lambda status: status["inference"][0]["requests"] == 20,
            "the next plausible statistics written")
    assert len([e for e in kube.events(namespace, "cam-1")
                if e.reason == "ImplausibleReport"]) == 1


def test_lists_and_strings_over_their_caps_are_refused_and_the_status_keeps_its_last(
    fleet: Fleet, devices: list[FakeDevice],
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    device = connect_fake(fleet, devices, "cam-1")
    good = pb.ModelState(name="digits", version="1", digest="sha256:" + "0" * 64,
                         state=pb.ModelState.READY)
    written(fleet, device, heartbeat(models=[good]), lambda status: status.get("models"),
            "the models written")
    device.send(pb.DeviceMessage(report=pb.StateReport(models=[good] * 10_000)))
    device.send(heartbeat(models=[pb.ModelState(name="digits", version="1",
                                                digest=good.digest, message="x" * 100_000)]))
    device.send(pb.DeviceMessage(hello=pb.Hello()))
    refusals = eventually(lambda: len(device.refusals()) == 3 and device.refusals(),
                          what="three refusals")
    assert [(r.field, r.reason) for r in refusals] == [
        ("report.models", "TooLarge"), ("heartbeat.models[0].message", "TooLarge"),
        ("hello", "NotAllowed")]
    assert refusals[0].message == "report.models: 10000 entries, at most 64"
    (held,) = kube.get("edgedevices", namespace, "cam-1")["status"]["models"]
    assert (held["name"], held["state"]) == ("digits", "Ready")
    assert fleet.operator.metric("edgefleet_operator_gateway_refused_messages_total",
                                 kind="report", reason="TooLarge") == 1
