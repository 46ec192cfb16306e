from __future__ import annotations

from edgefleet.operator.leader_policy import LeaseRecord, may_acquire


def test_free_or_own_lease_may_be_taken() -> None:
    assert may_acquire(None, "me", observed_at=0, now=0)
    assert may_acquire(LeaseRecord(None, 15, "1"), "me", observed_at=0, now=0)
    assert may_acquire(LeaseRecord("me", 15, "1"), "me", observed_at=0, now=0)


def test_others_lease_is_respected_until_unchanged_for_a_full_duration() -> None:
    held = LeaseRecord("other", 15, "7")
    assert not may_acquire(held, "me", observed_at=100, now=114)
    assert not may_acquire(held, "me", observed_at=100, now=115)
    assert may_acquire(held, "me", observed_at=100, now=115.1)
