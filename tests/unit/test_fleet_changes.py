"""Status loops wake on their own keys only."""

from __future__ import annotations

import asyncio

from edgefleet.operator.fleet import FleetChanges, device_key, model_key


def test_a_notification_wakes_the_waiters_of_its_key_and_no_other() -> None:
    async def scenario() -> tuple[bool, bool]:
        changes = FleetChanges()
        model_loop = asyncio.ensure_future(changes.wait(
            changes.generations([model_key("fleet", "digits")]), timeout=None))
        device_loop = asyncio.ensure_future(changes.wait(
            changes.generations([device_key("fleet", "cam-1")]), timeout=None))
        await asyncio.sleep(0)
        changes.notify(device_key("fleet", "cam-1"))  # a heartbeat
        await asyncio.sleep(0.01)
        woke = (model_loop.done(), device_loop.done())
        model_loop.cancel()
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
