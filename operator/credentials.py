"""Device tokens, as the gateway checks them: a watch-backed cache of the sha256 of the
`token` key of each Secret in the namespaces the operator serves (kopf's watch, so the
operator's `--namespaces` bound it like every other watch).

Checking a token never calls the API server, so a stranger's guesses cost nothing but
a hash; the cache never holds a token itself, and the comparison takes the same time
whether the Secret exists or not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from typing import Any

import kopf

logger = logging.getLogger(__name__)
TOKEN_KEY = "token"


class CredentialStore:
    """(namespace, Secret name) -> sha256 of the Secret's `token` value."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], bytes] = {}
        # Compared against when no Secret is known, so that both answers take as long.
        self._absent = hashlib.sha256(os.urandom(32)).digest()

    def remember(self, namespace: str, name: str, token: bytes) -> None:
        self._digests[(namespace, name)] = hashlib.sha256(token).digest()

    def forget(self, namespace: str, name: str) -> None:
        self._digests.pop((namespace, name), None)

    def verify(self, namespace: str, secret_name: str, token: str) -> bool:
        """Whether `token` is the Secret's; False for a Secret not known or empty."""
        expected = self._digests.get((namespace, secret_name))
        offered = hashlib.sha256(token.encode()).digest()
        matches = hmac.compare_digest(expected or self._absent, offered)
        return matches and expected is not None and bool(token)

    def __len__(self) -> int:
        return len(self._digests)


def secret_token(data: Any) -> bytes | None:
    """The decoded `token` of a Secret's data; None when there is none or it is not
    base64 (the API server never stores such a value, but a watch is input too)."""
    value = (data or {}).get(TOKEN_KEY)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


@kopf.on.event("", "v1", "secrets")
def secret_changed(type: str | None, namespace: str, name: str, body: kopf.Body,
                   memo: kopf.Memo, **_: Any) -> None:
    store: CredentialStore = memo.credentials
    token = None if type == "DELETED" else secret_token(body.get("data"))
    if token:
        store.remember(namespace, name, token)
    else:
        store.forget(namespace, name)
