"""Runs the serving side of an edge runtime: the engine, the gRPC and REST servers and
the metrics endpoint, in one asyncio loop, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.engine import Engine
from edgefleet.edge_runtime.serving import grpc as grpc_server
from edgefleet.edge_runtime.serving import rest
from edgefleet.edge_runtime.serving.dataplane import DataPlane
from edgefleet.edge_runtime.settings import ServingSettings

logger = logging.getLogger("edgefleet.edge_runtime")


def metrics_app() -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


class ModelSource(Protocol):
    """Where the models to serve come from: a local repository or the cloud."""

    async def start(self) -> None:
        """Loads what should serve from the start (before the servers listen)."""

    async def run(self) -> None:
        """Follows changes until cancelled."""


async def serve(settings: ServingSettings, make_source: Callable[[Engine], ModelSource]) -> None:
    engine = Engine(threads=settings.inference_threads)
    dataplane = DataPlane(engine)
    telemetry.CLOUD_CONNECTED.set(0)
    source = make_source(engine)
    await source.start()
    dataplane.started = True

    grpc = grpc_server.create_server(dataplane, f"{settings.listen_host}:{settings.grpc_port}",
                                     settings.max_request_bytes)
    await grpc.start()
    runners = []
    for app, port in ((rest.create_app(dataplane, settings.max_request_bytes),
                       settings.http_port), (metrics_app(), settings.metrics_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.listen_host, port).start()
        runners.append(runner)
    logger.info("serving models=%s grpc=%d http=%d metrics=%d", engine.models(),
                settings.grpc_port, settings.http_port, settings.metrics_port)

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
    await grpc.stop(grace=5)
    for runner in runners:
        await runner.cleanup()
    await engine.close()
