"""Device identity with real processes (API server, operator, edge runtimes) and real
TLS on loopback: enrolment with a bootstrap token, once; mutual TLS sessions in which
the certificate names the device; renewal under live traffic; revocation; plaintext
only when both sides ask for it; the CA pin; fleet enrolment with approval; CA
rotation with an overlap bundle."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import testmodels
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from edgefleet.operator import pki
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from edgefleet.protocol.identity import GATEWAY_SERVER_NAME, device_uri
from tests.conftest import Fleet, Kube, StartOperator, launch_edge, stop_edge
from tests.helpers import Traffic, eventually, printed_row
from tests.integration.test_edge_cloud_link import answer, edge_model, publish
from tests.integration.test_edge_security import HostileGateway
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration
SERVICE = "/edgefleet.v1.FleetGateway"


# ---------------------------------------------------------------- a device by hand


def new_csr() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def tls_options() -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", GATEWAY_SERVER_NAME)]


def enroll(fleet: Fleet, name: str, token: str, labels: dict[str, str] | None = None
           ) -> tuple[ec.EllipticCurvePrivateKey, pb.EnrollResponse]:
    """Enroll as a device would; raises grpc.RpcError when refused."""
    key, csr = new_csr()
    credentials = grpc.ssl_channel_credentials(fleet.ca_file().read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{fleet.operator.enrolment_port}", credentials,
                             options=tls_options()) as channel:
        call = channel.unary_unary(f"{SERVICE}/Enroll",
                                   request_serializer=pb.EnrollRequest.SerializeToString,
                                   response_deserializer=pb.EnrollResponse.FromString)
        response = call(pb.EnrollRequest(namespace=fleet.namespace, device=name, csr=csr,
                                         labels=labels or {}),
                        metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    return key, response


def mtls_channel(fleet: Fleet, key_pem: bytes, certificate_pem: bytes) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(fleet.ca_file().read_bytes(), key_pem,
                                               certificate_pem)
    return grpc.secure_channel(f"127.0.0.1:{fleet.operator.grpc_port}", credentials,
                               options=tls_options())


def fetch_error(channel: grpc.Channel, digest: str, metadata: tuple[tuple[str, str], ...] = ()
                ) -> grpc.RpcError | None:
    """FetchArtifact over a channel: None if chunks came, else how it ended."""
    call = channel.unary_stream(f"{SERVICE}/FetchArtifact",
                                request_serializer=pb.ArtifactRequest.SerializeToString,
                                response_deserializer=pb.ArtifactChunk.FromString)
    try:
        for _ in call(pb.ArtifactRequest(digest=digest), metadata=metadata, timeout=10):
            pass
    except grpc.RpcError as error:
        return error
    return None


def first_messages(channel: grpc.Channel, count: int = 2) -> list[pb.CloudMessage] | grpc.RpcError:
    """Connect with a hello; the first `count` messages, or how the call ended."""
    call = channel.stream_stream(f"{SERVICE}/Connect",
                                 request_serializer=pb.DeviceMessage.SerializeToString,
                                 response_deserializer=pb.CloudMessage.FromString)
    outgoing = iter([pb.DeviceMessage(hello=pb.Hello())])
    responses = call(outgoing, timeout=10)
    received: list[pb.CloudMessage] = []
    try:
        for message in responses:
            received.append(message)
            if len(received) == count:
                responses.cancel()
                return received
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.CANCELLED and len(received) == count:
            return received
        return error
    return received


def identity_files(fleet: Fleet, name: str) -> Path:
    return fleet.root / f"{name}-data" / "identity"


def held_certificate(fleet: Fleet, name: str) -> tuple[bytes, x509.Certificate]:
    """The device's identity file (its key and certificate) and the certificate."""
    pem = (identity_files(fleet, name) / "identity.pem").read_bytes()
    return pem, x509.load_pem_x509_certificates(pem)[0]


def device_channel(fleet: Fleet, name: str) -> grpc.Channel:
    """A channel presenting the device's own key and certificate, as copied off it."""
    pem = (identity_files(fleet, name) / "identity.pem").read_bytes()
    key = re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----\n",
                    pem, re.S)
    assert key, "identity.pem holds the device's private key"
    return mtls_channel(fleet, key.group(0), pem.replace(key.group(0), b""))


def identity_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.get("edgedevices", namespace, name).get("status", {}).get("identity")
                or {})


def online(fleet: Fleet, name: str, timeout: float = 60) -> None:
    wait_status(fleet.kube, "edgedevices", fleet.namespace, name, {"phase": "Online"},
                timeout=timeout)


def edge_metric(fleet: Fleet, name: str, sample: str) -> float | None:
    for line in fleet.edges[name].metrics().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def serving_model(fleet: Fleet, name: str, factor: float = 4.0) -> str:
    """Rolls out the `digits` model to `name` (label site=plant-7); its digest."""
    uri, sha = publish(fleet.root, testmodels.scaled(factor))
    fleet.kube.create("edgemodels", fleet.namespace, edge_model("digits", "1", uri, sha,
                                                                site="plant-7"))
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits", {"readySummary": "1/1"},
                timeout=90)
    return f"sha256:{sha}"


# ---------------------------------------------------------------- enrolment


def test_a_device_enrols_once_and_its_certificate_names_it(fleet: Fleet) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    fleet.add_device("cam-2", site="elsewhere")
    fleet.start("cam-1")
    online(fleet, "cam-1")

    identity = identity_status(kube, namespace, "cam-1")
    assert identity["state"] == "Enrolled" and identity["enrolment"] == "BootstrapToken"
    pem, certificate = held_certificate(fleet, "cam-1")
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert names == [device_uri(namespace, "cam-1")]
    assert format(certificate.serial_number, "x") == identity["serial"]
    assert b"PRIVATE KEY" in pem  # the key never left the device: made there, kept there
    mode = stat.S_IMODE((identity_files(fleet, "cam-1") / "identity.pem").stat().st_mode)
    assert mode == 0o600, oct(mode)
    # `kubectl get ed` shows when the certificate expires.
    row = printed_row(kube.kubectl("get", "edgedevices", "cam-1", "-n", namespace).stdout)
    assert row["CERT-EXPIRES"] == identity["notAfter"]

    # The token that enrolled cam-1 is spent: replaying it buys nothing.
    token = (fleet.root / "cam-1.token").read_text()
    with pytest.raises(grpc.RpcError) as replay:
        enroll(fleet, "cam-1", token)
    assert replay.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "already enrolled" in str(replay.value.details())
    # Another device's token does not enrol cam-1, and says nothing of why.
    with pytest.raises(grpc.RpcError) as borrowed:
        enroll(fleet, "cam-1", (fleet.root / "cam-2.token").read_text())
    assert borrowed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert identity_status(kube, namespace, "cam-1")["serial"] == identity["serial"]
    assert fleet.operator.metric("edgefleet_operator_gateway_auth_failures_total",
                                 reason="TokenReused") == 1


def test_a_certificate_acts_only_as_the_device_it_names(fleet: Fleet, tmp_path: Path) -> None:
    fleet.add_device("cam-1", site="plant-7")
    fleet.add_device("cam-2", site="elsewhere")
    fleet.start("cam-1")
    fleet.start("cam-2")
    online(fleet, "cam-2")
    digest = serving_model(fleet, "cam-1")  # assigned to cam-1 only

    # cam-2's own certificate, with metadata claiming to be cam-1: the certificate wins.
    claim = (("edgefleet-namespace", fleet.namespace), ("edgefleet-device", "cam-1"))
    with device_channel(fleet, "cam-2") as channel:
        error = fetch_error(channel, digest, claim)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{fleet.namespace}/cam-2" in str(error.details())
    with device_channel(fleet, "cam-1") as channel:
        assert fetch_error(channel, digest) is None  # cam-1's certificate fetches it

    # A certificate for cam-1 from another CA: refused in the TLS handshake.
    other_ca, other_key = pki.new_ca(datetime.now(UTC))
    forger = pki.CertificateAuthority(other_ca, other_key, other_ca)
    key, csr = new_csr()
    forged = forger.issue_device(pki.parse_csr(csr), fleet.namespace, "cam-1", pki.SERVER_VALIDITY)
    with mtls_channel(fleet, pem_key(key), forged.pem) as channel:
        error = fetch_error(channel, digest)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    # No certificate at all on the session port: no handshake either.
    credentials = grpc.ssl_channel_credentials(fleet.ca_file().read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{fleet.operator.grpc_port}", credentials,
                             options=tls_options()) as channel:
        error = fetch_error(channel, digest)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE


def test_guessed_enrolment_tokens_are_limited_per_address(fleet: Fleet) -> None:
    """A stranger guessing tokens: one answer naming nothing, then, past the address's
    allowance of failures (60), refused without a look."""
    fleet.add_device("cam-1", site="plant-7")
    codes = []
    for guess in range(70):
        with pytest.raises(grpc.RpcError) as refused:
            enroll(fleet, "cam-1", f"guess-{guess}")
        codes.append(refused.value.code())
    assert set(codes[:60]) == {grpc.StatusCode.UNAUTHENTICATED}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[60:]
    assert (fleet.operator.metric("edgefleet_operator_gateway_auth_failures_total",
                                  reason="RateLimited") or 0) >= 1
    assert not identity_status(fleet.kube, fleet.namespace, "cam-1")


def test_devices_come_back_with_their_certificates_after_the_operator_restarts(
    fleet: Fleet,
) -> None:
    """A new operator's gateway listens before it has listed the devices: a device that
    dials in then is told to retry, not to enrol again (its token is spent)."""
    names = ("cam-1", "cam-2", "cam-3")
    for name in names:
        fleet.add_device(name, site="plant-7")
        fleet.start(name)
    for name in names:
        online(fleet, name)
    serials = {name: identity_status(fleet.kube, fleet.namespace, name)["serial"]
               for name in names}
    fleet.restart_operator()
    for name in names:
        eventually(lambda n=name: f"device connected device={fleet.namespace}/{n}"
                   in fleet.operator.log(), timeout=60, what=f"{name} back")
    assert "device enrolled" not in fleet.operator.log()
    assert {name: identity_status(fleet.kube, fleet.namespace, name)["serial"]
            for name in names} == serials
    for name in names:
        assert "re-enrolment needs" not in fleet.edges[name].log()


# ---------------------------------------------------------------- rotation and expiry


def test_certificates_renew_under_live_traffic_without_a_gap_and_expired_ones_are_refused(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    fleet = Fleet(kube, namespace, lambda *extra, **kw: start_operator(
        *extra, "--device-cert-validity", "6", **kw), tmp_path)
    try:
        fleet.add_device("cam-1", site="plant-7")
        fleet.add_device("cam-9", site="nowhere")
        edge = fleet.start("cam-1")
        serving_model(fleet, "cam-1")
        serials = {identity_status(kube, namespace, "cam-1")["serial"]}
        with Traffic([edge.grpc_url]) as traffic:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                serials.add(identity_status(kube, namespace, "cam-1")["serial"])
                time.sleep(0.5)
        # Renewed at two thirds of 6 s: twice or more in 15 s, every request answered,
        # and one session throughout.
        assert len(serials) >= 3, serials
        assert traffic.failed == 0 and traffic.answered > 100, vars(traffic)
        assert fleet.operator.log().count(f"device connected device={namespace}/cam-1") == 1
        assert "cloud session ended" not in edge.log()
        assert identity_status(kube, namespace, "cam-1").get("renewedAt")
        # What the device holds is what the status records (once the latest renewal is
        # both written and stored).
        eventually(lambda: format(held_certificate(fleet, "cam-1")[1].serial_number, "x")
                   == identity_status(kube, namespace, "cam-1")["serial"],
                   what="the held certificate to be the recorded one")

        # A certificate past its end: the gateway's TLS refuses it.
        key, response = enroll(fleet, "cam-9", (tmp_path / "cam-9.token").read_text())
        issued = response.certificate.certificate
        with mtls_channel(fleet, pem_key(key), issued) as channel:
            first = first_messages(channel)
        assert isinstance(first, list), first
        assert first[0].WhichOneof("kind") == "certificate"  # the trust bundle, first
        not_after = x509.load_pem_x509_certificate(issued).not_valid_after_utc
        time.sleep(max(0.0, (not_after - datetime.now(UTC)).total_seconds()) + 1.5)
        with mtls_channel(fleet, pem_key(key), issued) as channel:
            expired = first_messages(channel)
        assert isinstance(expired, grpc.RpcError)
        assert expired.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        fleet.stop()


# ---------------------------------------------------------------- revocation


def seconds_until_the_session_ends(fleet: Fleet, name: str, what: str,
                                   act: Callable[[], object]) -> float:
    """Does `act`, waits for the gateway to end the device's session; the seconds it
    took, printed."""
    started = time.monotonic()
    act()
    eventually(lambda: f"device disconnected device={fleet.namespace}/{name}"
               in fleet.operator.log(), timeout=15, interval=0.1, what="the session to end")
    took = time.monotonic() - started
    print(f"\nsession ended {took:.2f} s after {what}")
    return took


def test_revocation_ends_the_session_within_seconds_and_the_device_keeps_serving(
    fleet: Fleet,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    edge = fleet.start("cam-1")
    digest = serving_model(fleet, "cam-1")
    took = seconds_until_the_session_ends(fleet, "cam-1", "spec.revoked", lambda: kube.patch(
        "edgedevices", namespace, "cam-1", {"spec": {"revoked": True}}))
    assert took < 10
    eventually(lambda: identity_status(kube, namespace, "cam-1").get("state") == "Revoked",
               what="status.identity.state Revoked")
    # The device says why, and keeps serving what it holds.
    eventually(lambda: "revoked" in edge.log(), what="the runtime to log the revocation")
    eventually(lambda: edge_metric(fleet, "cam-1",
                                   'edgefleet_edge_identity_state{state="Revoked"}') == 1,
               what="the identity metric to say Revoked")
    assert answer(edge, "digits") == 4.0
    # Its certificate is refused from now on, even once spec.revoked is cleared.
    with device_channel(fleet, "cam-1") as channel:
        error = fetch_error(channel, digest)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    kube.patch("edgedevices", namespace, "cam-1", {"spec": {"revoked": False}})
    time.sleep(2)
    with device_channel(fleet, "cam-1") as channel:
        error = fetch_error(channel, digest)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    # Re-enrolment: a new token from the admin (the documented command does this).
    token = "new-token-" + "7" * 16
    kube.core.patch_namespaced_secret("cam-1-token", namespace, {"stringData": {"token": token}})
    (fleet.root / "cam-1.token").write_text(token)
    eventually(lambda: identity_status(kube, namespace, "cam-1").get("state") == "Enrolled",
               timeout=60, what="the device to enrol again with the new token")
    online(fleet, "cam-1")
    assert answer(edge, "digits") == 4.0


def test_deleting_the_device_ends_its_session_and_refuses_its_certificate(
    fleet: Fleet,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    edge = fleet.start("cam-1")
    digest = serving_model(fleet, "cam-1")
    seconds_until_the_session_ends(fleet, "cam-1", "the deletion", lambda: (
        kube.custom.delete_namespaced_custom_object("edgefleet.io", "v1alpha1", namespace,
                                                    "edgedevices", "cam-1")))
    # Its certificate is refused from now on; it is told to retry, not to enrol again
    # (a gateway that has not listed a device yet answers the same after a start).
    with device_channel(fleet, "cam-1") as channel:
        error = fetch_error(channel, digest)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert "not known to the gateway" in str(error.details())
    time.sleep(3)
    assert edge.log().count("enrolling device=") == 1  # the first enrolment only
    assert answer(edge, "digits") == 4.0  # it serves what it holds


# ---------------------------------------------------------------- link security


@pytest.mark.parametrize("operator_plaintext, edge_plaintext", [
    (False, True), (True, False), (True, True)])
def test_plaintext_only_when_both_sides_say_so(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
    operator_plaintext: bool, edge_plaintext: bool,
) -> None:
    fleet = Fleet(kube, namespace, start_operator, tmp_path, insecure=operator_plaintext)
    try:
        fleet.add_device("cam-1", site="plant-7")
        if edge_plaintext:
            link = ["--insecure-plaintext"]
        else:  # the CA the gateway would have, had it made one
            ca, _ = pki.new_ca(datetime.now(UTC))
            (tmp_path / "ca.crt").write_bytes(ca)
            link = ["--tls-ca-file", str(tmp_path / "ca.crt"),
                    "--enrolment-address", f"127.0.0.1:{fleet.operator.enrolment_port}"]
        edge = fleet.start("cam-1", link=link)
        if operator_plaintext and edge_plaintext:
            online(fleet, "cam-1")
            assert "WITHOUT TLS" in fleet.operator.log()
            assert fleet.operator.metric("edgefleet_operator_gateway_insecure_plaintext") == 1
            assert edge_metric(fleet, "cam-1", "edgefleet_edge_cloud_insecure") == 1
            return
        time.sleep(6)  # several attempts, with backoff
        status = kube.get("edgedevices", namespace, "cam-1").get("status", {})
        assert status.get("phase") != "Online" and not status.get("lastSeen"), status
        assert fleet.operator.log().count("device connected") == 0
        assert edge.process.poll() is None  # it keeps running (and serving) and retrying
    finally:
        fleet.stop()


def test_a_wrong_ca_pin_is_refused_and_the_right_one_enrols(fleet: Fleet) -> None:
    pins = re.findall(r"ca-cert-hash=(sha256:[0-9a-f]{64})", fleet.operator.log())
    assert pins, "the operator logs the pin"
    fleet.add_device("cam-1", site="plant-7")
    fleet.add_device("cam-2", site="plant-7")
    enrolment = ["--enrolment-address", f"127.0.0.1:{fleet.operator.enrolment_port}"]
    wrong = fleet.start("cam-1", link=["--ca-cert-hash", "sha256:" + "0" * 64, *enrolment])
    right = fleet.start("cam-2", link=["--ca-cert-hash", pins[0], *enrolment])
    online(fleet, "cam-2")
    eventually(lambda: pins[0] in wrong.log() and "sha256:" + "0" * 64 in wrong.log(),
               what="the wrong pin refused, naming both hashes")
    assert not (identity_files(fleet, "cam-1") / "identity.pem").exists()
    assert "identity" not in kube_status(fleet, "cam-1")
    assert (identity_files(fleet, "cam-2") / "trust.pem").read_bytes().strip() == (
        fleet.ca_file().read_bytes().strip())
    assert right.process.poll() is None and wrong.process.poll() is None


def kube_status(fleet: Fleet, name: str) -> dict[str, Any]:
    return dict(fleet.kube.get("edgedevices", fleet.namespace, name).get("status", {}))


# ---------------------------------------------------------------- fleet enrolment


def test_fleet_enrolment_creates_a_pending_device_that_takes_models_only_once_approved(
    fleet: Fleet,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    kube.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="plant-7-enrolment",
                                     labels={"edgefleet.io/fleet-enrolment": "true"}),
        string_data={"token": "fleet-claim-token-0123456789", "allowed-label-keys": "site"}))
    (fleet.root / "fleet.token").write_text("fleet-claim-token-0123456789")
    uri, sha = publish(fleet.root, testmodels.scaled(4.0))
    kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha, site="plant-7"))
    edge = fleet.start("cam-new", "--fleet-token-file", str(fleet.root / "fleet.token"),
                       "--label", "site=plant-7", "--label", "role=admin")
    def registered() -> dict[str, Any] | None:
        try:
            return kube.get("edgedevices", namespace, "cam-new")
        except ApiException as error:
            if error.status == 404:  # the device has not enrolled yet
                return None
            raise

    device = eventually(registered, what="the EdgeDevice registered")
    assert device["metadata"]["labels"] == {"site": "plant-7"}  # role: not allowed
    eventually(lambda: identity_status(kube, namespace, "cam-new").get("enrolment")
               == "FleetToken", what="its certificate")
    time.sleep(3)
    status = kube_status(fleet, "cam-new")
    assert status.get("phase") == "Pending" and not status.get("models"), status
    assert kube.get("edgemodels", namespace, "digits")["status"]["readySummary"] == "0/0"

    kube.kubectl("annotate", "edgedevice", "cam-new", "-n", namespace,
                 "edgefleet.io/approved=true")
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "1/1"}, timeout=60)
    online(fleet, "cam-new")
    assert answer(edge, "digits") == 4.0
    # The fleet token registers new devices only: it cannot take over an existing one.
    with pytest.raises(grpc.RpcError) as taken:
        enroll(fleet, "cam-new", "fleet-claim-token-0123456789")
    assert taken.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- CA rotation


def test_the_ca_rotates_with_an_overlap_bundle_and_devices_follow(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    # Certificates of 15 s, renewed every 10 s: a restart of the operator (several
    # seconds on a busy machine) leaves the device's current one valid.
    fleet = Fleet(kube, namespace, lambda *extra, **kw: start_operator(
        *extra, "--ca-refresh-seconds", "1", "--device-cert-validity", "15", **kw), tmp_path)
    try:
        fleet.add_device("cam-1", site="plant-7")
        edge = fleet.start("cam-1")
        serving_model(fleet, "cam-1")
        secret = kube.core.read_namespaced_secret("edgefleet-gateway-ca", namespace)
        old = {key: base64.b64decode(value) for key, value in secret.data.items()}
        new_certificate, new_key = pki.new_ca(datetime.now(UTC))

        def set_ca(**data: bytes) -> None:
            kube.core.patch_namespaced_secret("edgefleet-gateway-ca", namespace, {"data": {
                key.replace("_", "."): base64.b64encode(value).decode()
                for key, value in data.items()}})

        def trusted() -> bytes:
            return (identity_files(fleet, "cam-1") / "trust.pem").read_bytes()

        # 1. Both CAs trusted, the old one still issuing: devices learn the new one.
        set_ca(ca_crt=old["ca.crt"] + new_certificate)
        eventually(lambda: new_certificate.strip() in trusted(), timeout=20,
                   what="the device to trust the new CA")
        # 2. The new CA issues and serves; renewed certificates come from it.
        set_ca(tls_crt=new_certificate, tls_key=new_key)
        new_ca = x509.load_pem_x509_certificate(new_certificate)

        def issued_by_new_ca() -> bool:
            # Both CAs bear the same name: the signature tells them apart.
            try:
                held_certificate(fleet, "cam-1")[1].verify_directly_issued_by(new_ca)
            except (ValueError, TypeError, InvalidSignature):
                return False
            return True

        eventually(issued_by_new_ca, timeout=30, what="a certificate from the new CA")
        # A new session (the gateway restarted) trusts the new serving certificate.
        fleet.restart_operator("--ca-refresh-seconds", "1", "--device-cert-validity", "15")
        eventually(lambda: fleet.operator.log().count(
            f"device connected device={namespace}/cam-1") == 1, timeout=60,
            what="the device to reconnect to the new CA's gateway")
        # 3. The old CA goes; the fleet goes on.
        set_ca(ca_crt=new_certificate)
        eventually(lambda: trusted().strip() == new_certificate.strip(), timeout=20,
                   what="the old CA dropped")
        assert answer(edge, "digits") == 4.0
        online(fleet, "cam-1")
    finally:
        fleet.stop()



# ---------------------------------------------------------------- signed assignments


def test_the_device_refuses_unsigned_and_tampered_assignments_and_keeps_serving(
    tmp_path: Path,
) -> None:
    """A gateway that holds a CA the device trusts, and so passes TLS, but sends what
    the operator never signed: the device refuses it, serves on, and says why."""
    now = datetime.now(UTC)
    ca_pem, ca_key = pki.new_ca(now)
    ca = pki.CertificateAuthority(ca_pem, ca_key, ca_pem)
    server_key, server_chain, _ = ca.issue_server([])
    device_key, csr = new_csr()
    issued = ca.issue_device(pki.parse_csr(csr), "fleet", "cam-1", pki.SERVER_VALIDITY)
    signing_key = Ed25519PrivateKey.generate()
    # What enrolment would have left on the device.
    identity = tmp_path / "data" / "identity"
    identity.mkdir(parents=True, mode=0o700)
    (identity / "identity.pem").write_bytes(pem_key(device_key) + issued.pem)
    (identity / "identity.pem").chmod(0o600)
    (identity / "trust.pem").write_bytes(ca.bundle_pem)
    (identity / "signing.pub").write_bytes(pki.public_key_bytes(signing_key))
    (tmp_path / "ca.crt").write_bytes(ca.bundle_pem)

    gateway = HostileGateway(grpc.ssl_server_credentials(
        [(server_key, server_chain)], root_certificates=ca.bundle_pem,
        require_client_auth=True), signing_key)
    good, other = testmodels.scaled(4.0), testmodels.scaled(5.0)
    good_digest, other_digest = (f"sha256:{hashlib.sha256(m).hexdigest()}"
                                 for m in (good, other))
    gateway.artifacts.update({good_digest: good, other_digest: other})
    edge = launch_edge(tmp_path / "edge.log", "run", "--cloud", f"127.0.0.1:{gateway.port}",
                       "--namespace", "fleet", "--device", "cam-1",
                       "--tls-ca-file", str(tmp_path / "ca.crt"),
                       "--data-dir", str(tmp_path / "data"), "--heartbeat-seconds", "0.5",
                       "--backoff-base-seconds", "0.1", "--backoff-max-seconds", "1")
    try:
        gateway.assign("r1", ("digits", "1", good_digest))
        eventually(lambda: gateway.state("digits", "1") == ("READY", ""),
                   what="the signed assignment served")
        # Unsigned, and signed for one digest but carrying another.
        gateway.assign("r2", ("digits", "1", good_digest), ("other", "1", other_digest),
                       unsigned=frozenset({"other"}))
        eventually(lambda: (gateway.state("other", "1") or ("", ""))[0] == "FAILED",
                   what="the unsigned assignment refused")
        gateway.assign("r3", ("digits", "2", good_digest), tampered={"digits": other_digest})
        eventually(lambda: (gateway.state("digits", "2") or ("", ""))[0] == "FAILED",
                   what="the tampered assignment refused")
        for name, version in (("other", "1"), ("digits", "2")):
            assert "signature" in gateway.state(name, version)[1]  # type: ignore[index]
        assert other_digest not in gateway.fetched  # nothing unsigned was downloaded
        assert answer(edge, "digits") == 4.0  # version 1 serves on
        metrics = edge.metrics()
        for reason in ("Unsigned", "BadSignature"):
            assert re.search(rf'^edgefleet_edge_assignments_refused_total{{reason="{reason}"}} '
                             r'[1-9]', metrics, re.MULTILINE), reason
    finally:
        stop_edge(edge)
        gateway.server.stop(0)

