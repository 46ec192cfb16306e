"""How the fleet watch hands objects on: nothing before every kind is listed, models
first, and after a gap only what changed or went away."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes import client

from edgefleet.operator.watches import Body, FleetWatch, Handler

Calls = list[tuple[str, str, str | None]]  # (plural, name, resourceVersion or None: gone)


def body(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


def recording_watch() -> tuple[FleetWatch, Calls]:
    calls: Calls = []

    def record(plural: str) -> Handler:
        def handle(namespace: str, name: str, seen: Body | None) -> None:
            calls.append((plural, name, seen["metadata"]["resourceVersion"] if seen else None))
        return handle

    handlers = {"edgemodels": record("edgemodels"), "edgedevices": record("edgedevices")}
    watch = FleetWatch(client.ApiClient(), ["ns"], handlers, asyncio.Event())
    return watch, calls


def test_nothing_is_handed_on_before_every_kind_is_listed_and_then_models_come_first() -> None:
    watch, calls = recording_watch()
    models, devices = watch._listings
    watch._listed(devices, [body("cam-1", "1"), body("cam-2", "2")])
    watch._event(devices, "MODIFIED", body("cam-1", "5"))  # its last version counts
    watch._event(devices, "DELETED", body("cam-2", "6"))  # never handed on: no news
    assert calls == [] and not watch.listed.is_set()
    watch._listed(models, [body("detector", "3")])
    assert calls == [("edgemodels", "detector", "3"), ("edgedevices", "cam-1", "5")]
    assert watch.listed.is_set()
    watch._event(devices, "ADDED", body("cam-3", "7"))
    assert calls[-1] == ("edgedevices", "cam-3", "7")


def test_a_list_after_a_gap_hands_on_only_what_changed_and_what_went_away() -> None:
    watch, calls = recording_watch()
    models, devices = watch._listings
    watch._listed(models, [])
    watch._listed(devices, [body("same", "1"), body("moved", "2"), body("gone", "3")])
    calls.clear()
    watch._listed(devices, [body("same", "1"), body("moved", "9"), body("new", "10")])
    assert sorted(calls) == [("edgedevices", "gone", None), ("edgedevices", "moved", "9"),
                             ("edgedevices", "new", "10")]
