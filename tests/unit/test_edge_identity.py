"""The device side of identity: its key file, its CSRs, the gateway's CA found by its
pin, and enrolment, renewal and refusals against a stand-in gateway that speaks real TLS
on loopback (an enrolment port with server TLS, a session port with mutual TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import REGISTRY

from edgefleet.edge_runtime.agent import CloudAgent
from edgefleet.edge_runtime.capture import Collector
from edgefleet.edge_runtime.engine import Engine
from edgefleet.edge_runtime.identity import (
    DeviceIdentity,
    Identity,
    IdentityError,
    IdentityFiles,
    ca_by_pin,
    discover_ca,
    make_csr,
    new_key,
    presented_chain,
    uri_names,
)
from edgefleet.edge_runtime.settings import RunSettings
from edgefleet.edge_runtime.store import Store
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from edgefleet.protocol.identity import GATEWAY_SERVER_NAME, ca_cert_hash, device_uri

NS, DEVICE = "fleet", "cam-1"
TOKEN = "bootstrap-token-1"
PEM = serialization.Encoding.PEM

# ------------------------------------------------------------ a small PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    def __init__(self, cn: str = "edgefleet gateway CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - timedelta(minutes=1))
                     .not_valid_after(now + timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(PEM)

    def issue(self, public_key: Any, *, dns: str | None = None, uri: str | None = None,
              lifetime: timedelta = timedelta(days=1),
              backdated: timedelta = timedelta(seconds=1)) -> x509.Certificate:
        now = datetime.now(UTC)
        names: list[x509.GeneralName] = [x509.DNSName(dns)] if dns else []
        names += [x509.UniformResourceIdentifier(uri)] if uri else []
        usage = ExtendedKeyUsageOID.SERVER_AUTH if dns else ExtendedKeyUsageOID.CLIENT_AUTH
        return (x509.CertificateBuilder().subject_name(_name(dns or uri or "x"))
                .issuer_name(self.cert.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - backdated).not_valid_after(now + lifetime)
                .add_extension(x509.SubjectAlternativeName(names), False)
                .add_extension(x509.ExtendedKeyUsage([usage]), False)
                .sign(self.key, hashes.SHA256()))

    def serving(self) -> tuple[bytes, bytes]:
        """(key PEM, chain PEM: leaf + CA) for the gateway's name."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self.issue(key.public_key(), dns=GATEWAY_SERVER_NAME)
        key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, leaf.public_bytes(PEM) + self.pem


def settings_for(tmp_path: Path, **extra: Any) -> RunSettings:
    (tmp_path / "token").write_text(TOKEN + "\n")
    values: dict[str, Any] = {
        "cloud": "127.0.0.1:1", "namespace": NS, "device": DEVICE,
        "data_dir": tmp_path / "data", "token_file": tmp_path / "token",
        "backoff_base_seconds": 0.05, "backoff_max_seconds": 0.3, "heartbeat_seconds": 1}
    return RunSettings(**{**values, **extra})


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# ------------------------------------------------------------ a stand-in gateway


class Gateway:
    """Enroll on a server-TLS port, Connect on a mutual-TLS port, both with a chain of
    leaf + CA. What it answers is set per test; what it saw is recorded."""

    def __init__(self, ca: CA, lifetime: timedelta = timedelta(days=1)) -> None:
        self.ca, self.lifetime = ca, lifetime
        self.signing = Ed25519PrivateKey.generate()
        self.signing_raw = self.signing.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.used_tokens: set[str] = set()
        self.enrolments: list[tuple[pb.EnrollRequest, dict[str, str]]] = []
        self.connects: list[str] = []  # the serial of each session's client certificate
        self.received: list[pb.DeviceMessage] = []
        self.renewed: list[x509.Certificate] = []
        # Connect's answer to the certificates of the first `refused_enrolments`.
        self.connect_refusal: tuple[grpc.StatusCode, str] | None = None
        self.refused_enrolments = 10**6
        self.signing_key_bytes: bytes | None = None
        self.servers: list[grpc.aio.Server] = []

    def _issue(self, csr_pem: bytes) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(csr_pem)
        assert csr.is_signature_valid
        # Backdated as real issuers do, for clock skew.
        return self.ca.issue(csr.public_key(), uri=device_uri(NS, DEVICE), lifetime=self.lifetime,
                             backdated=timedelta(minutes=5))

    async def enroll(self, request: pb.EnrollRequest,
                     context: grpc.aio.ServicerContext) -> pb.EnrollResponse:
        metadata = {k: v for k, v in context.invocation_metadata() or ()
                    if isinstance(v, str)}
        self.enrolments.append((request, metadata))
        token = metadata.get("authorization", "").removeprefix("Bearer ")
        if token in self.used_tokens:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "the bootstrap token was used already")
        self.used_tokens.add(token)
        cert = self._issue(request.csr)
        return pb.EnrollResponse(
            certificate=pb.IssuedCertificate(certificate=cert.public_bytes(PEM),
                                             trust_bundle=self.ca.pem),
            signing_public_key=(self.signing_raw if self.signing_key_bytes is None
                                else self.signing_key_bytes))

    async def connect(self, requests: AsyncIterator[pb.DeviceMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        (peer_pem,) = context.auth_context()["x509_pem_cert"]
        self.connects.append(format(x509.load_pem_x509_certificate(peer_pem).serial_number, "x"))
        if self.connect_refusal and len(self.enrolments) <= self.refused_enrolments:
            await context.abort(*self.connect_refusal)
        yield pb.CloudMessage(certificate=pb.IssuedCertificate(trust_bundle=self.ca.pem))
        yield b"\x7a\x00"  # field 15, a kind from a newer gateway
        yield pb.CloudMessage(desired=pb.DesiredState(revision="r1", models=[pb.ModelAssignment(
            name="m", version="1", digest="sha256:" + "ab" * 32)]))  # unsigned
        async for message in requests:
            self.received.append(message)
            if message.WhichOneof("kind") == "renew":
                cert = self._issue(message.renew.csr)
                self.renewed.append(cert)
                yield pb.CloudMessage(certificate=pb.IssuedCertificate(
                    certificate=cert.public_bytes(PEM), trust_bundle=self.ca.pem))

    async def start(self) -> tuple[int, int]:
        """(enrolment port, session port)."""
        key, chain = self.ca.serving()
        ports = []
        for require_client_auth in (False, True):
            server = grpc.aio.server()
            handlers = {
                "Enroll": grpc.unary_unary_rpc_method_handler(
                    self.enroll, request_deserializer=pb.EnrollRequest.FromString,
                    response_serializer=pb.EnrollResponse.SerializeToString),
                "Connect": grpc.stream_stream_rpc_method_handler(
                    self.connect, request_deserializer=pb.DeviceMessage.FromString,
                    response_serializer=lambda m: m if isinstance(m, bytes)
                    else m.SerializeToString()),
            }
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                "edgefleet.v1.FleetGateway", handlers),))
            credentials = grpc.ssl_server_credentials(
                [(key, chain)], root_certificates=self.ca.pem if require_client_auth else None,
                require_client_auth=require_client_auth)
            ports.append(server.add_secure_port("127.0.0.1:0", credentials))
            await server.start()
            self.servers.append(server)
        return ports[0], ports[1]

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(None)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def with_gateway(scenario: Callable[[Gateway, int, int], Awaitable[None]],
                 gateway: Gateway) -> None:
    async def run() -> None:
        enrolment_port, session_port = await gateway.start()
        try:
            await scenario(gateway, enrolment_port, session_port)
        finally:
            await gateway.stop()
    asyncio.run(run())


# ------------------------------------------------------------ keys, CSRs, files


def test_a_csr_carries_the_new_key_and_a_valid_signature() -> None:
    key = new_key()
    csr = x509.load_pem_x509_csr(make_csr(key, NS, DEVICE))
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject.rfc4514_string() == f"CN={device_uri(NS, DEVICE)}"


def test_the_identity_file_is_private_and_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca, files = CA(), IdentityFiles(tmp_path)
    files.prepare()
    # A temporary file left readable by a crash does not make the next one readable.
    stale = files.directory / ".identity.pem.tmp"
    stale.write_bytes(b"stale")
    stale.chmod(0o644)
    first_key = new_key()
    first = Identity(first_key, (ca.issue(first_key.public_key(), uri="spiffe://x"),))
    files.save_identity(first)
    assert stat.S_IMODE(files.identity_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    loaded = files.load_identity()
    assert loaded is not None and loaded.to_pem() == first.to_pem()
    assert not stale.exists()

    second_key = new_key()
    second = Identity(second_key, (ca.issue(second_key.public_key(), uri="spiffe://x"),))
    # A crash before the rename leaves the old identity whole.
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError, match="crash"):
        files.save_identity(second)
    monkeypatch.undo()
    loaded = files.load_identity()
    assert loaded is not None and loaded.serial == first.serial
    files.save_identity(second)
    loaded = files.load_identity()
    assert loaded is not None and loaded.serial == second.serial
    assert stat.S_IMODE(files.identity_path.stat().st_mode) == 0o600


def test_an_identity_file_whose_certificate_is_for_another_key_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ca, files = CA(), IdentityFiles(tmp_path)
    key, other = new_key(), new_key()
    mixed = Identity(key, (ca.issue(other.public_key(), uri="spiffe://x"),))
    with pytest.raises(ValueError, match="not for the private key"):
        Identity.from_pem(mixed.to_pem())
    files.prepare()
    files.identity_path.write_bytes(mixed.to_pem())
    assert files.load_identity() is None
    assert "unusable" in caplog.text


def test_the_renewal_point_is_two_thirds_into_the_lifetime_from_receipt() -> None:
    ca, key = CA(), new_key()
    certificate = ca.issue(key.public_key(), uri="spiffe://x", lifetime=timedelta(seconds=9),
                           backdated=timedelta(minutes=5))
    identity = Identity(key, (certificate,))  # received before notBefore: from notBefore
    assert identity.renew_at() == pytest.approx(
        identity.not_before + (identity.not_after - identity.not_before) * 2 / 3)
    # A backdated notBefore does not put the point of a 9 s certificate in the past.
    received = Identity(key, (certificate,), received_at=time.time())
    assert received.renew_at() == pytest.approx(time.time() + 6, abs=1.5)
    assert not received.expired(time.time())
    assert received.expired(received.not_after)


# ------------------------------------------------------------ the CA by its pin


def test_the_pinned_ca_is_found_in_a_real_grpc_servers_chain() -> None:
    ca = CA()

    async def scenario(_: Gateway, enrolment_port: int, __: int) -> None:
        address = f"127.0.0.1:{enrolment_port}"
        chain = await asyncio.to_thread(presented_chain, address)
        assert [c.subject for c in chain][1:] == [ca.cert.subject]
        found = await discover_ca(address, ca_cert_hash(ca.cert))
        assert found == ca.cert

        wrong = "sha256:" + "0" * 64
        with pytest.raises(IdentityError) as refusal:
            await discover_ca(address, wrong)
        # Both hashes named: the one given and the one the gateway presented.
        assert wrong in str(refusal.value) and ca_cert_hash(ca.cert) in str(refusal.value)
        assert not refusal.value.refused  # retried with the usual backoff

    with_gateway(scenario, Gateway(ca))


def test_a_pinned_certificate_that_did_not_issue_the_leaf_is_refused() -> None:
    gateway_ca, stranger = CA(), CA("another CA")
    key = new_key()
    leaf = gateway_ca.issue(key.public_key(), dns=GATEWAY_SERVER_NAME)
    with pytest.raises(IdentityError, match="not issued by the pinned CA"):
        ca_by_pin([leaf, stranger.cert], ca_cert_hash(stranger.cert), "gw:50052")
    assert ca_by_pin([leaf, gateway_ca.cert], ca_cert_hash(gateway_ca.cert),
                     "gw:50052") == gateway_ca.cert


# ------------------------------------------------------------ enrolment


def test_enrolment_by_pin_stores_the_identity_trust_and_signing_key(tmp_path: Path) -> None:
    ca = CA()

    async def scenario(gateway: Gateway, enrolment_port: int, _: int) -> None:
        settings = settings_for(tmp_path, ca_cert_hash=ca_cert_hash(ca.cert),
                                enrolment_address=f"127.0.0.1:{enrolment_port}")
        identity = DeviceIdentity(settings)
        assert metric("edgefleet_edge_identity_state", state="NotEnrolled") == 1
        await identity.ensure()
        ((request, metadata),) = gateway.enrolments
        assert metadata["authorization"] == f"Bearer {TOKEN}"
        assert (request.namespace, request.device, dict(request.labels)) == (NS, DEVICE, {})
        files = identity.files
        stored = files.load_identity()
        assert stored is not None and uri_names(stored.certificate) == [device_uri(NS, DEVICE)]
        assert stat.S_IMODE(files.identity_path.stat().st_mode) == 0o600
        assert files.trust_path.read_bytes() == ca.pem
        assert files.signing_path.read_bytes() == gateway.signing_raw
        assert metric("edgefleet_edge_identity_state", state="Enrolled") == 1
        assert metric("edgefleet_edge_certificate_expiry_timestamp_seconds") == stored.not_after
        await identity.ensure()  # enrolled: nothing to do
        assert len(gateway.enrolments) == 1

    with_gateway(scenario, Gateway(ca))


def test_fleet_enrolment_proposes_labels(tmp_path: Path) -> None:
    ca = CA()
    (tmp_path / "fleet").write_text("fleet-token")
    (tmp_path / "ca.pem").write_bytes(ca.pem)

    async def scenario(gateway: Gateway, enrolment_port: int, _: int) -> None:
        settings = settings_for(tmp_path, token_file=None, fleet_token_file=tmp_path / "fleet",
                                label={"site": "berlin"}, tls_ca_file=tmp_path / "ca.pem",
                                enrolment_address=f"127.0.0.1:{enrolment_port}")
        await DeviceIdentity(settings).ensure()
        ((request, metadata),) = gateway.enrolments
        assert metadata["authorization"] == "Bearer fleet-token"
        assert dict(request.labels) == {"site": "berlin"}

    with_gateway(scenario, Gateway(ca))


def test_a_signing_key_that_is_not_32_bytes_refuses_the_enrolment(tmp_path: Path) -> None:
    ca = CA()
    gateway = Gateway(ca)
    gateway.signing_key_bytes = b"\x01" * 31

    async def scenario(_: Gateway, enrolment_port: int, __: int) -> None:
        settings = settings_for(tmp_path, ca_cert_hash=ca_cert_hash(ca.cert),
                                enrolment_address=f"127.0.0.1:{enrolment_port}")
        identity = DeviceIdentity(settings)
        with pytest.raises(IdentityError, match="31 bytes, expected 32") as refusal:
            await identity.ensure()
        assert refusal.value.refused
        assert not identity.files.identity_path.exists()
        assert not identity.files.signing_path.exists()
        assert metric("edgefleet_edge_identity_state", state="Refused") == 1

    with_gateway(scenario, gateway)


# ------------------------------------------------------------ sessions


@contextlib.asynccontextmanager
async def running(settings: RunSettings) -> AsyncIterator[CloudAgent]:
    """A cloud agent of its own engine and store, its session loop running."""
    engine = Engine(threads=1)
    agent = CloudAgent(settings, engine, Store(settings.data_dir),
                       Collector(settings.data_dir / "capture", 10))
    await agent.start()
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.close()


def session_settings(tmp_path: Path, ca: CA, enrolment_port: int,
                     session_port: int) -> RunSettings:
    return settings_for(tmp_path, ca_cert_hash=ca_cert_hash(ca.cert),
                        cloud=f"127.0.0.1:{session_port}",
                        enrolment_address=f"127.0.0.1:{enrolment_port}")


def test_a_session_renews_its_certificate_without_reconnecting(tmp_path: Path) -> None:
    ca = CA()
    before = metric("edgefleet_edge_assignments_refused_total", reason="Unsigned") or 0

    async def scenario(gateway: Gateway, enrolment_port: int, session_port: int) -> None:
        async with running(session_settings(tmp_path, ca, enrolment_port,
                                            session_port)) as agent:
            await until(lambda: len(gateway.renewed) >= 1)
            renewed = format(gateway.renewed[0].serial_number, "x")
            await until(lambda: (agent.identity.current is not None
                                 and agent.identity.current.serial == renewed))
            stored = agent.identity.files.load_identity()
            assert stored is not None and stored.serial == renewed
            # The next renewal is two thirds into the new certificate, not at once.
            await asyncio.sleep(0.5)
            assert len(gateway.renewed) == 1
            assert stored.serial != gateway.connects[0]
            # The unsigned assignment was refused; the unknown kind changed nothing.
            await until(lambda: ("m", "1") in agent.models)
            refused = agent.models[("m", "1")]
            assert refused.state == pb.ModelState.FAILED
            assert refused.message.startswith("refused the assignment from the gateway: "
                                              "Unsigned")
            assert refused.digest == ""
            assert len(gateway.connects) == 1  # the same session throughout
            assert metric("edgefleet_edge_identity_state", state="Enrolled") == 1
            assert metric("edgefleet_edge_cloud_insecure") == 0

    # Renewed two thirds into 3 s: about 2 s in.
    with_gateway(scenario, Gateway(ca, lifetime=timedelta(seconds=3)))
    assert metric("edgefleet_edge_assignments_refused_total", reason="Unsigned") == before + 1


def test_a_revoked_device_says_why_retries_at_the_max_backoff_and_enrols_with_a_new_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ca = CA()
    gateway = Gateway(ca)
    gateway.connect_refusal = (grpc.StatusCode.PERMISSION_DENIED,
                               f"EdgeDevice {NS}/{DEVICE} is revoked")
    gateway.refused_enrolments = 1

    async def scenario(gateway: Gateway, enrolment_port: int, session_port: int) -> None:
        settings = session_settings(tmp_path, ca, enrolment_port, session_port).model_copy(
            update={"backoff_base_seconds": 0.01, "backoff_max_seconds": 1.0})
        async with running(settings):
            await until(lambda: len(gateway.connects) >= 2)
            started = time.monotonic()
            await until(lambda: len(gateway.connects) >= 3)
            # Jittered within [max/2, max]: never the short backoff of a link failure.
            assert time.monotonic() - started >= settings.backoff_max_seconds / 2 - 0.05 > 0.4
            assert metric("edgefleet_edge_identity_state", state="Revoked") == 1
            assert len(gateway.enrolments) == 1  # not again with the token it used
            # The admin's answer: a new bootstrap token.
            (tmp_path / "token").write_text("bootstrap-token-2")
            await until(lambda: len(gateway.enrolments) == 2)
            assert gateway.enrolments[1][1]["authorization"] == "Bearer bootstrap-token-2"
            await until(lambda: metric("edgefleet_edge_identity_state", state="Enrolled") == 1)
            assert not (tmp_path / "data" / "identity" / "token.sha256").read_text().count(
                "bootstrap-token")  # a fingerprint, never the token

    with caplog.at_level(logging.ERROR):
        with_gateway(scenario, gateway)
    assert f"EdgeDevice {NS}/{DEVICE} is revoked" in caplog.text


def test_an_unknown_certificate_enrols_again_and_a_used_token_is_named_as_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ca = CA()
    gateway = Gateway(ca)
    gateway.connect_refusal = (grpc.StatusCode.UNAUTHENTICATED, "unknown certificate serial")

    async def scenario(gateway: Gateway, enrolment_port: int, session_port: int) -> None:
        async with running(session_settings(tmp_path, ca, enrolment_port, session_port)):
            await until(lambda: len(gateway.enrolments) >= 2)
            await until(lambda: metric("edgefleet_edge_identity_state", state="Refused") == 1)
            # The refused re-enrolment left the identity it had in place.
            assert IdentityFiles(tmp_path / "data").load_identity() is not None

    with caplog.at_level(logging.ERROR):
        with_gateway(scenario, gateway)
    assert "re-enrolment needs a new bootstrap token" in caplog.text
    assert "the bootstrap token was used already" in caplog.text


def test_a_refused_re_enrolment_offers_the_still_valid_certificate_again(
    tmp_path: Path,
) -> None:
    """A gateway that forgot the device for a while (an operator just started) and so
    sent it to enrol again, which its spent token cannot: the device tries its
    certificate again, and the session comes back with it."""
    ca = CA()
    gateway = Gateway(ca)
    gateway.connect_refusal = (grpc.StatusCode.UNAUTHENTICATED, "unknown certificate serial")
    gateway.refused_enrolments = 1  # Connect accepts once the device tried to enrol again

    async def scenario(gateway: Gateway, enrolment_port: int, session_port: int) -> None:
        async with running(session_settings(tmp_path, ca, enrolment_port, session_port)):
            await until(lambda: len(gateway.enrolments) == 2 and gateway.received)
            assert gateway.connects[-1] == gateway.connects[0]  # the same certificate
            assert len(gateway.enrolments) == 2  # no loop of enrolments

    with_gateway(scenario, gateway)


# ------------------------------------------------------------ settings

PIN = "sha256:" + "a" * 64


@pytest.mark.parametrize("flags, stored, error", [
    ({}, False, "one of --tls-ca-file and --ca-cert-hash is required"),
    ({"ca_cert_hash": "sha256:ABC"}, False, "--ca-cert-hash 'sha256:ABC': expected sha256:"),
    ({"ca_cert_hash": PIN, "token_file": None}, False,
     "one of --token-file and --fleet-token-file is required to enrol"),
    ({"ca_cert_hash": PIN, "fleet_token_file": Path("f")}, False,
     "--token-file and --fleet-token-file: give one of them"),
    ({"ca_cert_hash": PIN, "label": {"site": "x"}}, False, "--label goes with --fleet-token-file"),
    ({"ca_cert_hash": PIN, "cloud": "gateway"}, False, "--cloud 'gateway': expected HOST:PORT"),
    ({"ca_cert_hash": PIN, "enrolment_address": "a b:1"}, False,
     "--enrolment-address 'a b:1': expected HOST:PORT"),
    ({"insecure_plaintext": True, "ca_cert_hash": PIN}, False,
     "--insecure-plaintext neither uses TLS nor enrols: drop --ca-cert-hash"),
    ({"insecure_plaintext": True, "token_file": None}, True,
     "--insecure-plaintext needs --token-file"),
])
def test_settings_that_cannot_work_together_are_refused_with_one_line(
    tmp_path: Path, flags: dict[str, Any], stored: bool, error: str,
) -> None:
    settings = settings_for(tmp_path, **flags)
    with pytest.raises(ValueError) as refusal:
        settings.check_cloud_link(stored)
    assert error in str(refusal.value) and "\n" not in str(refusal.value)


@pytest.mark.parametrize("flags, stored", [
    ({"ca_cert_hash": PIN}, False),
    ({"tls_ca_file": Path("ca.pem"), "token_file": None}, True),  # enrolled: no token needed
    ({"ca_cert_hash": PIN, "token_file": None, "fleet_token_file": Path("f"),
      "label": {"site": "x"}}, False),
    ({"insecure_plaintext": True}, False),
    ({"ca_cert_hash": PIN, "cloud": "[::1]:50051"}, False),
])
def test_settings_that_work(tmp_path: Path, flags: dict[str, Any], stored: bool) -> None:
    settings_for(tmp_path, **flags).check_cloud_link(stored)


def test_the_enrolment_port_defaults_to_the_gateways_host(tmp_path: Path) -> None:
    assert settings_for(tmp_path, cloud="gw.example:443").enrolment_target() == (
        "gw.example:50052")
    assert settings_for(tmp_path, cloud="[::1]:50051").enrolment_target() == "[::1]:50052"
    assert settings_for(tmp_path, enrolment_address="e:1").enrolment_target() == "e:1"


def test_the_command_exits_2_naming_the_missing_trust(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from edgefleet.edge_runtime.__main__ import main

    (tmp_path / "token").write_text(TOKEN)
    base = ["run", "--cloud", "127.0.0.1:50051", "--namespace", NS, "--device", DEVICE,
            "--data-dir", str(tmp_path / "data")]
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--token-file", str(tmp_path / "token")])
    assert exit_.value.code == 2
    assert "one of --tls-ca-file and --ca-cert-hash is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--ca-cert-hash", PIN, "--token-file", str(tmp_path / "missing")])
    assert exit_.value.code == 2
    assert "--token-file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--ca-cert-hash", PIN, "--label", "nokey"])
    assert exit_.value.code == 2
    assert "label" in capsys.readouterr().err
