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
from edgefleet.operator.keystore import Keystore
from edgefleet.operator.kubeapi import API_ERRORS, load_kubernetes_config
from edgefleet.operator.leader import LeaderElector, LeadershipLost
from edgefleet.operator.settings import OperatorSettings

logger = logging.getLogger("edgefleet.operator")


async def run(settings: OperatorSettings) -> int:
    api_client = load_kubernetes_config(settings.api_concurrency)
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
    keystore = None
    if settings.insecure_plaintext:
        metrics.GATEWAY_INSECURE.set(1)
        logger.warning("--insecure-plaintext: the fleet gateway serves WITHOUT TLS; devices "
                       "prove themselves by bearer token alone, and anyone on the path can "
                       "read and replay it. Never for a fleet.")
    else:
        keystore = Keystore(client.CoreV1Api(api_client), settings.lease_namespace,
                            settings.ca_secret_name, settings.signing_secret_name,
                            settings.gateway_dns_names)
        try:
            await keystore.load()
        except (*API_ERRORS, ValueError) as error:
            logger.error("cannot serve the fleet gateway: %s", error)
            return 1
    remote_writer = (RemoteWriter(settings.metrics_remote_write_url)
                     if settings.metrics_remote_write_url else None)
    fleet_gateway = FleetGateway(
        directory, artifacts, api_client, settings.heartbeat_write_seconds,
        credentials=memo.credentials, keystore=keystore,
        device_cert_validity=settings.device_cert_validity, remote_writer=remote_writer)
    gateway = create_gateway_server(fleet_gateway, settings.listen_host, settings.grpc_port,
                                    settings.enrolment_port, keystore)
    await gateway.start()
    if keystore:
        logger.info("fleet gateway: sessions on %s:%d (mutual TLS), enrolment on %s:%d (TLS)",
                    settings.listen_host, settings.grpc_port, settings.listen_host,
                    settings.enrolment_port)
    else:
        logger.info("fleet gateway on %s:%d (plaintext)", settings.listen_host,
                    settings.grpc_port)
    stop_flag = asyncio.Event()
    tasks = {asyncio.create_task(kopf.operator(
        clusterwide=not settings.namespaces, namespaces=settings.namespaces,
        standalone=True,  # the Lease above, not kopf's peering, decides who acts
        stop_flag=stop_flag, ready_flag=operator_ready, memo=memo,
    ), name="kopf")}
    if elector:
        tasks.add(asyncio.create_task(elector.hold(), name="lease"))
    if keystore:
        tasks.add(asyncio.create_task(
            refresh_ca(keystore, fleet_gateway, settings.ca_refresh_seconds), name="ca-refresh"))
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
        if task.get_name() in ("lease", "ca-refresh"):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    metrics.LEADER.set(0)
    try:
        await gateway.stop(grace=2)
    except asyncio.CancelledError:
        # kopf cancels, as it ends, every task made after it started: gRPC's own tasks
        # of the calls it served among them. The server is down either way, and the
        # Lease must still be released; only a cancellation of this task goes on.
        current = asyncio.current_task()
        if current and current.cancelling():
            raise
    if remote_writer:
        await remote_writer.close()
    if elector and exit_code == 0:
        await elector.release()
    await health.cleanup()
    return exit_code


async def refresh_ca(keystore: Keystore, gateway: FleetGateway, interval_s: float) -> None:
    """Reads the CA Secret again and again: a rotated CA serves from the next handshake,
    and connected devices get the new trust bundle at once."""
    while True:
        await asyncio.sleep(interval_s)
        if await keystore.refresh():
            gateway.trust_changed()


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
