"""The fleet's own kinds, EdgeDevice and EdgeModel, listed and watched apart from kopf.

kopf runs every watch event through a worker of its own for the object and its handler
machinery around each call: about 2.5 ms of the event loop per event, measured with
5,000 devices, whose gateways write `lastSeen` some 80 times a second (each write comes
back as an event). Here a thread per kind and namespace reads the stream and decodes
the JSON; the loop gets each object and hands it to handlers.py, which keeps the fleet
index (fleet.FleetIndex) and tells whom the change concerns. kopf keeps what needs
its machinery: each model's status loop, the finalizer, Events.

Nothing is handed on before every kind in every namespace is listed: a gateway told
what a device should serve from a partial list of models would withdraw the others.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from edgefleet.operator.kubeapi import API_ERRORS
from edgefleet.operator.resources import GROUP, VERSION

log = logging.getLogger("edgefleet.operator.watches")
Body = Mapping[str, Any]
# Called on the loop with the object's namespace, name and body (None: it is gone).
Handler = Callable[[str, str, Body | None], None]
PAGE_SIZE = 500  # objects per LIST page
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 30.0


class WatchExpired(Exception):
    """The resourceVersion to watch from is too old (410 Gone): list again."""


@dataclass
class Listing:
    """One kind in one namespace ("" for all), as its watch last delivered it."""

    plural: str
    namespace: str
    listed: bool = False
    # (namespace, name) -> resourceVersion: a list after a gap hands on only what
    # changed and what went away.
    versions: dict[tuple[str, str], str] = field(default_factory=dict)
    # Until every listing is listed, the last body of each object (None: deleted).
    waiting: dict[tuple[str, str], Body | None] = field(default_factory=dict)


class ListWatch:
    """Lists one kind in pages, then watches it from the list's resourceVersion with
    bookmarks, in a thread of its own; watches again where the last one ended, and
    lists again when that point is gone (410). Errors are logged and retried with
    backoff (1 s doubling to 30 s). Each list and event is handed to the loop."""

    def __init__(self, api_client: client.ApiClient, plural: str, namespace: str,
                 loop: asyncio.AbstractEventLoop,
                 on_list: Callable[[list[Body]], None], on_event: Callable[[str, Body], None],
                 watch_timeout_s: int) -> None:
        api = client.CustomObjectsApi(api_client)
        self._list_call = (
            functools.partial(api.list_namespaced_custom_object, GROUP, VERSION, namespace,
                              plural)
            if namespace else functools.partial(api.list_cluster_custom_object, GROUP,
                                                VERSION, plural))
        self._where = f"{plural} in {namespace or 'all namespaces'}"
        self._loop = loop
        self._on_list = on_list
        self._on_event = on_event
        self._watch_timeout_s = watch_timeout_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {self._where}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The thread ends at its next event, or when the server ends the watch."""
        self._stopping.set()

    def _run(self) -> None:
        version: str | None = None  # where the watch goes on from; None: list first
        delay_s = FIRST_RETRY_S
        while not self._stopping.is_set():
            try:
                if version is None:
                    objects, version = self._list()
                    self._loop.call_soon_threadsafe(self._on_list, objects)
                version = self._watch(version)
                delay_s = FIRST_RETRY_S
            except WatchExpired:
                version = None
            except Exception as error:  # a watch that ended for good would blind the fleet
                if self._stopping.is_set():  # the loop may be closed already
                    return
                expected = isinstance(error, (*API_ERRORS, OSError, ValueError, KeyError))
                log.warning("watch of %s failed: %s; again in %.0fs", self._where, error,
                            delay_s, exc_info=not expected)
                self._stopping.wait(delay_s)
                delay_s = min(delay_s * 2, MAX_RETRY_S)

    def _list(self) -> tuple[list[Body], str]:
        objects: list[Body] = []
        token = None
        while True:
            page = self._list_call(limit=PAGE_SIZE, _continue=token)
            objects.extend(page["items"])
            token = page["metadata"].get("continue")
            if not token:  # every page comes from one snapshot: this is its version
                return objects, page["metadata"]["resourceVersion"]

    def _watch(self, version: str) -> str:
        """Hands on each event until the server ends the watch; returns the version to
        go on from."""
        try:
            response = self._list_call(
                watch=True, resource_version=version, allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout_s, _preload_content=False,
                _request_timeout=(10, self._watch_timeout_s + 30))
        except ApiException as error:
            if error.status == 410:
                raise WatchExpired from None
            raise
        try:
            for line in iter_resp_lines(response):
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                kind, body = event["type"], event["object"]
                if kind == "ERROR":
                    if body.get("code") == 410:
                        raise WatchExpired
                    raise ValueError(f"the API server ended the watch: {body.get('message')}")
                version = body["metadata"]["resourceVersion"]
                if kind != "BOOKMARK":  # a bookmark only moves the version on
                    self._loop.call_soon_threadsafe(self._on_event, kind, body)
        finally:
            response.release_conn()
        return version


class FleetWatch:
    """Lists and watches EdgeModels and EdgeDevices in the served namespaces (all when
    none are named) and hands each object to its handler, models first, once all are
    listed; `listed` is set then. A list after a gap hands on what changed and, as
    gone, what it no longer holds."""

    def __init__(self, api_client: client.ApiClient, namespaces: list[str],
                 handlers: Mapping[str, Handler], listed: asyncio.Event,
                 watch_timeout_s: int = 300) -> None:
        self._api_client = api_client
        self._namespaces = namespaces or [""]
        self._handlers = handlers  # plural -> handler, in the order to hand on a listing
        self._watch_timeout_s = watch_timeout_s
        self.listed = listed
        self._listings = [Listing(plural, namespace) for plural in handlers
                          for namespace in self._namespaces]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        watches = [ListWatch(self._api_client, listing.plural, listing.namespace, loop,
                             functools.partial(self._listed, listing),
                             functools.partial(self._event, listing),
                             self._watch_timeout_s) for listing in self._listings]
        for watch in watches:
            watch.start()
        try:
            await asyncio.Event().wait()  # the threads run until stopped
        finally:
            for watch in watches:
                watch.stop()

    def _listed(self, listing: Listing, objects: list[Body]) -> None:
        versions = {key(body): body["metadata"]["resourceVersion"] for body in objects}
        if not self.listed.is_set():
            listing.versions, listing.listed = versions, True
            listing.waiting = {key(body): body for body in objects}
            if all(each.listed for each in self._listings):
                self._hand_on_everything()
            return
        handler = self._handlers[listing.plural]
        gone = [name for name in listing.versions if name not in versions]
        changed = [body for body in objects
                   if listing.versions.get(key(body)) != versions[key(body)]]
        listing.versions = versions
        for namespace, name in gone:
            handler(namespace, name, None)
        for body in changed:
            handler(*key(body), body)

    def _event(self, listing: Listing, kind: str, body: Body) -> None:
        name = key(body)
        gone = kind == "DELETED"
        if gone:
            listing.versions.pop(name, None)
        else:
            listing.versions[name] = body["metadata"]["resourceVersion"]
        if self.listed.is_set():
            self._handlers[listing.plural](*name, None if gone else body)
        else:
            listing.waiting[name] = None if gone else body

    def _hand_on_everything(self) -> None:
        """Each object's last body, models before devices: a device's handler finds
        every model it may serve."""
        for listing in self._listings:  # in the handlers' order
            handler = self._handlers[listing.plural]
            for (namespace, name), body in listing.waiting.items():
                if body is not None:  # one deleted before anything was handed on: no news
                    handler(namespace, name, body)
            listing.waiting = {}
        self.listed.set()
        log.info("listed %s", ", ".join(
            f"{len(listing.versions)} {listing.plural} in "
            f"{listing.namespace or 'all namespaces'}" for listing in self._listings))


def key(body: Body) -> tuple[str, str]:
    metadata = body["metadata"]
    return metadata.get("namespace", ""), metadata["name"]
