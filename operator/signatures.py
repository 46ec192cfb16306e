"""Publisher signatures of model artifacts, as `cosign sign-blob --key` makes them.

cosign's default key is ECDSA on P-256: `cosign.pub` is a PEM "PUBLIC KEY"
(SubjectPublicKeyInfo), and `sign-blob` prints the standard base64 of an ASN.1 DER
ECDSA signature over the SHA-256 of the blob's bytes. This module parses both and
verifies a file against them; anything else (another curve, RSA, Ed25519, a raw r||s
signature) is refused with a reason, never accepted on a guess.

Files may be gigabytes: they are hashed in chunks and the digest is verified as
prehashed, so memory stays bounded. Reading is blocking; callers on an event loop run
`verify_file` in a thread. Nothing here talks to Kubernetes: the operator reads the key
from its Secret and reports the outcome (handlers.ArtifactRetry).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, utils

CHUNK_BYTES = 1 << 20
# Far above a P-256 key in PEM (178 bytes) or any certificate chain; bounds the parse.
MAX_KEY_BYTES = 64 * 1024
_OTHER_KEYS = ((rsa.RSAPublicKey, "an RSA key"), (ed25519.Ed25519PublicKey, "an Ed25519 key"),
               (ed448.Ed448PublicKey, "an Ed448 key"), (dsa.DSAPublicKey, "a DSA key"))


class SignatureError(ValueError):
    """Why a key or signature is not accepted, as a predicate of it ("is not base64"),
    so that callers say which Secret or field it is about. Never holds key bytes."""


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key in `pem` (as `cosign generate-key-pair` writes
    cosign.pub); SignatureError for anything else."""
    if len(pem) > MAX_KEY_BYTES:
        raise SignatureError(f"is {len(pem)} bytes long, more than any public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignatureError("is not a PEM public key (BEGIN PUBLIC KEY)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = next((text for cls, text in _OTHER_KEYS if isinstance(key, cls)),
                    "another kind of key")
        raise SignatureError(f"is {kind}; only ECDSA P-256 keys (cosign's default) are "
                             "accepted")
    if not isinstance(key.curve, ec.SECP256R1):
        raise SignatureError(f"is an ECDSA key on {key.curve.name}; only P-256 "
                             "(secp256r1) keys are accepted")
    return key


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the key's SubjectPublicKeyInfo, hex: names the key, not its PEM text."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def decode_signature(text: str) -> bytes:
    """The DER signature inside cosign's base64 output (surrounding whitespace, such as
    the newline cosign prints, is ignored); SignatureError if it is neither."""
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("is not base64") from None
    try:
        utils.decode_dss_signature(signature)
    except ValueError:
        raise SignatureError("is not an ECDSA signature in ASN.1 DER, as cosign sign-blob "
                             "writes") from None
    return signature


def file_sha256(path: Path) -> bytes:
    """The SHA-256 of a file's bytes, read in chunks."""
    hasher = hashlib.sha256()
    with path.open("rb") as blob:
        while chunk := blob.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.digest()


def verify_digest(key: ec.EllipticCurvePublicKey, signature: bytes, digest: bytes) -> None:
    """SignatureError unless `signature` (DER) signs the SHA-256 `digest` with `key`."""
    try:
        key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise SignatureError("does not verify with the key") from None


def verify_file(key: ec.EllipticCurvePublicKey, signature: str, path: Path) -> None:
    """SignatureError unless the base64 `signature` signs the file's bytes with `key`.
    Blocking: hashes the whole file. OSError if it cannot be read."""
    decoded = decode_signature(signature)
    verify_digest(key, decoded, file_sha256(path))
