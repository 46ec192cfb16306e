"""Who may connect and what each device should serve, as the device status loops
derive it (handlers.py), for the gateway's sessions to push. In memory only: rebuilt
from the watches on every start, like everything else the operator knows.

Several gateway replicas may serve one fleet, each with a view of its own that the
watches bring up to date a little after the API server: a certificate another replica
issued may arrive before the EdgeDevice that records it (DeviceAccess.not_before tells
such a certificate from a superseded one)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from edgefleet.operator.gateway.policy import TokenBucket
from edgefleet.operator.planner import Assignment, revision
from edgefleet.operator.resources import Capabilities


@dataclass(frozen=True)
class DeviceAccess:
    """What the EdgeDevice says about who may act as the device."""

    serial: str = ""  # status.identity.serial: the one certificate accepted ("" none)
    token_fingerprint: str = ""  # the token already used to enrol
    revoked: bool = False  # spec.revoked
    certificate_revoked: bool = False  # status.identity.state Revoked, for this serial
    # status.identity.notBefore (aware, UTC): when the accepted certificate was issued.
    not_before: datetime | None = None

    @property
    def refused(self) -> bool:
        return self.revoked or self.certificate_revoked

    def issued_later(self, not_before: datetime) -> bool:
        """Whether a certificate issued at `not_before` is newer than the one accepted: one
        from an enrolment or renewal at another replica that this view has not seen yet."""
        return self.not_before is not None and not_before > self.not_before


@dataclass
class DeviceEntry:
    namespace: str
    name: str
    secret_name: str
    access: DeviceAccess = field(default_factory=DeviceAccess)
    # Once the gateway has issued a certificate, its own record of the serial is newer
    # than any EdgeDevice the watch may still deliver, unless that one records a
    # certificate issued later (at another replica).
    issued_here: bool = False
    # A certificate renewed over an open connection stays good on that connection
    # (its peer address) only: (the old serial, the peer).
    renewed_from: tuple[str, str] | None = None
    assignments: list[Assignment] = field(default_factory=list)
    revision: str = ""
    # The capabilities the assignments were derived for (variants follow them), and an
    # Event set whenever they change.
    capabilities: Capabilities | None = None
    rederived: asyncio.Event = field(default_factory=asyncio.Event)
    # Set whenever the desired state changes or the device goes away.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    session: object | None = None
    removed: bool = False
    uid: str = ""  # from the status writes, for the Events that name the device
    # status.conditions as last watched: a new session goes on from them.
    conditions: list[dict[str, Any]] = field(default_factory=list)
    # status.data as last watched: a new session's uploads add to it.
    data: list[dict[str, Any]] = field(default_factory=list)
    # The allowance of status writes: kept across sessions, so that a device that
    # reconnects in a loop is written at a bounded rate.
    status_writes: TokenBucket | None = None


class DeviceDirectory:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], DeviceEntry] = {}

    def get(self, namespace: str, name: str) -> DeviceEntry | None:
        return self._entries.get((namespace, name))

    def publish(self, namespace: str, name: str, secret_name: str,
                assignments: list[Assignment], access: DeviceAccess | None = None,
                capabilities: Capabilities | None = None) -> DeviceEntry:
        entry = self._entries.setdefault((namespace, name),
                                         DeviceEntry(namespace, name, secret_name))
        entry.secret_name = secret_name
        if access is not None:
            if entry.issued_here and access.not_before is not None and (
                    entry.access.issued_later(access.not_before)):
                entry.issued_here = False  # another replica issued one since
            if entry.issued_here:
                access = replace(
                    access, serial=entry.access.serial,
                    token_fingerprint=entry.access.token_fingerprint,
                    not_before=entry.access.not_before,
                    certificate_revoked=(access.certificate_revoked
                                         and access.serial == entry.access.serial))
            if access.refused and not entry.access.refused:
                entry.changed.set()  # its session ends now
            entry.access = access
        if capabilities != entry.capabilities:
            entry.capabilities = capabilities
            entry.rederived.set()
        new_revision = revision(assignments)
        if new_revision != entry.revision:
            entry.assignments, entry.revision = assignments, new_revision
            entry.changed.set()
        return entry

    def issued(self, entry: DeviceEntry, serial: str, token_fingerprint: str,
               not_before: datetime | None = None) -> None:
        """The gateway issued the device a certificate: from now on only it is accepted."""
        entry.access = replace(entry.access, serial=serial,
                               token_fingerprint=token_fingerprint, certificate_revoked=False,
                               not_before=not_before)
        entry.issued_here = True
        entry.changed.set()

    def remove(self, namespace: str, name: str) -> None:
        entry = self._entries.pop((namespace, name), None)
        if entry:
            entry.removed = True
            entry.changed.set()

    def sessions(self) -> list[object]:
        return [entry.session for entry in self._entries.values() if entry.session is not None]

    def claim(self, entry: DeviceEntry, session: object) -> bool:
        """One session per device: a second connection is refused while one is open."""
        if entry.session is not None:
            return False
        entry.session = session
        return True

    def release(self, entry: DeviceEntry, session: object) -> None:
        if entry.session is session:
            entry.session = None
