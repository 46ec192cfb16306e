"""Pure rules of Lease-based leader election (the scheme of client-go's leaderelection).

A standby judges a lease expired by its own monotonic clock: it remembers when it last
saw the lease record change and waits a full lease duration from then, so clock skew
between replicas never lets two of them lead at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    duration_s: float
    # Changes on every renewal; any opaque token of the record's identity works.
    resource_version: str


def may_acquire(
    record: LeaseRecord | None,
    me: str,
    observed_at: float,
    now: float,
) -> bool:
    """Whether `me` may take (or keep) the lease given the record last seen changing at
    monotonic time `observed_at`."""
    if record is None or not record.holder or record.holder == me:
        return True
    return now - observed_at > record.duration_s
