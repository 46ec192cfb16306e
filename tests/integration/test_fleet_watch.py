"""The fleet watch against a real API server: it lists, then follows each change once,
across watches the server ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from edgefleet.operator.watches import Body, FleetWatch, Handler
from tests.conftest import Kube
from tests.integration.test_operator import device_body, model_body

pytestmark = pytest.mark.integration
MODELS, DEVICES = "edgemodels", "edgedevices"


async def until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_the_fleet_watch_lists_models_first_then_follows_each_change_once(
        kube: Kube, namespace: str) -> None:
    for name in ("cam-a", "cam-b", "cam-c"):
        kube.create(DEVICES, namespace, device_body(name, site="plant-7"))
    kube.create(MODELS, namespace, model_body("detector"))
    calls: list[tuple[str, str, Body | None]] = []

    def record(plural: str) -> Handler:
        def handle(_namespace: str, name: str, body: Body | None) -> None:
            calls.append((plural, name, body))
        return handle

    async def scenario() -> None:
        listed = asyncio.Event()
        # The server ends each watch after a second: changes made after two of those
        # must come through once each.
        watch = FleetWatch(kube.api, [namespace], {MODELS: record(MODELS),
                                                    DEVICES: record(DEVICES)},
                           listed, watch_timeout_s=1)
        running = asyncio.create_task(watch.run())
        await asyncio.wait_for(listed.wait(), 30)
        assert [(plural, name) for plural, name, _ in calls] == [
            (MODELS, "detector"), (DEVICES, "cam-a"), (DEVICES, "cam-b"), (DEVICES, "cam-c")]
        calls.clear()
        await asyncio.sleep(2.5)
        await asyncio.to_thread(kube.create, DEVICES, namespace, device_body("cam-d"))
        await asyncio.to_thread(kube.patch, DEVICES, namespace, "cam-a",
                                {"metadata": {"labels": {"site": "plant-9"}}})
        await asyncio.to_thread(kube.delete, DEVICES, namespace, "cam-c")
        await until(lambda: len(calls) >= 3)
        await asyncio.sleep(2.5)  # and nothing more comes, across the next watches
        running.cancel()
        assert [(name, body is None) for _, name, body in calls] == [
            ("cam-d", False), ("cam-a", False), ("cam-c", True)]
        assert calls[1][2] is not None
        assert calls[1][2]["metadata"]["labels"] == {"site": "plant-9"}

    asyncio.run(scenario())
