"""The start-up barrier in place of kopf's own: the same answers, and work linear in
the objects listed (kopf's own is quadratic, shown here too, so the count can fail)."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from edgefleet.operator import kopf_toggles
from edgefleet.operator.kopf_toggles import CountingToggleSet


def test_all_and_any_sets_answer_as_kopfs_do() -> None:
    async def run() -> None:
        every, some = CountingToggleSet(all), CountingToggleSet(any)
        assert every.is_on() and not some.is_on()  # all() and any() of nothing
        a = await every.make_toggle(name="a")
        b = await some.make_toggle(True, name="b")
        assert not every.is_on() and some.is_on()
        await a.turn_to(True)
        await b.turn_to(False)
        assert every.is_on() and not some.is_on()
        await a.turn_to(False)
        assert not every.is_on()
        await every.drop_toggle(a)
        await some.drop_toggles([b])
        assert every.is_on() and not some.is_on() and len(every) == len(some) == 0
        # A waiter wakes when the set turns, by a new toggle or one turning on.
        c = await some.make_toggle(name="c")
        waiter = asyncio.create_task(some.wait_for(True))
        await asyncio.sleep(0)
        assert not waiter.done()
        await c.turn_to(True)
        await asyncio.wait_for(waiter, 1)

    asyncio.run(run())


def checks_to_take_in(toggle_set: type[aiotoggles.ToggleSet], objects: int) -> int:
    """How often the set's state is computed while `objects` are taken in as kopf does
    at start-up: each gets a toggle as it is listed, its worker drops the toggle once
    indexed and waits for the whole set; a blocker held until the listing ends."""
    checks = 0

    class Counting(toggle_set):  # type: ignore[misc, valid-type]
        def is_on(self) -> bool:
            nonlocal checks
            checks += 1
            return bool(super().is_on())

    async def worker(toggles: aiotoggles.ToggleSet, toggle: aiotoggles.Toggle) -> None:
        await toggles.drop_toggle(toggle)
        await toggles.wait_for(True)

    async def run() -> None:
        toggles = Counting(all)
        blocker = await toggles.make_toggle(name="listing")
        workers = []
        for i in range(objects):  # one listed object after another, the loop idle between
            toggle = await toggles.make_toggle(name=str(i))
            workers.append(asyncio.create_task(worker(toggles, toggle)))
            for _ in range(3):
                await asyncio.sleep(0)
        await toggles.drop_toggle(blocker)
        await asyncio.wait_for(asyncio.gather(*workers), 60)

    asyncio.run(run())
    return checks


def test_taking_in_n_objects_costs_work_linear_in_n() -> None:
    kopfs, ours = (checks_to_take_in(cls, 400) for cls in (kopf_toggles._KopfToggleSet,
                                                          CountingToggleSet))
    print(f"\nstate checks to take in 400 objects: kopf's {kopfs}, counted {ours}")
    assert kopfs > 400 * 400 / 4  # quadratic
    assert ours < 400 * 10  # linear: a few per object


def test_install_puts_the_counting_set_in_kopfs_place() -> None:
    assert kopf_toggles.install()
    assert aiotoggles.ToggleSet is CountingToggleSet
    assert kopf_toggles.install()  # twice is once
