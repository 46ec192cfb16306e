"""Status loops wake on their own keys only."""

from __future__ import annotations

import asyncio

from edgefleet.operator.fleet import FleetChanges, model_key


def test_a_notification_wakes_the_waiters_of_its_key_and_no_other() -> None:
    async def scenario() -> tuple[bool, bool]:
        changes = FleetChanges()
        digits_loop = asyncio.ensure_future(changes.wait(
            changes.generations([model_key("fleet", "digits")]), timeout=None))
        faces_loop = asyncio.ensure_future(changes.wait(
            changes.generations([model_key("fleet", "faces")]), timeout=None))
        await asyncio.sleep(0)
        changes.notify(model_key("fleet", "faces"))  # a report of a device only it selects
        await asyncio.sleep(0.01)
        woke = (digits_loop.done(), faces_loop.done())
        digits_loop.cancel()
        return woke

    assert asyncio.run(scenario()) == (False, True)


def test_a_change_made_before_waiting_returns_at_once() -> None:
    async def scenario() -> None:
        changes = FleetChanges()
        seen = changes.generations([model_key("fleet", "digits")])
        changes.notify(model_key("fleet", "digits"))
        await asyncio.wait_for(changes.wait(seen, timeout=None), timeout=5)

    asyncio.run(scenario())


def test_waiting_ends_at_the_timeout_without_a_change() -> None:
    async def scenario() -> None:
        changes = FleetChanges()
        await changes.wait(changes.generations([model_key("fleet", "digits")]), timeout=0.01)

    asyncio.run(scenario())
