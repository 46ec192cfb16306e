"""Publisher signatures as `cosign sign-blob --key` makes them: keys and signatures are
made here with `cryptography` exactly as cosign does (ECDSA P-256, SHA-256 of the blob,
ASN.1 DER, standard base64; the public key as a PEM SubjectPublicKeyInfo). Then the
operator's use of them: the key read from a Secret, each verification done once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from types import SimpleNamespace

import kopf
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils
from kubernetes.client.exceptions import ApiException

from edgefleet.operator import handlers, signatures
from edgefleet.operator.artifact_sources import SourcePolicy
from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.operator.resources import ArtifactSource, SecretKeyRef
from edgefleet.operator.signatures import SignatureError

BLOB = b"\x08\x07" + bytes(range(256)) * 64  # stands in for an ONNX file


def public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
               | ed25519.Ed25519PrivateKey) -> bytes:
    """cosign.pub as `cosign generate-key-pair` writes it."""
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def cosign_sign_blob(key: ec.EllipticCurvePrivateKey, blob: bytes) -> str:
    """What `cosign sign-blob --key cosign.key FILE` prints: base64 of the DER signature
    of the file's SHA-256 (sigstore's ECDSASigner: ecdsa.SignASN1 of the digest)."""
    return base64.b64encode(key.sign(blob, ec.ECDSA(hashes.SHA256()))).decode() + "\n"


@pytest.fixture
def publisher() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(BLOB)
    return path


def verify(pem: bytes, signature: str, path: Path) -> None:
    signatures.verify_file(signatures.load_public_key(pem), signature, path)


def test_a_cosign_signature_of_the_artifact_verifies(
    publisher: ec.EllipticCurvePrivateKey, artifact: Path,
) -> None:
    signature = cosign_sign_blob(publisher, BLOB)
    # The fixture really is cosign's format: DER (r, s) over SHA-256, nothing else.
    r, s = utils.decode_dss_signature(base64.b64decode(signature))
    assert r > 0 and s > 0
    verify(public_pem(publisher), signature, artifact)


def test_a_large_file_is_hashed_in_chunks_and_verifies(
    publisher: ec.EllipticCurvePrivateKey, tmp_path: Path,
) -> None:
    content = BLOB * 300  # about 5 MiB: several chunks, the last one partial
    assert len(content) > 4 * signatures.CHUNK_BYTES
    path = tmp_path / "large.onnx"
    path.write_bytes(content)
    verify(public_pem(publisher), cosign_sign_blob(publisher, content), path)


def test_a_tampered_artifact_does_not_verify(
    publisher: ec.EllipticCurvePrivateKey, artifact: Path,
) -> None:
    signature = cosign_sign_blob(publisher, BLOB)
    artifact.write_bytes(BLOB[:-1] + b"\x00")
    with pytest.raises(SignatureError, match=r"^does not verify with the key$"):
        verify(public_pem(publisher), signature, artifact)


def test_a_signature_by_another_key_does_not_verify(
    publisher: ec.EllipticCurvePrivateKey, artifact: Path,
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureError, match=r"does not verify"):
        verify(public_pem(publisher), cosign_sign_blob(other, BLOB), artifact)


@pytest.mark.parametrize("signature", ["not base64!", "YWJjZ", "QUJD\nRA=="])
def test_a_signature_that_is_not_base64_is_refused(
    publisher: ec.EllipticCurvePrivateKey, artifact: Path, signature: str,
) -> None:
    with pytest.raises(SignatureError, match=r"^is not base64$"):
        verify(public_pem(publisher), signature, artifact)


def test_a_raw_r_s_signature_is_refused_as_not_cosigns_format(
    publisher: ec.EllipticCurvePrivateKey, artifact: Path,
) -> None:
    r, s = utils.decode_dss_signature(base64.b64decode(cosign_sign_blob(publisher, BLOB)))
    raw = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
    with pytest.raises(SignatureError, match=r"not an ECDSA signature in ASN.1 DER"):
        verify(public_pem(publisher), raw, artifact)


def test_an_rsa_key_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignatureError, match=r"^is an RSA key; only ECDSA P-256"):
        signatures.load_public_key(public_pem(key))


def test_other_curves_and_ed25519_are_refused() -> None:
    with pytest.raises(SignatureError, match=r"^is an ECDSA key on secp384r1; only P-256"):
        signatures.load_public_key(public_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(SignatureError, match=r"^is an Ed25519 key"):
        signatures.load_public_key(public_pem(ed25519.Ed25519PrivateKey.generate()))


def test_a_private_key_or_garbage_is_not_a_public_key_and_is_never_echoed(
    publisher: ec.EllipticCurvePrivateKey,
) -> None:
    private = publisher.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    for pem in (private, b"hello", b""):
        with pytest.raises(SignatureError) as caught:
            signatures.load_public_key(pem)
        assert str(caught.value) == "is not a PEM public key (BEGIN PUBLIC KEY)"
    with pytest.raises(SignatureError, match=r"more than any public key"):
        signatures.load_public_key(b"x" * (signatures.MAX_KEY_BYTES + 1))


def test_the_fingerprint_names_the_key_not_its_pem_text(
    publisher: ec.EllipticCurvePrivateKey,
) -> None:
    pem = public_pem(publisher)
    same = signatures.load_public_key(pem.replace(b"\n", b"\r\n"))
    assert signatures.key_fingerprint(signatures.load_public_key(pem)) == (
        signatures.key_fingerprint(same))
    other = signatures.load_public_key(public_pem(ec.generate_private_key(ec.SECP256R1())))
    assert signatures.key_fingerprint(other) != signatures.key_fingerprint(same)



# ---------------------------------------------------------------- the operator's use


class FakeSecrets:
    """Stands in for CoreV1Api: one Secret per name, data as the API returns it."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}

    def put(self, name: str, **values: bytes) -> None:
        self.data[name] = {k: base64.b64encode(v).decode() for k, v in values.items()}

    def read_namespaced_secret(self, name: str, namespace: str) -> SimpleNamespace:
        if name not in self.data:
            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(data=self.data[name])


def test_the_operator_verifies_each_digest_signature_and_key_once(
    publisher: ec.EllipticCurvePrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    roots = tmp_path / "published"
    roots.mkdir()
    (roots / "model.onnx").write_bytes(BLOB)
    cache = ArtifactCache(tmp_path / "cache", 2**30, 2**20, SourcePolicy(file_roots=(roots,)))
    secrets = FakeSecrets()
    warnings: list[tuple[str, str]] = []
    monkeypatch.setattr(handlers.kopf, "warn",
                        lambda _body, reason, message: warnings.append((reason, message)))
    verified: list[Path] = []
    real_verify = signatures.verify_file

    def counting_verify(key: ec.EllipticCurvePublicKey, signature: str, path: Path) -> None:
        verified.append(path)
        real_verify(key, signature, path)

    monkeypatch.setattr(signatures, "verify_file", counting_verify)
    retry = handlers.ArtifactRetry(cache, kopf.Body({}), "tenant", secrets)  # type: ignore[arg-type]
    source = ArtifactSource(uri=(roots / "model.onnx").as_uri(),
                            sha256=hashlib.sha256(BLOB).hexdigest(),
                            signature=cosign_sign_blob(publisher, BLOB).strip(),
                            public_key_ref=SecretKeyRef(name="publisher"))

    missing = asyncio.run(retry.check(source))
    assert (missing.ready, missing.reason) == (False, "SignatureInvalid")
    assert missing.message == ("Secret publisher (spec.source.publicKeyRef) does not exist in "
                               "the model's namespace")
    assert warnings == [("ArtifactSignatureInvalid", missing.message)]

    secrets.put("publisher", **{"cosign.pub": public_pem(publisher)})
    monkeypatch.setattr(retry, "_retry_at", 0.0)  # the backoff has passed
    for _ in range(3):
        check = asyncio.run(retry.check(source))
        assert check.ready and check.reason == "Verified", check
    assert len(verified) == 1  # hashed once, not at every reconcile

    # Another key in the Secret (a rotation): verified again, and refused.
    secrets.put("publisher", **{"cosign.pub": public_pem(ec.generate_private_key(
        ec.SECP256R1()))})
    check = asyncio.run(retry.check(source))
    assert (check.ready, check.reason) == (False, "SignatureInvalid") and len(verified) == 2
    assert warnings[-1] == ("ArtifactSignatureInvalid", check.message)
