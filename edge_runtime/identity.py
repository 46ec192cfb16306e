"""The device's identity: its key pair and client certificate, the CA bundle it trusts
for the gateway, and the operator's assignment-signing key it pinned at enrolment, all
kept in DATA_DIR/identity/ (identity.pem, trust.pem, signing.pub, and token.sha256, the
fingerprint of the token it enrolled with); and how it gets them: the gateway's CA found
by its pin (`--ca-cert-hash`), enrolment with a bootstrap or fleet token, renewal over
the session (the agent carries those messages).

The private key never leaves the device: enrolment and renewal send a CSR for a key
made here, and a certificate is only kept when it certifies that key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.settings import RunSettings
from edgefleet.edge_runtime.store import write_atomically
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from edgefleet.protocol.identity import (
    GATEWAY_SERVER_NAME,
    ca_cert_hash,
    device_uri,
    load_certificates,
)
from edgefleet.protocol.signing import PUBLIC_KEY_BYTES

logger = logging.getLogger(__name__)
IDENTITY_DIR = "identity"
ENROLL = "/edgefleet.v1.FleetGateway/Enroll"
ENROL_TIMEOUT_S = 30.0
DISCOVERY_TIMEOUT_S = 10.0
# Every channel to the gateway checks this name, whatever address it dials.
TARGET_OPTIONS = (("grpc.ssl_target_name_override", GATEWAY_SERVER_NAME),)


class IdentityError(Exception):
    """The device cannot get or use an identity now; the message says why, for a person.
    `refused`: the gateway (or the configuration) said no, and retrying soon cannot help."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


# ------------------------------------------------------------ keys and certificates


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, namespace: str, device: str) -> bytes:
    """A PEM CSR for the key. The gateway names the device from the enrolment itself;
    the subject only helps a person reading the CSR."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_uri(namespace, device))])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def certifies(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether the certificate is for this private key."""
    return _spki(certificate.public_key()) == _spki(key.public_key())


def uri_names(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return names.value.get_values_for_type(x509.UniformResourceIdentifier)


def _pem(certificates: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@dataclass(frozen=True)
class Identity:
    """A private key and the certificate chain issued for it (leaf first), and when the
    device received it (Unix time; identity.pem's mtime after a restart)."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    received_at: float = 0.0

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> float:
        return self.certificate.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    def lifetime(self) -> float:
        """Seconds from notBefore, or from when it was received if that is later, to
        notAfter: issuers backdate notBefore for clock skew (minutes), which would put
        the renewal point of a short-lived certificate in the past at once, and renew
        it again and again."""
        return self.not_after - min(max(self.not_before, self.received_at), self.not_after)

    def renew_at(self) -> float:
        """Unix time two thirds into the certificate's lifetime."""
        return self.not_after - self.lifetime() / 3

    def expired(self, now: float) -> bool:
        return now >= self.not_after

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def chain_pem(self) -> bytes:
        return _pem(self.chain)

    def to_pem(self) -> bytes:
        return self.key_pem() + self.chain_pem()

    @classmethod
    def from_pem(cls, data: bytes, received_at: float = 0.0) -> Identity:
        """Raises ValueError for a file that is not one EC key and a certificate for it."""
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"the private key is {type(key).__name__}, expected ECDSA")
        chain = tuple(load_certificates(data))
        if not certifies(chain[0], key):
            raise ValueError("the certificate is not for the private key")
        return cls(key, chain, received_at)


# ------------------------------------------------------------ files


def write_private(path: Path, data: bytes) -> None:
    """Atomically, and never readable by anyone else."""
    write_atomically(path, data, mode=0o600)


class IdentityFiles:
    """DATA_DIR/identity/ (0700): identity.pem (key + chain), trust.pem, signing.pub and
    token.sha256, each written atomically, 0600."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / IDENTITY_DIR
        self.identity_path = self.directory / "identity.pem"
        self.trust_path = self.directory / "trust.pem"
        self.signing_path = self.directory / "signing.pub"
        # sha256 of the token the identity was enrolled with (never the token itself).
        self.token_fingerprint_path = self.directory / "token.sha256"

    def prepare(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # mkdir's mode yields to the umask

    def load_identity(self) -> Identity | None:
        """The stored identity; None when there is none or it is unusable (then logged:
        the device enrols again and the new identity replaces the file)."""
        try:
            with open(self.identity_path, "rb") as file:
                return Identity.from_pem(file.read(), os.fstat(file.fileno()).st_mtime)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.error("identity file %s is unusable (%s); the device enrols again",
                         self.identity_path, error)
            return None

    def save_identity(self, identity: Identity) -> None:
        self.prepare()
        write_private(self.identity_path, identity.to_pem())

    def load_trust(self) -> bytes | None:
        try:
            data = self.trust_path.read_bytes()
            load_certificates(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.error("trust bundle %s is unusable (%s); ignoring it", self.trust_path,
                         error)
            return None
        return data

    def save_trust(self, pem: bytes) -> bool:
        """Stores the bundle; False when it was already the one stored."""
        if self.load_trust() == pem:
            return False
        self.prepare()
        write_private(self.trust_path, pem)
        return True

    def load_signing_key(self) -> bytes | None:
        try:
            raw = self.signing_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            logger.error("signing key %s is unreadable: %s", self.signing_path, error.strerror)
            return None
        if len(raw) != PUBLIC_KEY_BYTES:
            logger.error("signing key %s holds %d bytes, expected %d; no assignment verifies",
                         self.signing_path, len(raw), PUBLIC_KEY_BYTES)
            return None
        return raw

    def save_signing_key(self, raw: bytes) -> None:
        self.prepare()
        write_private(self.signing_path, raw)


def fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def identity_stored(data_dir: Path) -> bool:
    return IdentityFiles(data_dir).identity_path.is_file()


# ------------------------------------------------------------ the gateway's CA by pin


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) as (host, port); raises ValueError."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def presented_chain(address: str, timeout: float = DISCOVERY_TIMEOUT_S) -> list[x509.Certificate]:
    """The certificates the TLS server at `address` presents, unverified (blocking).
    Only a pin makes them trustworthy: see ca_by_pin."""
    host, port = split_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # a gRPC server refuses a handshake without it
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=GATEWAY_SERVER_NAME) as tls:
        # Python 3.13 made this public (DER bytes); before, only the C object has it
        # (certificate objects).
        chain = (tls.get_unverified_chain() if hasattr(tls, "get_unverified_chain")
                 else tls._sslobj.get_unverified_chain())  # type: ignore[union-attr]
    certificates = []
    for entry in chain or []:
        if isinstance(entry, bytes):
            certificates.append(x509.load_der_x509_certificate(entry))
        else:
            pem = entry.public_bytes()
            certificates.append(x509.load_pem_x509_certificate(
                pem.encode() if isinstance(pem, str) else pem))
    return certificates


def ca_by_pin(chain: list[x509.Certificate], pin: str, address: str) -> x509.Certificate:
    """The certificate of the chain whose public key hash is the pin, once the leaf is
    checked to be issued by it; raises IdentityError naming what was presented."""
    if not chain:
        raise IdentityError(f"the gateway at {address} presented no certificate")
    presented = [(ca_cert_hash(c), c) for c in chain]
    matching = [c for digest, c in presented if digest == pin]
    if not matching:
        seen = ", ".join(f"{digest} ({c.subject.rfc4514_string()})" for digest, c in presented)
        raise IdentityError(f"--ca-cert-hash {pin} matches no certificate the gateway at "
                            f"{address} presented: it presented {seen}")
    ca = matching[0]
    try:
        chain[0].verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise IdentityError(f"the gateway at {address} presented a certificate "
                            f"({chain[0].subject.rfc4514_string()}) not issued by the pinned "
                            f"CA {pin}: {error or type(error).__name__}") from None
    return ca


async def discover_ca(address: str, pin: str) -> x509.Certificate:
    chain = await asyncio.to_thread(presented_chain, address)
    return ca_by_pin(chain, pin, address)


# ------------------------------------------------------------ enrolment


@dataclass(frozen=True)
class Enrolment:
    identity: Identity
    trust_bundle: bytes
    signing_key: bytes


def enrolment_answer(response: pb.EnrollResponse, key: ec.EllipticCurvePrivateKey,
                     namespace: str, device: str, trust_used: bytes) -> Enrolment:
    """What the gateway's answer gives the device; raises IdentityError for an answer it
    must not keep."""
    try:
        chain = tuple(load_certificates(response.certificate.certificate))
    except ValueError as error:
        raise IdentityError(f"the gateway's enrolment answer holds no certificate: {error}"
                            ) from None
    if not certifies(chain[0], key):
        raise IdentityError("the gateway's enrolment answer certifies another key than the "
                            "CSR's")
    uri = device_uri(namespace, device)
    if uri_names(chain[0]) != [uri]:
        raise IdentityError(f"the gateway's certificate names {uri_names(chain[0])}, "
                            f"expected [{uri!r}]")
    signing_key = response.signing_public_key
    if len(signing_key) != PUBLIC_KEY_BYTES:
        raise IdentityError(f"the gateway's signing key is {len(signing_key)} bytes, expected "
                            f"{PUBLIC_KEY_BYTES}: refusing the enrolment", refused=True)
    trust = response.certificate.trust_bundle or trust_used
    try:
        load_certificates(trust)
    except ValueError as error:
        raise IdentityError(f"the gateway's trust bundle is unusable: {error}") from None
    return Enrolment(Identity(key, chain, time.time()), trust, signing_key)


async def call_enroll(target: str, trust: bytes, token: str,
                      request: pb.EnrollRequest) -> pb.EnrollResponse:
    """One Enroll call; a refusal (the token) raises IdentityError(refused=True), the
    link's failures grpc.aio.AioRpcError."""
    credentials = grpc.ssl_channel_credentials(trust)
    async with grpc.aio.secure_channel(target, credentials, options=TARGET_OPTIONS) as channel:
        enroll = channel.unary_unary(ENROLL, request_serializer=pb.EnrollRequest.SerializeToString,
                                     response_deserializer=pb.EnrollResponse.FromString)
        try:
            response: pb.EnrollResponse = await enroll(
                request, metadata=(("authorization", f"Bearer {token}"),),
                timeout=ENROL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.PERMISSION_DENIED,
                                grpc.StatusCode.UNAUTHENTICATED):
                raise IdentityError(f"the gateway refused the enrolment: "
                                    f"{error.code().name}: {error.details()}",
                                    refused=True) from None
            raise
    return response


# ------------------------------------------------------------ what the agent uses


class DeviceIdentity:
    """The agent's view of identity: credentials for a session, enrolment when there is
    none (or it expired, or the gateway forgot it), renewal requests and their answers.
    Keeps the identity metrics."""

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.files = IdentityFiles(settings.data_dir)
        self.current = self.files.load_identity()
        self.signing_key = self.files.load_signing_key()
        # Why to enrol again though the certificate is still valid (the gateway's answer).
        self.enrol_because: str | None = None
        self.renewed = asyncio.Event()
        self._pending: ec.EllipticCurvePrivateKey | None = None  # the key being renewed
        self._set_metrics()

    def _set_metrics(self) -> None:
        telemetry.set_identity_state("Enrolled" if self.current else "NotEnrolled")
        telemetry.CERTIFICATE_EXPIRY.set(self.current.not_after if self.current else 0)

    def new_token_in_place(self) -> bool:
        """Whether the enrolment token file now holds another token than the one the
        stored identity was enrolled with: an admin's answer to a revocation."""
        try:
            token, _ = self._token()
            enrolled_with = self.files.token_fingerprint_path.read_text().strip()
        except (IdentityError, OSError):
            return False
        return fingerprint(token) != enrolled_with

    def _token(self) -> tuple[str, bool]:
        """The enrolment token, and whether it is a fleet token; re-read each time, so
        that a new one can be put in place while the runtime runs."""
        fleet = self.settings.fleet_token_file is not None
        path = self.settings.fleet_token_file or self.settings.token_file
        if path is None:
            raise IdentityError("enrolment needs a bootstrap token: none was given "
                                "(--token-file or --fleet-token-file)", refused=True)
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise IdentityError(f"cannot read the enrolment token {path}: {error.strerror}",
                                refused=True) from None
        if not token or any(c.isspace() for c in token):
            raise IdentityError(f"{path}: holds no token (one line without spaces)",
                                refused=True)
        return token, fleet

    async def trust(self) -> bytes:
        """The CA bundle to check the gateway with: the one the gateway sent, else
        --tls-ca-file, else the CA found by the pin (then stored)."""
        stored = await asyncio.to_thread(self.files.load_trust)
        if stored:
            return stored
        if self.settings.tls_ca_file:
            try:
                return await asyncio.to_thread(self.settings.tls_ca_file.read_bytes)
            except OSError as error:
                raise IdentityError(f"--tls-ca-file {self.settings.tls_ca_file}: "
                                    f"{error.strerror}") from None
        pin = self.settings.ca_cert_hash
        if pin is None:  # the settings check makes this unreachable
            raise IdentityError("no trust for the gateway: --tls-ca-file or --ca-cert-hash",
                                refused=True)
        address = self.settings.enrolment_target()
        ca = await discover_ca(address, pin)
        pem = _pem([ca])
        await asyncio.to_thread(self.files.save_trust, pem)
        logger.info("found the gateway's CA by its pin: address=%s ca=%s subject=%s", address,
                    pin, ca.subject.rfc4514_string())
        return pem

    def needs_enrolment(self, now: float) -> bool:
        return (self.current is None or self.enrol_because is not None
                or self.current.expired(now))

    async def ensure(self) -> None:
        """Enrols when needed; raises IdentityError or grpc.aio.AioRpcError (the link)."""
        if not self.needs_enrolment(time.time()):
            return
        again = self.current is not None
        why = ("no identity yet" if not again else
               self.enrol_because if self.enrol_because else
               "the certificate expired")
        try:
            await self._enrol(why)
        except IdentityError as error:
            if error.refused:
                telemetry.set_identity_state("Refused")
                if self.current is not None:
                    if not self.current.expired(time.time()):
                        # The certificate is still good: the next attempt offers it
                        # again (the gateway may have forgotten it only for a while).
                        self.enrol_because = None
                    raise IdentityError(f"re-enrolment needs a new bootstrap token ({why}): "
                                        f"{error}", refused=True) from None
            raise

    async def _enrol(self, why: str) -> None:
        token, fleet = self._token()
        trust = await self.trust()
        key = new_key()
        settings = self.settings
        request = pb.EnrollRequest(namespace=settings.namespace, device=settings.device,
                                   csr=make_csr(key, settings.namespace, settings.device),
                                   labels=settings.label if fleet else {})
        target = settings.enrolment_target()
        logger.info("enrolling device=%s/%s address=%s reason=%r enrolment=%s",
                    settings.namespace, settings.device, target, why,
                    "FleetToken" if fleet else "BootstrapToken")
        response = await call_enroll(target, trust, token, request)
        enrolment = enrolment_answer(response, key, settings.namespace, settings.device, trust)
        # identity.pem last: its presence says the device enrolled.
        await asyncio.to_thread(self.files.save_trust, enrolment.trust_bundle)
        await asyncio.to_thread(self.files.save_signing_key, enrolment.signing_key)
        await asyncio.to_thread(write_private, self.files.token_fingerprint_path,
                                fingerprint(token).encode())
        await asyncio.to_thread(self.files.save_identity, enrolment.identity)
        self.current, self.signing_key = enrolment.identity, enrolment.signing_key
        self.enrol_because, self._pending = None, None
        self._set_metrics()
        logger.info("enrolled device=%s/%s serial=%s not_after=%s",
                    settings.namespace, settings.device, enrolment.identity.serial,
                    enrolment.identity.certificate.not_valid_after_utc.isoformat())

    async def credentials(self) -> grpc.ChannelCredentials:
        """Mutual TLS with the stored identity; ensure() first."""
        if self.current is None:
            raise IdentityError("no identity to connect with")
        return grpc.ssl_channel_credentials(await self.trust(), self.current.key_pem(),
                                            self.current.chain_pem())

    # ------------------------------------------------------------ renewal

    def renewal_request(self) -> pb.CertificateRequest:
        """A CSR for a new key; the same key until an answer comes, so that a late
        answer to an earlier request still fits."""
        if self._pending is None:
            self._pending = new_key()
        self.renewed.clear()
        return pb.CertificateRequest(
            csr=make_csr(self._pending, self.settings.namespace, self.settings.device))

    def retry_delay(self) -> float:
        """How long to wait for the answer to a renewal before asking again."""
        lifetime = self.current.lifetime() if self.current else 0
        # At least a second: the gateway answers one renewal a second per session.
        return max(1.0, min(lifetime / 20, self.settings.backoff_max_seconds))

    async def accept(self, issued: pb.IssuedCertificate) -> None:
        """A CloudMessage.certificate: a trust bundle to keep, a renewed certificate to
        keep when it certifies the key being renewed. What does not fit is logged and
        left alone: the session goes on either way."""
        if issued.trust_bundle:
            try:
                load_certificates(issued.trust_bundle)
            except ValueError as error:
                logger.error("ignoring the gateway's trust bundle: %s", error)
            else:
                if await asyncio.to_thread(self.files.save_trust, issued.trust_bundle):
                    logger.info("stored the gateway's trust bundle in %s", self.files.trust_path)
        if not issued.certificate:
            return
        try:
            chain = tuple(load_certificates(issued.certificate))
        except ValueError as error:
            logger.error("ignoring a certificate from the gateway: %s", error)
            return
        uri = device_uri(self.settings.namespace, self.settings.device)
        if self._pending is None or not certifies(chain[0], self._pending):
            logger.warning("ignoring a certificate from the gateway for no key being renewed "
                           "(serial %x)", chain[0].serial_number)
            return
        if uri_names(chain[0]) != [uri]:
            logger.error("ignoring a renewed certificate naming %s, expected %s",
                         uri_names(chain[0]), uri)
            return
        identity = Identity(self._pending, chain, time.time())
        await asyncio.to_thread(self.files.save_identity, identity)
        self.current, self._pending = identity, None
        self._set_metrics()
        self.renewed.set()
        logger.info("renewed the certificate device=%s/%s serial=%s not_after=%s",
                    self.settings.namespace, self.settings.device, identity.serial,
                    identity.certificate.not_valid_after_utc.isoformat())
