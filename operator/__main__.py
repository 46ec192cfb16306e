"""`edgefleet-operator`: kopf, the health/metrics server, the fleet gateway and (once it
leads) the reconcilers, all in one asyncio loop; `--role` splits them (handlers.py says
which handlers each role runs).

With leader election on (the default) a controller first waits for the Lease; only the
holder runs kopf. Losing the Lease stops kopf and exits with status 1, so that the
replica restarts as a standby instead of acting beside a new leader. Gateway replicas
hold no Lease: each serves whichever devices connect to it.

`edgefleet-operator crds` prints this release's CustomResourceDefinitions, for
`kubectl apply --server-side -f -` on an upgrade (Helm never upgrades a chart's crds/).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass
from importlib.metadata import version

import grpc
import kopf
from aiohttp import web
from kubernetes import client, config
from pydantic import ValidationError
from pydantic_settings import SettingsError

from edgefleet.operator import credentials, handlers, kubeapi, liveness, metrics
from edgefleet.operator.artifact_sources import SourcePolicy
from edgefleet.operator.artifacts import ArtifactCache
from edgefleet.operator.dataset import DatasetWriter, ObjectStore, open_store
from edgefleet.operator.device_health import HealthThresholds
from edgefleet.operator.fleet import FleetChanges, FleetIndex
from edgefleet.operator.gateway.directory import DeviceDirectory
from edgefleet.operator.gateway.policy import GatewayLimits
from edgefleet.operator.gateway.remote_write import RemoteWriter
from edgefleet.operator.gateway.server import FleetGateway
from edgefleet.operator.gateway.server import create_server as create_gateway_server
from edgefleet.operator.keystore import Keystore
from edgefleet.operator.kubeapi import API_ERRORS, load_kubernetes_config
from edgefleet.operator.leader import LeaderElector, LeadershipLost
from edgefleet.operator.liveness import GatewayLease, GatewayLeases
from edgefleet.operator.phases import DevicePhases
from edgefleet.operator.retrainer import Retrainer
from edgefleet.operator.settings import OperatorSettings
from edgefleet.operator.variant_builder import VariantBuilder
from edgefleet.operator.watches import FleetWatch
from edgefleet.protocol.cli import (
    BadConfiguration,
    configure_logging,
    describe_settings_error,
    ensure_free,
    exit_bad_configuration,
)

logger = logging.getLogger("edgefleet.operator")
PROGRAM = "edgefleet-operator"


async def run(settings: OperatorSettings) -> int:
    api_client = load_kubernetes_config(settings.api_concurrency)
    metrics.DEVICES.label_keys = tuple(settings.device_metric_labels)
    operator_ready = asyncio.Event()
    health = web.AppRunner(metrics.health_app(operator_ready.is_set), access_log=None)
    await health.setup()
    await web.TCPSite(health, settings.listen_host, settings.metrics_port).start()
    logger.info("role=%s serving /healthz /readyz /metrics on %s:%d", settings.role,
                settings.listen_host, settings.metrics_port)

    # The controller's decisions need one actor at a time; gateway replicas derive
    # everything they do from the watches, any number side by side.
    elector = None
    if settings.leader_election and settings.role != "gateway":
        elector = LeaderElector(
            client.CoordinationV1Api(api_client), namespace=settings.lease_namespace,
            name=settings.lease_name, identity=settings.identity,
            duration_s=settings.lease_duration_seconds, renew_s=settings.lease_renew_seconds,
        )
        await elector.acquire()
    if settings.role != "gateway":
        metrics.LEADER.set(1)

    dataset = open_store(settings.dataset_uri, settings.dataset_s3_endpoint,
                         settings.dataset_s3_region)
    artifacts = ArtifactCache(
        settings.artifact_cache_dir, settings.artifact_cache_max_bytes,
        settings.artifact_max_bytes,
        SourcePolicy(file_roots=tuple(settings.artifact_file_roots),
                     allow_private_networks=settings.artifact_allow_private_networks,
                     dataset=dataset),
        settings.artifact_http_timeout_seconds)
    serves_devices = settings.role != "controller"
    gateways = (GatewayLeases(client.CoordinationV1Api(api_client), settings.lease_namespace,
                              settings.lease_renew_seconds)
                if settings.role != "gateway" else None)
    # Variant builds: the controller's for spec.variants, and a gateway's to rebuild the
    # ones its cache lacks (in `all`, one builder and one cache serve both).
    builder = VariantBuilder(artifacts, settings.artifact_cache_dir,
                             concurrency=settings.variant_build_concurrency,
                             timeout_s=settings.variant_build_timeout_seconds,
                             memory_bytes=settings.variant_build_memory_bytes)
    memo = handlers.OperatorMemo(
        settings=settings, fleet=FleetChanges(), index=FleetIndex(),
        status_api=client.CustomObjectsApi(api_client), clock=handlers.utc_now,
        artifacts=artifacts, directory=DeviceDirectory() if serves_devices else None,
        device_links={}, credentials=credentials.CredentialStore(),
        mirror=(handlers.ArtifactMirror(artifacts, client.CoreV1Api(api_client),
                                        spec_sources=settings.role == "gateway",
                                        builder=builder)
                if serves_devices else None),
        phases=(DevicePhases(client.CustomObjectsApi(api_client), gateways,
                             client.CoreV1Api(api_client))
                if gateways else None),
        variants=builder if settings.role != "gateway" else None,
        dataset=DatasetWriter(dataset) if settings.role != "gateway" else None,
        retrainer=(Retrainer(client.BatchV1Api(api_client), dataset, settings)
                   if settings.role != "gateway" else None),
    )
    gateway = None
    if memo.directory is not None:
        gateway = await start_gateway(settings, api_client, memo.directory, artifacts,
                                      memo.credentials, dataset)
        if gateway is None:
            return 1
    # The fleet's own kinds, on connections of their own (the pool's are for calls).
    watch = FleetWatch(client.ApiClient(api_client.configuration), settings.namespaces, {
        handlers.MODELS: functools.partial(handlers.model_changed, memo),
        handlers.DEVICES: functools.partial(handlers.device_changed, memo),
    }, memo.index.listed)
    stop_flag = asyncio.Event()
    tasks = {asyncio.create_task(kopf.operator(
        registry=handlers.registry_for(settings.role),
        clusterwide=not settings.namespaces, namespaces=settings.namespaces,
        standalone=True,  # the Lease above, not kopf's peering, decides who acts
        stop_flag=stop_flag, ready_flag=operator_ready, memo=memo,
    ), name="kopf")}
    tasks.add(asyncio.create_task(watch.run(), name="fleet-watch"))
    if elector:
        tasks.add(asyncio.create_task(elector.hold(), name="lease"))
    if memo.phases and gateways:
        tasks.add(asyncio.create_task(memo.phases.run(), name="device-phases"))
        tasks.add(asyncio.create_task(gateways.run(memo.phases.gateway_changed),
                                      name="gateway-leases"))
    if gateway:
        tasks.add(asyncio.create_task(gateway.lease.hold(), name="gateway-lease"))
    if gateway and gateway.keystore:
        tasks.add(asyncio.create_task(
            refresh_ca(gateway.keystore, gateway.servicer, settings.ca_refresh_seconds),
            name="ca-refresh"))

    def stop() -> None:
        # Before kopf stops (it cancels every task made since it started, the gateway's
        # sessions among them): their devices move to another replica, and are not
        # written Offline on the way.
        if gateway:
            gateway.servicer.stopping = True
        stop_flag.set()

    async def take_signals() -> None:
        """kopf installs its SIGINT and SIGTERM handlers as it starts; once it is ready,
        these replace them, so that the gateway knows it is stopping before kopf does."""
        await operator_ready.wait()
        for number in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(number, stop)

    signals = asyncio.create_task(take_signals(), name="signals")
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    signals.cancel()

    exit_code = 0
    for task in done:
        if task.cancelled():  # kopf, ending, cancelled it
            continue
        error = task.exception()
        if isinstance(error, LeadershipLost):
            logger.error("leadership lost, stopping: %s", error)
            exit_code = 1
        elif error is not None:
            logger.error("%s stopped with an error", task.get_name(), exc_info=error)
            exit_code = 1
    stop()
    kubeapi.drop_queued()
    for task in pending:
        if task.get_name() in ("lease", "ca-refresh", "device-phases", "fleet-watch",
                               "gateway-leases", "gateway-lease"):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    metrics.LEADER.set(0)
    if gateway:
        if exit_code == 0:  # a clean stop: its devices have a while to move
            await gateway.lease.hand_over()
        await gateway.stop()
    if elector and exit_code == 0:
        await elector.release()
    await health.cleanup()
    return exit_code


@dataclass
class RunningGateway:
    server: grpc.aio.Server
    servicer: FleetGateway
    lease: GatewayLease
    keystore: Keystore | None
    remote_writer: RemoteWriter | None

    async def stop(self) -> None:
        try:
            await self.server.stop(grace=2)
        except asyncio.CancelledError:
            # kopf cancels, as it ends, every task made after it started: gRPC's own
            # tasks of the calls it served among them. The server is down either way, and
            # the Lease must still be released; only a cancellation of this task goes on.
            current = asyncio.current_task()
            if current and current.cancelling():
                raise
        if self.remote_writer:
            await self.remote_writer.close()


async def start_gateway(settings: OperatorSettings, api_client: client.ApiClient,
                        directory: DeviceDirectory, artifacts: ArtifactCache,
                        device_credentials: credentials.CredentialStore,
                        store: ObjectStore) -> RunningGateway | None:
    """The fleet gateway's server, started; None (logged) when its CA cannot be had."""
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
            return None
    remote_writer = (RemoteWriter(settings.metrics_remote_write_url)
                     if settings.metrics_remote_write_url else None)
    dataset = DatasetWriter(store)
    logger.info("devices' kept samples go to %s", dataset.store.describe())
    servicer = FleetGateway(
        directory, artifacts, api_client, settings.heartbeat_write_seconds,
        credentials=device_credentials, keystore=keystore,
        device_cert_validity=settings.device_cert_validity, remote_writer=remote_writer,
        replica=settings.identity, last_seen_write_s=settings.last_seen_write_seconds,
        limits=GatewayLimits(
            status_progress_seconds=settings.download_progress_write_seconds),
        thresholds=HealthThresholds(
            memory_available_percent=settings.memory_pressure_percent,
            disk_free_percent=settings.disk_pressure_percent,
            temperature_celsius=settings.overheating_celsius,
            clock_offset_seconds=settings.clock_skew_seconds),
        dataset=dataset)
    lease = GatewayLease(
        client.CustomObjectsApi(api_client), namespace=settings.lease_namespace,
        name=liveness.lease_name(settings.identity),
        replica=settings.identity, duration_s=settings.lease_duration_seconds,
        renew_s=settings.lease_renew_seconds, regained=servicer.write_every_session)
    try:  # before the first session: the controller judges its devices by it
        await lease.take()
    except API_ERRORS as error:
        logger.error("cannot serve the fleet gateway without its Lease: %s", error)
        return None
    server = create_gateway_server(servicer, settings.listen_host, settings.grpc_port,
                                   settings.enrolment_port, keystore)
    await server.start()
    if keystore:
        logger.info("fleet gateway: sessions on %s:%d (mutual TLS), enrolment on %s:%d (TLS)",
                    settings.listen_host, settings.grpc_port, settings.listen_host,
                    settings.enrolment_port)
    else:
        logger.info("fleet gateway on %s:%d (plaintext)", settings.listen_host,
                    settings.grpc_port)
    return RunningGateway(server, servicer, lease, keystore, remote_writer)


async def refresh_ca(keystore: Keystore, gateway: FleetGateway, interval_s: float) -> None:
    """Reads the CA Secret again and again: a rotated CA serves from the next handshake,
    and connected devices get the new trust bundle at once."""
    while True:
        await asyncio.sleep(interval_s)
        if await keystore.refresh():
            gateway.trust_changed()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--version" in argv:
        print(f"{PROGRAM} {version('edgefleet')}")
        return
    if argv[:1] == ["crds"]:  # Helm installs CRDs but never upgrades them
        from edgefleet.operator.crdgen import all_crds

        print(all_crds(), end="")
        return
    try:
        settings = OperatorSettings(_cli_parse_args=argv)
        # Before the API server is asked anything: another process on a port says so.
        ports = {"--metrics-port": settings.metrics_port}
        if settings.role != "controller":  # the gateway's
            ports["--grpc-port"] = settings.grpc_port
            if not settings.insecure_plaintext:
                ports["--enrolment-port"] = settings.enrolment_port
        ensure_free(settings.listen_host, ports)
    except (ValidationError, SettingsError, BadConfiguration) as error:
        exit_bad_configuration(PROGRAM, describe_settings_error(error))
    configure_logging(settings.log_level, settings.log_format)
    metrics.describe_process(version("edgefleet"))
    if logging.getLogger().level > logging.DEBUG:
        # kopf notes every successful handler call at INFO; keep its warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        code = asyncio.new_event_loop().run_until_complete(run(settings))
    except config.ConfigException as error:
        exit_bad_configuration(PROGRAM, f"no Kubernetes credentials: {error} (in a pod, "
                                        "its service account; elsewhere, KUBECONFIG)")
    # run() has done all a stopping operator owes (sessions ended, servers stopped, the
    # Lease released). Closing the loop and the interpreter after thousands of gRPC
    # calls can wait 30 s and more on gRPC's poller thread, blocked writing to a socket
    # the closed loop no longer reads (grpc/grpc#40989); a successor would wait as long.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
