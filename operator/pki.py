"""The gateway's certificate authority and the operator's assignment signing key:
pure functions over keys and certificates (no I/O, no Kubernetes; keystore.py stores
them in Secrets).

The CA signs two kinds of certificate: the gateway's own serving certificate (DNS name
`edgefleet-gateway`, serverAuth) and one client certificate per device, whose only name
is the device's URI (`spiffe://edgefleet/ns/NS/device/NAME`, clientAuth, no DNS name,
so that no device can present its certificate as the gateway's).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.protocol.identity import GATEWAY_SERVER_NAME, ca_cert_hash, device_uri

# A CSR is a few hundred bytes; anything much larger is not one of ours.
MAX_CSR_BYTES = 8 * 1024
CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=90)
# Certificates start a little in the past, for devices whose clocks lag.
CLOCK_SKEW = timedelta(minutes=5)
CA_SECRET_KEYS = ("tls.crt", "tls.key", "ca.crt")  # cert-manager's layout of a CA
SIGNING_SECRET_KEY = "signing.key"
PEM = serialization.Encoding.PEM
NO_ENCRYPTION = serialization.NoEncryption()


class CsrError(ValueError):
    """A certificate signing request the CA will not sign, and why."""


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_ca(now: datetime) -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name("EdgeFleet gateway CA")
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256()))
    return certificate.public_bytes(PEM), _pem_key(key)


def new_signing_key() -> bytes:
    return _pem_key(ed25519.Ed25519PrivateKey.generate())


def load_signing_key(pem: bytes) -> ed25519.Ed25519PrivateKey:
    """The Ed25519 key of the signing Secret; raises ValueError for anything else."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"not a PEM private key: {error}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"an Ed25519 key is needed, not {type(key).__name__}")
    return key


def public_key_bytes(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class IssuedCertificate:
    pem: bytes
    serial: str  # lower-case hex, as status.identity.serial holds it
    not_before: datetime
    not_after: datetime


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


class CertificateAuthority:
    """The issuing CA (`tls.crt`, `tls.key`) and the trust bundle (`ca.crt`: the CA
    certificates the gateway and devices trust; old and new ones while the CA rotates)."""

    def __init__(self, certificate_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> None:
        try:
            self.certificate = x509.load_pem_x509_certificate(certificate_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
            bundle = x509.load_pem_x509_certificates(bundle_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            raise ValueError(f"the CA does not parse: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError(f"tls.key: an ECDSA or Ed25519 key is needed, not "
                             f"{type(key).__name__}")
        if key.public_key() != self.certificate.public_key():
            raise ValueError("tls.key is not the key of tls.crt")
        if self.certificate not in bundle:
            raise ValueError("ca.crt must hold the issuing CA certificate tls.crt")
        self._key = key
        self.bundle_pem = b"".join(c.public_bytes(PEM) for c in bundle)
        self.pins = [ca_cert_hash(c) for c in bundle]

    @property
    def pin(self) -> str:
        """The issuing CA's `sha256:<hex>`, for devices' --ca-cert-hash."""
        return ca_cert_hash(self.certificate)

    def _hash(self) -> hashes.SHA256 | None:
        return None if isinstance(self._key, ed25519.Ed25519PrivateKey) else hashes.SHA256()

    def _builder(self, subject: x509.Name, public_key: object, now: datetime,
                 validity: timedelta) -> x509.CertificateBuilder:
        not_after = min(now + validity, self.certificate.not_valid_after_utc)
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(self.certificate.subject).public_key(public_key)  # type: ignore[arg-type]
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.certificate.public_key()), critical=False))  # type: ignore[arg-type]

    def issue_device(self, csr: x509.CertificateSigningRequest, namespace: str, name: str,
                     validity: timedelta, now: datetime | None = None) -> IssuedCertificate:
        """A client certificate for the CSR's key naming exactly this device: whatever
        the CSR asks for, only its public key is used."""
        now = now or datetime.now(UTC)
        certificate = (
            self._builder(_name(f"edgefleet device {namespace}/{name}"), csr.public_key(),
                          now, validity)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(device_uri(namespace, name))]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self._key, self._hash()))  # type: ignore[arg-type]
        return IssuedCertificate(certificate.public_bytes(PEM), serial_hex(certificate),
                                 certificate.not_valid_before_utc,
                                 certificate.not_valid_after_utc)

    def issue_server(self, dns_names: list[str],
                     now: datetime | None = None) -> tuple[bytes, bytes, datetime]:
        """The gateway's serving certificate: (private key PEM, chain PEM of the
        certificate and the issuing CA, not-after). The CA travels in the chain so that
        a device holding only a pin can find it (--ca-cert-hash)."""
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        names = [GATEWAY_SERVER_NAME, *(n for n in dns_names if n != GATEWAY_SERVER_NAME)]
        certificate = (
            self._builder(_name(GATEWAY_SERVER_NAME), key.public_key(), now, SERVER_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self._key, self._hash()))  # type: ignore[arg-type]
        chain = certificate.public_bytes(PEM) + self.certificate.public_bytes(PEM)
        return _pem_key(key), chain, certificate.not_valid_after_utc


def parse_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """A CSR the CA may sign: PEM, at most MAX_CSR_BYTES, self-signature valid, an ECDSA
    P-256/P-384 or Ed25519 key. Raises CsrError saying what is wrong."""
    if not pem:
        raise CsrError("csr: empty")
    if len(pem) > MAX_CSR_BYTES:
        raise CsrError(f"csr: {len(pem)} bytes, at most {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(pem)
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CsrError(f"csr: not a PEM certificate signing request ({error})") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CsrError(f"csr: curve {key.curve.name}; P-256 or P-384 is needed")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrError(f"csr: a {type(key).__name__}; an ECDSA P-256 or Ed25519 key is needed")
    if not csr.is_signature_valid:
        raise CsrError("csr: its signature does not verify with its own key")
    return csr


def token_fingerprint(secret: bytes, namespace: str, name: str, token: str) -> str:
    """What status.identity keeps of the token a device enrolled with: an HMAC keyed by
    the operator's secret, so that a tenant reading the status cannot test guesses."""
    message = f"{namespace}/{name}/{token}".encode()
    return hmac.new(hashlib.sha256(b"edgefleet token fingerprint" + secret).digest(),
                    message, hashlib.sha256).hexdigest()
