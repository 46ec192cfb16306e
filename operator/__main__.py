"""`edgefleet-operator`: kopf, the health/metrics server and (once it leads) the
reconcilers, all in one asyncio loop.

With leader election on (the default) a replica first waits for the Lease; only the
holder runs kopf. Losing the Lease stops kopf and exits with status 1, so that the
replica restarts as a standby instead of acting beside a new leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

import kopf
from aiohttp import web
from kubernetes import client

from edgefleet.operator import credentials, handlers, metrics
from edgefleet.operator.artifact_sources import SourcePolicy
from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.operator.fleet import FleetChanges
from edgefleet.operator.gateway.directory import DeviceDirectory
from edgefleet.operator.gateway.remote_write import RemoteWriter
from edgefleet.operator.gateway.server import FleetGateway
from edgefleet.operator.gateway.server import create_server as create_gateway_server
from edgefleet.operator.kubeapi import load_kubernetes_config
from edgefleet.operator.leader import LeaderElector, LeadershipLost
from edgefleet.operator.settings import OperatorSettings

logger = logging.getLogger("edgefleet.operator")


async def run(settings: OperatorSettings) -> int:
    api_client = load_kubernetes_config()
    operator_ready = asyncio.Event()
    health = web.AppRunner(metrics.health_app(operator_ready.is_set), access_log=None)
    await health.setup()
    await web.TCPSite(health, settings.listen_host, settings.metrics_port).start()
    logger.info("serving /healthz /readyz /metrics on %s:%d", settings.listen_host,
                settings.metrics_port)

    elector = None
    if settings.leader_election:
        elector = LeaderElector(
            client.CoordinationV1Api(api_client), namespace=settings.lease_namespace,
            name=settings.lease_name, identity=settings.identity,
            duration_s=settings.lease_duration_seconds, renew_s=settings.lease_renew_seconds,
        )
        await elector.acquire()
    metrics.LEADER.set(1)

    directory = DeviceDirectory()
    artifacts = ArtifactCache(
        settings.artifact_cache_dir, settings.artifact_cache_max_bytes,
        settings.artifact_max_bytes,
        SourcePolicy(file_roots=tuple(settings.artifact_file_roots),
                     allow_private_networks=settings.artifact_allow_private_networks),
        settings.artifact_http_timeout_seconds)
    memo = handlers.OperatorMemo(
        settings=settings, fleet=FleetChanges(), device_placements={}, device_traffic={},
        status_api=client.CustomObjectsApi(api_client), clock=handlers.utc_now,
        artifacts=artifacts, directory=directory, credentials=credentials.CredentialStore(),
    )
    tls = ((settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
           if settings.tls_key_file and settings.tls_cert_file else None)
    remote_writer = (RemoteWriter(settings.metrics_remote_write_url)
                     if settings.metrics_remote_write_url else None)
    gateway = create_gateway_server(
        FleetGateway(directory, artifacts, api_client, settings.heartbeat_write_seconds,
                     credentials=memo.credentials, remote_writer=remote_writer),
        f"{settings.listen_host}:{settings.grpc_port}", tls)
    await gateway.start()
    logger.info("fleet gateway on %s:%d (%s)", settings.listen_host, settings.grpc_port,
                "TLS" if tls else "plaintext")
    stop_flag = asyncio.Event()
    tasks = {asyncio.create_task(kopf.operator(
        clusterwide=not settings.namespaces, namespaces=settings.namespaces,
        standalone=True,  # the Lease above, not kopf's peering, decides who acts
        stop_flag=stop_flag, ready_flag=operator_ready, memo=memo,
    ), name="kopf")}
    if elector:
        tasks.add(asyncio.create_task(elector.hold(), name="lease"))
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)

    exit_code = 0
    for task in done:
        error = task.exception()
        if isinstance(error, LeadershipLost):
            logger.error("leadership lost, stopping: %s", error)
            exit_code = 1
        elif error is not None:
            logger.error("%s stopped with an error", task.get_name(), exc_info=error)
            exit_code = 1
    stop_flag.set()
    for task in pending:
        if task.get_name() == "lease":
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    metrics.LEADER.set(0)
    await gateway.stop(grace=2)
    if remote_writer:
        await remote_writer.close()
    if elector and exit_code == 0:
        await elector.release()
    await health.cleanup()
    return exit_code


def main(argv: list[str] | None = None) -> None:
    settings = OperatorSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        # kopf notes every successful handler call at INFO; keep its warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
