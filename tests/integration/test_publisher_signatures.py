"""Publisher signatures against a real API server and operator process: a model whose
`spec.source.signature` verifies with the publisher's key (a Secret in the model's
namespace) is ready; any other is `ArtifactReady=False`, reason `SignatureInvalid`, with
a Warning Event, and nothing is sent to devices until it is fixed. Keys and signatures
are made as `cosign generate-key-pair` and `cosign sign-blob --key` make them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import testmodels
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubernetes import client

from tests.conftest import Kube, StartOperator
from tests.helpers import eventually
from tests.integration.test_artifact_security import artifact_condition, refused
from tests.integration.test_edge_cloud_link import edge_model, publish

pytestmark = pytest.mark.integration


def cosign_pub(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def cosign_sign_blob(key: ec.EllipticCurvePrivateKey, blob: bytes) -> str:
    return base64.b64encode(key.sign(blob, ec.ECDSA(hashes.SHA256()))).decode()


def key_secret(kube: Kube, namespace: str, name: str, data: dict[str, bytes]) -> None:
    kube.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        data={key: base64.b64encode(value).decode() for key, value in data.items()}))


def signed_model(name: str, uri: str, sha: str, signature: str, secret: str,
                 key: str | None = None) -> dict[str, Any]:
    body = edge_model(name, "1", uri, sha, site="plant-7")
    body["spec"]["source"]["signature"] = signature
    body["spec"]["source"]["publicKeyRef"] = {"name": secret, **({"key": key} if key else {})}
    return body


def ready(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return eventually(lambda: artifact_condition(kube, namespace, name, "True"), timeout=60,
                      what=f"{name}: ArtifactReady=True")


def test_only_artifacts_signed_with_the_publishers_key_are_sent_and_a_fix_recovers(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    operator = start_operator()
    publisher = ec.generate_private_key(ec.SECP256R1())
    key_secret(kube, namespace, "publisher", {"cosign.pub": cosign_pub(publisher)})
    kube.create("edgedevices", namespace, {
        "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
        "metadata": {"name": "cam-1", "labels": {"site": "plant-7"}}, "spec": {}})
    content = testmodels.scaled(2.0)
    uri, sha = publish(tmp_path, content)
    good = cosign_sign_blob(publisher, content)

    kube.create("edgemodels", namespace, signed_model("signed", uri, sha, good, "publisher"))
    condition = ready(kube, namespace, "signed")
    assert condition["reason"] == "Verified"
    assert "signed with key 'cosign.pub' of Secret publisher" in condition["message"]

    # Signed by another key: refused before anything is sent to the device.
    forged = cosign_sign_blob(ec.generate_private_key(ec.SECP256R1()), content)
    kube.create("edgemodels", namespace, signed_model("forged", uri, sha, forged, "publisher"))
    message = refused(kube, namespace, "forged", "SignatureInvalid")
    assert message == ("spec.source.signature does not verify with the key (key 'cosign.pub' "
                       "of Secret publisher (spec.source.publicKeyRef))")
    status = kube.get("edgemodels", namespace, "forged")["status"]
    (ready_condition,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready_condition["reason"] == "ArtifactNotReady"
    assert ready_condition["message"].startswith("nothing is sent to devices")
    assert status["phase"] == "Pending" and "stableArtifact" not in status
    assert (operator.metric("edgefleet_operator_artifact_failures_total",
                            reason="SignatureInvalid") or 0) >= 1

    # Fixing the signature recovers at once (a new spec starts afresh, no backoff).
    kube.patch("edgemodels", namespace, "forged", {"spec": {"source": {"signature": good}}})
    ready(kube, namespace, "forged")


def test_missing_and_wrong_keys_are_named_and_a_secret_created_later_is_found(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    operator = start_operator()
    publisher = ec.generate_private_key(ec.SECP256R1())
    content = testmodels.scaled(3.0)
    uri, sha = publish(tmp_path, content)
    good = cosign_sign_blob(publisher, content)
    rsa_pem = cosign_pub(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    key_secret(kube, namespace, "rsa", {"cosign.pub": rsa_pem})
    key_secret(kube, namespace, "other-key", {"cosign.pub": cosign_pub(publisher)})

    kube.create("edgemodels", namespace, signed_model("late", uri, sha, good, "late-key"))
    kube.create("edgemodels", namespace, signed_model("rsa", uri, sha, good, "rsa"))
    kube.create("edgemodels", namespace,
                signed_model("wrong-name", uri, sha, good, "other-key", key="release.pub"))
    assert refused(kube, namespace, "late", "SignatureInvalid") == (
        "Secret late-key (spec.source.publicKeyRef) does not exist in the model's namespace")
    assert refused(kube, namespace, "rsa", "SignatureInvalid") == (
        "key 'cosign.pub' of Secret rsa (spec.source.publicKeyRef) is an RSA key; only "
        "ECDSA P-256 keys (cosign's default) are accepted")
    assert refused(kube, namespace, "wrong-name", "SignatureInvalid") == (
        "Secret other-key (spec.source.publicKeyRef) has no key 'release.pub'")

    # The Secret may come after the model: the retry (with backoff) finds it.
    key_secret(kube, namespace, "late-key", {"cosign.pub": cosign_pub(publisher)})
    ready(kube, namespace, "late")

    # spec.experiment.source is checked alike, and its Event says which source.
    body = signed_model("ab", uri, sha, good, "other-key")
    forged = cosign_sign_blob(ec.generate_private_key(ec.SECP256R1()), content)
    body["spec"]["experiment"] = {"version": "2", "weight": 10, "source": {
        "uri": uri, "sha256": sha, "signature": forged, "publicKeyRef": {"name": "late-key"}}}
    kube.create("edgemodels", namespace, body)
    ready(kube, namespace, "ab")
    events = eventually(lambda: [e for e in kube.events(namespace, "ab")
                                 if e.reason == "ArtifactSignatureInvalid"],
                        what="ab: an ArtifactSignatureInvalid Event")
    assert events[0].type == "Warning"
    assert events[0].message.startswith("spec.experiment.source.signature does not verify")
    # No key material in what the operator said.
    said = operator.log() + "".join(e.message or "" for e in kube.core.list_namespaced_event(
        namespace).items)
    assert b"BEGIN PUBLIC KEY" not in said.encode()
    assert rsa_pem.decode().splitlines()[1] not in said
