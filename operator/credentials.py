"""Device tokens, as the gateway checks them: a watch-backed cache of the sha256 of the
`token` key of each Secret in the namespaces the operator serves (kopf's watch, so the
operator's `--namespaces` bound it like every other watch), and the fleet enrolment
policies: Secrets labelled `edgefleet.io/fleet-enrolment: "true"`, whose token lets a
device with no EdgeDevice yet register itself (keys `allowed-label-keys`, comma-separated,
and `auto-approve`, "true" or not).

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
import re
from dataclasses import dataclass
from typing import Any

import kopf

from edgefleet.operator.resources import GROUP, LABEL_KEY_PATTERN

logger = logging.getLogger(__name__)
TOKEN_KEY = "token"
FLEET_ENROLMENT_LABEL = f"{GROUP}/fleet-enrolment"
ALLOWED_LABEL_KEYS = "allowed-label-keys"
AUTO_APPROVE = "auto-approve"


@dataclass(frozen=True)
class FleetPolicy:
    """A fleet enrolment Secret: which proposed labels a new device keeps, and whether
    it serves models without an admin's approval."""

    secret: str
    allowed_label_keys: frozenset[str]
    auto_approve: bool


class CredentialStore:
    """(namespace, Secret name) -> sha256 of the Secret's `token` value."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], bytes] = {}
        self._fleet: dict[tuple[str, str], FleetPolicy] = {}
        # Compared against when no Secret is known, so that both answers take as long.
        self._absent = hashlib.sha256(os.urandom(32)).digest()

    def remember(self, namespace: str, name: str, token: bytes) -> None:
        self._digests[(namespace, name)] = hashlib.sha256(token).digest()

    def forget(self, namespace: str, name: str) -> None:
        self._digests.pop((namespace, name), None)
        self._fleet.pop((namespace, name), None)

    def remember_fleet(self, namespace: str, policy: FleetPolicy) -> None:
        self._fleet[(namespace, policy.secret)] = policy

    def fleet_policy(self, namespace: str, token: str) -> FleetPolicy | None:
        """The fleet enrolment policy of the namespace whose token this is, if any."""
        found = None
        for (policy_namespace, secret), policy in list(self._fleet.items()):
            # Every policy is compared, so the time taken tells nothing.
            if self.verify(namespace, secret, token) and policy_namespace == namespace:
                found = policy
        return found

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


async def secret_changed(type: str | None, namespace: str, name: str, body: kopf.Body,
                   memo: kopf.Memo, **_: Any) -> None:
    store: CredentialStore = memo.credentials
    token = None if type == "DELETED" else secret_token(body.get("data"))
    store.forget(namespace, name)
    if token:
        store.remember(namespace, name, token)
        labels = body.get("metadata", {}).get("labels") or {}
        if labels.get(FLEET_ENROLMENT_LABEL) == "true":
            store.remember_fleet(namespace, fleet_policy(name, body.get("data")))


def fleet_policy(name: str, data: Any) -> FleetPolicy:
    """The policy of a fleet enrolment Secret; label keys that are not label keys are
    left out (and logged)."""
    def text(key: str) -> str:
        value = (data or {}).get(key)
        try:
            return base64.b64decode(value, validate=True).decode() if isinstance(
                value, str) else ""
        except (binascii.Error, ValueError):
            return ""

    keys = {key.strip() for key in text(ALLOWED_LABEL_KEYS).split(",") if key.strip()}
    valid = {key for key in keys if len(key) <= 317 and re.fullmatch(LABEL_KEY_PATTERN, key)}
    if keys - valid:
        logger.warning("fleet enrolment Secret %s: %s are not label keys; left out", name,
                       sorted(k[:80] for k in keys - valid))
    return FleetPolicy(name, frozenset(valid), text(AUTO_APPROVE).strip() == "true")
