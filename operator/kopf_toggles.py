"""kopf's start-up barrier, in time linear in the objects listed.

Before kopf runs any non-index handler, every object of every indexed kind must be
indexed: kopf gives each listed object a toggle in one ToggleSet, and each object's
worker waits until the whole set is on. In kopf 1.45 every toggle added or dropped
notifies every waiting worker through one asyncio.Condition, and each woken worker scans
the set again: O(N^2) wake-ups for N objects and up to O(N^3) scanning. Measured with
the fleet benchmark (benchmarks/fleet_scale.py), the operator took 4.3 s to take in 500
EdgeDevices, 29.5 s for 2,000 and 222 s for 5,000, at a full core; a restart pays it
again.

`install()` swaps in a ToggleSet that counts its toggles that are on and wakes its
waiters only when the set's own state flips: the same semantics, O(1) per toggle. It
replaces kopf's class only where that class still looks as described (the attributes
and methods used here); otherwise it leaves kopf as it is and says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger(__name__)

_KopfToggleSet = aiotoggles.ToggleSet


class CountedToggle(aiotoggles.Toggle):
    """A toggle of a CountingToggleSet: turning it keeps its set's count."""

    def __init__(self, state: bool, *, name: str | None, condition: asyncio.Condition,
                 owner: CountingToggleSet) -> None:
        super().__init__(state, name=name, condition=condition)
        self._owner = owner

    async def turn_to(self, __state: bool) -> None:
        state = bool(__state)
        if state != self.is_on():
            await self._owner._update(lambda: self._set(state))
        await super().turn_to(state)  # wakes whoever waits for this toggle alone

    def _set(self, state: bool) -> None:
        if self in self._owner:
            self._owner._on += 1 if state else -1
        self._state = state


class CountingToggleSet(_KopfToggleSet):
    """kopf's ToggleSet for `all` and `any`, with a count of the toggles that are on;
    waiters for the set's state are woken only when that state changes."""

    def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
        super().__init__(fn)
        self._on = 0
        self._flipped = asyncio.Condition()

    def is_on(self) -> bool:
        if self._fn is all:
            return self._on == len(self._toggles)
        if self._fn is any:
            return self._on > 0
        return super().is_on()

    async def wait_for(self, __state: bool) -> None:
        async with self._flipped:
            await self._flipped.wait_for(lambda: self.is_on() == bool(__state))

    async def make_toggle(self, __val: bool = False, *,
                          name: str | None = None) -> aiotoggles.Toggle:
        toggle = CountedToggle(bool(__val), name=name, condition=self._condition, owner=self)
        await self._update(lambda: self._add(toggle))
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        await self._update(lambda: self._drop([toggle]))

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        dropped = list(toggles)
        await self._update(lambda: self._drop(dropped))

    def _add(self, toggle: CountedToggle) -> None:
        self._toggles.add(toggle)
        self._on += toggle.is_on()

    def _drop(self, toggles: list[aiotoggles.Toggle]) -> None:
        for toggle in toggles:
            if toggle in self._toggles:
                self._toggles.discard(toggle)
                self._on -= toggle.is_on()

    async def _update(self, change: Callable[[], None]) -> None:
        before = self.is_on()
        change()
        if self.is_on() != before:
            async with self._flipped:
                self._flipped.notify_all()


def install() -> bool:
    """Puts CountingToggleSet in kopf's place; False (and a warning) where this kopf's
    ToggleSet is not the one it was written for."""
    if aiotoggles.ToggleSet is CountingToggleSet:
        return True
    probe = _KopfToggleSet(all)
    expected = all(hasattr(probe, attribute) for attribute in (
        "_toggles", "_condition", "_fn", "make_toggle", "drop_toggle", "drop_toggles",
        "wait_for", "is_on")) and hasattr(aiotoggles.Toggle(), "_state")
    if not expected:
        log.warning("kopf's ToggleSet is not the one kopf_toggles.py knows: the start-up "
                    "barrier keeps kopf's own, which costs O(N^2) in the objects listed")
        return False
    aiotoggles.ToggleSet = CountingToggleSet  # type: ignore[misc]
    return True
