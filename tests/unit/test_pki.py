"""The gateway CA's certificates, the CSRs it signs, the assignment signatures and the
names a certificate carries: pure functions, real cryptography."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.operator import pki
from edgefleet.operator.gateway.policy import GatewayLimits, Refusal, enrolment_labels
from edgefleet.protocol import identity, signing
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def make_ca() -> pki.CertificateAuthority:
    certificate, key = pki.new_ca(NOW)
    return pki.CertificateAuthority(certificate, key, certificate)


def csr_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
            *, uri: str = "spiffe://edgefleet/ns/other/device/victim",
            dns: str = "edgefleet-gateway") -> bytes:
    builder = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.UniformResourceIdentifier(uri), x509.DNSName(dns)]), critical=False))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def test_a_device_certificate_names_only_its_device_whatever_the_csr_asks() -> None:
    ca = make_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue_device(pki.parse_csr(csr_for(key)), "fleet", "cam-1",
                             timedelta(seconds=90), NOW)
    certificate = x509.load_pem_x509_certificate(issued.pem)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://edgefleet/ns/fleet/device/cam-1"]
    assert san.get_values_for_type(x509.DNSName) == []  # it can never pass as the gateway
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certificate.public_key() == key.public_key()
    assert issued.serial == format(certificate.serial_number, "x")
    assert issued.not_after - NOW == timedelta(seconds=90)
    certificate.verify_directly_issued_by(ca.certificate)


def test_the_serving_certificate_carries_the_fixed_name_and_the_ca_in_its_chain() -> None:
    ca = make_ca()
    _, chain, _ = ca.issue_server(["gateway.example"], NOW)
    leaf, carried = x509.load_pem_x509_certificates(chain)
    names = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == [identity.GATEWAY_SERVER_NAME, "gateway.example"]
    assert carried == ca.certificate
    assert identity.ca_cert_hash(carried) == ca.pin


@pytest.mark.parametrize("make_key, problem", [
    (lambda: rsa.generate_private_key(65537, 2048), "RSAPublicKey"),
    (lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
])
def test_keys_the_ca_does_not_sign_for_are_refused(make_key: object, problem: str) -> None:
    with pytest.raises(pki.CsrError, match=problem):
        pki.parse_csr(csr_for(make_key()))  # type: ignore[operator]


def test_malformed_oversized_and_forged_csrs_are_refused() -> None:
    with pytest.raises(pki.CsrError, match="empty"):
        pki.parse_csr(b"")
    with pytest.raises(pki.CsrError, match="at most"):
        pki.parse_csr(b"x" * (pki.MAX_CSR_BYTES + 1))
    with pytest.raises(pki.CsrError, match="not a PEM"):
        pki.parse_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                      b"-----END CERTIFICATE REQUEST-----\n")
    # A CSR whose signature is not its key's: one byte of the signature changed.
    der = bytearray(x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
                    .public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.CsrError, match="does not verify"):
        pki.parse_csr(forged)
    assert pki.parse_csr(csr_for(ed25519.Ed25519PrivateKey.generate()))


def test_a_ca_secret_that_does_not_hang_together_is_refused() -> None:
    certificate, key = pki.new_ca(NOW)
    other_certificate, other_key = pki.new_ca(NOW)
    with pytest.raises(ValueError, match=r"not the key of tls\.crt"):
        pki.CertificateAuthority(certificate, other_key, certificate)
    with pytest.raises(ValueError, match="must hold the issuing CA"):
        pki.CertificateAuthority(certificate, key, other_certificate)
    with pytest.raises(ValueError, match="does not parse"):
        pki.CertificateAuthority(b"junk", key, certificate)
    rotating = pki.CertificateAuthority(certificate, key, other_certificate + certificate)
    assert rotating.pins == [identity.ca_cert_hash(x509.load_pem_x509_certificate(c))
                             for c in (other_certificate, certificate)]


def test_token_fingerprints_differ_by_token_device_and_secret() -> None:
    base = pki.token_fingerprint(b"k", "ns", "cam-1", "t")
    assert base == pki.token_fingerprint(b"k", "ns", "cam-1", "t")
    assert len({base, pki.token_fingerprint(b"k", "ns", "cam-1", "u"),
                pki.token_fingerprint(b"k", "ns", "cam-2", "t"),
                pki.token_fingerprint(b"j", "ns", "cam-1", "t")}) == 4


def test_an_assignment_verifies_only_for_its_device_revision_and_fields() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    public = pki.public_key_bytes(key)
    assignment = pb.ModelAssignment(name="digits", version="1", digest="sha256:" + "a" * 64,
                                    size_bytes=10, weight=100)
    assignment.signature = signing.sign(key, "ns", "cam-1", "r1", assignment)
    assert signing.verify(public, "ns", "cam-1", "r1", assignment)
    assert not signing.verify(public, "ns", "cam-2", "r1", assignment)
    assert not signing.verify(public, "ns", "cam-1", "r2", assignment)
    tampered = pb.ModelAssignment()
    tampered.CopyFrom(assignment)
    tampered.digest = "sha256:" + "b" * 64
    assert not signing.verify(public, "ns", "cam-1", "r1", tampered)
    tampered.CopyFrom(assignment)
    tampered.runtime.max_batch_size = 64
    assert not signing.verify(public, "ns", "cam-1", "r1", tampered)
    tampered.CopyFrom(assignment)  # a data collection policy slipped in (or changed)
    tampered.data_collection.sample_rate = 1.0
    assert not signing.verify(public, "ns", "cam-1", "r1", tampered)
    unsigned = pb.ModelAssignment()
    unsigned.CopyFrom(assignment)
    unsigned.ClearField("signature")
    assert not signing.verify(public, "ns", "cam-1", "r1", unsigned)
    other = pki.public_key_bytes(ed25519.Ed25519PrivateKey.generate())
    assert not signing.verify(other, "ns", "cam-1", "r1", assignment)
    assert not signing.verify(public[:31], "ns", "cam-1", "r1", assignment)


@pytest.mark.parametrize("uri, expected", [
    ("spiffe://edgefleet/ns/fleet/device/cam-1", ("fleet", "cam-1")),
    ("spiffe://edgefleet/ns/fleet/device/cam.site-7", ("fleet", "cam.site-7")),
    ("spiffe://edgefleet/ns/fleet/device/../cam-1", None),
    ("spiffe://edgefleet/ns/Fleet/device/cam-1", None),
    ("spiffe://other/ns/fleet/device/cam-1", None),
    ("spiffe://edgefleet/ns/fleet/device/cam-1/extra", None),
    ("spiffe://edgefleet/ns/fleet/device/", None),
])
def test_only_well_formed_device_uris_name_a_device(uri: str,
                                                    expected: tuple[str, str] | None) -> None:
    assert identity.parse_device_uri(uri) == expected


def test_fleet_enrolment_keeps_allowed_labels_and_refuses_malformed_ones() -> None:
    limits = GatewayLimits()
    allowed = frozenset({"site", "model"})
    assert enrolment_labels({"site": "plant-7", "role": "admin"}, allowed, limits) == {
        "site": "plant-7"}
    with pytest.raises(Refusal, match="not a label value"):
        enrolment_labels({"site": "a b"}, allowed, limits)
    with pytest.raises(Refusal, match="not a label key"):
        enrolment_labels({"-bad": "x"}, allowed, limits)
    with pytest.raises(Refusal, match="at most"):
        enrolment_labels({f"k{i}": "v" for i in range(limits.max_proposed_labels + 1)},
                         allowed, limits)
