"""The operator's Prometheus metrics and the HTTP server for /metrics, /healthz, /readyz."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import get_args

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from edgefleet.operator.fleet import PhaseTally
from edgefleet.operator.resources import DevicePhase, ModelPhase

RECONCILES = Counter(
    "edgefleet_operator_reconciles", "Status reconciliations by resource and outcome",
    ["resource", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "edgefleet_operator_reconcile_duration_seconds", "Time to reconcile one object's status",
    ["resource"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEADER = Gauge("edgefleet_operator_leader", "1 while this replica holds the leader lease")

MODEL_PHASES = PhaseTally(get_args(ModelPhase))
DEVICE_PHASES = PhaseTally(get_args(DevicePhase))


class PhaseCollector(Collector):
    """Reads the tallies at scrape time, so the gauges never go stale."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, help_text, tally in (
            ("edgefleet_operator_models", "EdgeModels by phase", MODEL_PHASES),
            ("edgefleet_operator_devices", "EdgeDevices by phase", DEVICE_PHASES),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["phase"])
            for phase, count in tally.counts().items():
                family.add_metric([phase], count)
            yield family


REGISTRY.register(PhaseCollector())


def health_app(is_ready: Callable[[], bool]) -> web.Application:
    """/healthz: the process answers. /readyz: it leads and kopf is up (or it stands by
    ready to take over: a standby is healthy, just not acting). /metrics: Prometheus."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if is_ready() else web.Response(
            status=503, text="not leading\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz),
                    web.get("/metrics", metrics)])
    return app
