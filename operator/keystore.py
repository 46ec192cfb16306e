"""Where the gateway's CA and the assignment signing key live: two Secrets in the
operator's own namespace, created on first start when absent (or supplied by the admin,
or by cert-manager for the CA), and read again every `refresh_s` so that a rotated CA
takes effect without a restart. Helm never owns them, so upgrades keep them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from edgefleet.operator import metrics, pki
from edgefleet.operator.kubeapi import API_ERRORS
from edgefleet.operator.pki import CertificateAuthority

logger = logging.getLogger(__name__)


def _decoded(secret: client.V1Secret, keys: tuple[str, ...]) -> dict[str, bytes]:
    data = secret.data or {}
    missing = [key for key in keys if not data.get(key)]
    if missing:
        raise ValueError(f"Secret {secret.metadata.namespace}/{secret.metadata.name} has no "
                         f"{', '.join(missing)}")
    return {key: base64.b64decode(data[key]) for key in keys}


class Keystore:
    """The CA, the gateway's serving certificate made from it, and the signing key."""

    def __init__(self, core: client.CoreV1Api, namespace: str, ca_secret: str,
                 signing_secret: str, dns_names: list[str]) -> None:
        self._core = core
        self._namespace = namespace
        self._ca_secret = ca_secret
        self._signing_secret = signing_secret
        self._dns_names = dns_names
        self._ca_data: dict[str, bytes] = {}
        self.ca: CertificateAuthority
        self.signing_key: Ed25519PrivateKey
        self.signing_public_key = b""
        self.fingerprint_secret = b""
        # The serving configuration, replaced whole; gRPC's handshakes read it from
        # their own threads (see server_credentials).
        self._serving: tuple[int, grpc.ServerCertificateConfiguration] | None = None
        self._serving_not_after = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    async def _read_or_create(self, name: str, keys: tuple[str, ...],
                              make: Callable[[], dict[str, bytes]], kind: str) -> dict[str, bytes]:
        try:
            secret = await asyncio.to_thread(self._core.read_namespaced_secret, name,
                                             self._namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = client.V1Secret(
                metadata=client.V1ObjectMeta(name=name, labels={
                    "app.kubernetes.io/managed-by": "edgefleet-operator"}),
                type=kind, data={k: base64.b64encode(v).decode() for k, v in make().items()})
            try:
                secret = await asyncio.to_thread(self._core.create_namespaced_secret,
                                                 self._namespace, body)
                logger.info("created Secret %s/%s", self._namespace, name)
            except ApiException as create_error:
                if create_error.status != 409:  # another replica made it first
                    raise
                secret = await asyncio.to_thread(self._core.read_namespaced_secret, name,
                                                 self._namespace)
        return _decoded(secret, keys)

    async def load(self) -> None:
        """Reads (or creates) both Secrets; raises ValueError for one that is unusable."""
        def new_ca() -> dict[str, bytes]:
            certificate, key = pki.new_ca(datetime.now(UTC))
            return {"tls.crt": certificate, "tls.key": key, "ca.crt": certificate}

        signing = await self._read_or_create(
            self._signing_secret, (pki.SIGNING_SECRET_KEY,),
            lambda: {pki.SIGNING_SECRET_KEY: pki.new_signing_key()}, "Opaque")
        self.signing_key = pki.load_signing_key(signing[pki.SIGNING_SECRET_KEY])
        self.signing_public_key = pki.public_key_bytes(self.signing_key)
        self.fingerprint_secret = signing[pki.SIGNING_SECRET_KEY]
        self._use_ca(await self._read_or_create(self._ca_secret, pki.CA_SECRET_KEYS, new_ca,
                                                "kubernetes.io/tls"))
        logger.info("gateway CA from Secret %s/%s ca-cert-hash=%s (devices: --ca-cert-hash %s)",
                    self._namespace, self._ca_secret, self.ca.pin, self.ca.pin)

    def _use_ca(self, data: dict[str, bytes]) -> None:
        try:
            ca = CertificateAuthority(data["tls.crt"], data["tls.key"], data["ca.crt"])
        except ValueError as error:
            raise ValueError(f"Secret {self._namespace}/{self._ca_secret}: {error}") from None
        self.ca, self._ca_data = ca, data
        self._renew_serving()
        metrics.GATEWAY_CA_EXPIRY.set(ca.certificate.not_valid_after_utc.timestamp())

    def _renew_serving(self) -> None:
        key, chain, not_after = self.ca.issue_server(self._dns_names)
        config = grpc.ssl_server_certificate_configuration([(key, chain)],
                                                           root_certificates=self.ca.bundle_pem)
        with self._lock:
            version = self._serving[0] + 1 if self._serving else 1
            self._serving = (version, config)
        self._serving_not_after = not_after

    async def refresh(self) -> bool:
        """Reads the CA Secret again; True when the CA or its bundle changed (the new
        one serves from the next handshake on). Renews the serving certificate when a
        third of its life is left. A Secret that turned unusable keeps the last good CA."""
        now = datetime.now(UTC)
        if self._serving_not_after - now < pki.SERVER_VALIDITY / 3:
            self._renew_serving()
        try:
            secret = await asyncio.to_thread(self._core.read_namespaced_secret,
                                             self._ca_secret, self._namespace)
            data = _decoded(secret, pki.CA_SECRET_KEYS)
            if data == self._ca_data:
                return False
            self._use_ca(data)
        except (*API_ERRORS, ValueError) as error:
            logger.error("gateway CA unchanged: cannot use Secret %s/%s: %s", self._namespace,
                         self._ca_secret, error)
            return False
        logger.info("gateway CA changed: ca-cert-hash=%s, trusted %s", self.ca.pin,
                    " ".join(self.ca.pins))
        return True

    def server_credentials(self, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials whose certificate and trusted CAs follow the Keystore: gRPC asks
        the fetcher at every handshake, from its own thread."""
        assert self._serving is not None
        served = self._serving[0]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            with self._lock:
                assert self._serving is not None
                version, config = self._serving
            if version == served:
                return None
            served = version
            return config

        return grpc.dynamic_ssl_server_credentials(
            self._serving[1], fetch, require_client_authentication=require_client_auth)
