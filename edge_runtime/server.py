"""Runs the serving side of an edge runtime: the engine, the gRPC and REST servers and
the metrics endpoint, in one asyncio loop, until SIGTERM or SIGINT.

The inference ports (gRPC, REST) take TLS, client certificates and a bearer token when
configured; the metrics port (/metrics, liveness, readiness) is always plain HTTP and
open, for Prometheus and probes: it carries counts, never inputs or outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from typing import Protocol

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.capture import Collector
from edgefleet.edge_runtime.engine import Engine
from edgefleet.edge_runtime.serving import grpc as grpc_server
from edgefleet.edge_runtime.serving import rest
from edgefleet.edge_runtime.serving.admission import Admission
from edgefleet.edge_runtime.serving.dataplane import DataPlane, ModelRepository
from edgefleet.edge_runtime.settings import ServingSettings

logger = logging.getLogger("edgefleet.edge_runtime")


def metrics_app(dataplane: DataPlane) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_routes(rest.health_routes(dataplane))
    return app


def tls_context(settings: ServingSettings) -> ssl.SSLContext | None:
    """The REST server's TLS: none, server-only, or requiring client certificates."""
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(settings: ServingSettings) -> grpc.ServerCredentials | None:
    """The gRPC server's TLS, the same choices as tls_context."""
    if not (settings.tls_cert_file and settings.tls_key_file):
        return None
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca.read_bytes() if ca else None, require_client_auth=ca is not None)


class ModelSource(ModelRepository, Protocol):
    """Where the models to serve come from: a local repository or the cloud."""

    async def start(self) -> None:
        """Loads what should serve from the start (before the servers listen)."""

    async def run(self) -> None:
        """Follows changes until cancelled."""


async def serve(settings: ServingSettings, make_source: Callable[[Engine], ModelSource],
                auth_token: str | None, collector: Collector | None = None) -> None:
    """Serves until SIGTERM or SIGINT; `collector` (cloud mode) keeps samples and takes
    feedback."""
    engine = Engine(threads=settings.inference_threads)
    if collector is not None:
        engine.observer = collector.observe
    source = make_source(engine)
    dataplane = DataPlane(engine, source, collector)
    admission = Admission(auth_token, settings.max_request_bytes,
                          settings.max_concurrent_requests)
    telemetry.CLOUD_CONNECTED.set(0)
    await source.start()
    dataplane.started = True

    grpc_inference = grpc_server.create_server(
        dataplane, admission, f"{settings.listen_host}:{settings.grpc_port}",
        grpc_credentials(settings))
    await grpc_inference.start()
    runners = []
    tls = tls_context(settings)
    for app, port, context in (
        (rest.create_app(dataplane, admission), settings.http_port, tls),
        (metrics_app(dataplane), settings.metrics_port, None),
    ):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.listen_host, port, ssl_context=context).start()
        runners.append(runner)
    logger.info("serving models=%s host=%s grpc=%d http=%d metrics=%d tls=%s "
                "client_certificates=%s bearer_token=%s max_request_bytes=%d "
                "max_concurrent_requests=%d", engine.models(), settings.listen_host,
                settings.grpc_port, settings.http_port, settings.metrics_port, tls is not None,
                settings.tls_client_ca_file is not None, admission.requires_token,
                settings.max_request_bytes, settings.max_concurrent_requests)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    follower = asyncio.create_task(source.run(), name="model-source")
    await stop.wait()

    logger.info("stopping: draining requests")
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    await grpc_inference.stop(grace=5)
    for runner in runners:
        await runner.cleanup()
    await engine.close()
    if collector is not None:
        await asyncio.to_thread(collector.close)
    admission.close()
