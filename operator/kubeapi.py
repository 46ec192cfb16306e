"""The Kubernetes API client of the operator's own calls (Lease, status writes, Events):
how it is configured, where its blocking calls run, and what calling it can raise."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from edgefleet.operator.resources import API_VERSION

logger = logging.getLogger(__name__)
# An answer that is an error (ApiException) or no answer at all (HTTPError).
API_ERRORS = (ApiException, HTTPError)
DEFAULT_CONCURRENCY = 16
T = TypeVar("T")

# API calls block, so they run in threads: in a pool of their own, so that a storm of
# status writes (thousands of devices reconnecting) never queues behind file and CPU work
# in the default executor, nor that work behind it. The Lease is renewed in the default
# executor (leader.py), so no storm here delays it. Threads start only when used.
_pool = ThreadPoolExecutor(max_workers=DEFAULT_CONCURRENCY, thread_name_prefix="kube-api")
_pool_size = DEFAULT_CONCURRENCY


def load_kubernetes_config(concurrency: int = DEFAULT_CONCURRENCY) -> client.ApiClient:
    """In-cluster credentials when running in a pod, otherwise KUBECONFIG; as many pooled
    connections as calls may be in flight (`concurrency`)."""
    global _pool, _pool_size
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    # The pool's calls, and a few made apart from it (the Lease, the CA Secret).
    configuration.connection_pool_maxsize = concurrency + 4
    if concurrency != _pool_size:
        _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube-api")
        _pool_size = concurrency
    return client.ApiClient(configuration)


def api_status(error: ApiException) -> dict[str, Any]:
    """The Status object the API server answered with (empty if it sent none)."""
    try:
        answer = json.loads(error.body or "{}")
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs one blocking API call in the API call pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool, functools.partial(function, *args, **kwargs))


def drop_queued() -> None:
    """Drops the calls not yet started (those running finish): a stopping process must
    not hold its Lease, nor keep its successor waiting, while it works off a backlog
    of status writes that the next process redoes from what it watches."""
    _pool.shutdown(wait=False, cancel_futures=True)


async def post_device_event(core: client.CoreV1Api, *, namespace: str, name: str, uid: str,
                            reason: str, message: str, kind: Literal["Normal", "Warning"],
                            component: str) -> None:
    """An Event about an EdgeDevice; one the API server refuses is logged, not raised
    (an Event is never worth a retry that delays the work it tells of)."""
    now = datetime.now(UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{name}."),
        involved_object=client.V1ObjectReference(
            api_version=API_VERSION, kind="EdgeDevice", name=name, namespace=namespace,
            uid=uid or None),
        reason=reason, message=message[:1024], type=kind, count=1, first_timestamp=now,
        last_timestamp=now, source=client.V1EventSource(component=component))
    try:
        await call(core.create_namespaced_event, namespace, event)
    except API_ERRORS as error:
        logger.warning("device=%s/%s: cannot post Event %s: %s", namespace, name, reason, error)
