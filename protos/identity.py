"""Device identity as both sides read it: the SPIFFE-style URI a device certificate
names its EdgeDevice with, the gateway's fixed TLS server name, and the pin of a CA
(kubeadm's `--discovery-token-ca-cert-hash`: sha256 of the CA's SubjectPublicKeyInfo).
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

TRUST_DOMAIN = "edgefleet"
# The name the gateway's certificate carries and devices check, whatever address they
# dial (a NAT, a load balancer): what proves the gateway is the pinned CA's signature.
# Device certificates carry no DNS name, so none of them can stand in for the gateway.
GATEWAY_SERVER_NAME = "edgefleet-gateway"
CA_CERT_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"
_CA_CERT_HASH = re.compile(CA_CERT_HASH_PATTERN)
# A namespace is a DNS label; an EdgeDevice's name a DNS subdomain.
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_DEVICE_URI = re.compile(rf"spiffe://{TRUST_DOMAIN}/ns/(?P<ns>{_LABEL})/device/(?P<name>{_SUBDOMAIN})")
MAX_NAME = 253


def device_uri(namespace: str, name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/device/{name}"


def parse_device_uri(uri: str) -> tuple[str, str] | None:
    """(namespace, name) of a device URI; None for anything else."""
    match = _DEVICE_URI.fullmatch(uri)
    if match is None or len(match["name"]) > MAX_NAME:
        return None
    return match["ns"], match["name"]


def is_device_name(name: str) -> bool:
    return len(name) <= MAX_NAME and re.fullmatch(_SUBDOMAIN, name) is not None


def is_namespace(name: str) -> bool:
    return re.fullmatch(_LABEL, name) is not None


def ca_cert_hash(certificate: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (DER), as kubeadm prints."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def is_ca_cert_hash(value: str) -> bool:
    return _CA_CERT_HASH.fullmatch(value) is not None


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; raises ValueError for none or a bad one."""
    certificates = x509.load_pem_x509_certificates(pem)
    if not certificates:
        raise ValueError("no PEM certificate")
    return certificates
