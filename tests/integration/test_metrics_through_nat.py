"""Metrics that cross NAT: an edge runtime that no Prometheus can scrape sends its
samples over its own gateway session; the gateway remote-writes them into a real
Prometheus. A cut of the link delays them but loses none."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import testmodels

from tests.conftest import Fleet, Kube, StartOperator, StartPrometheus
from tests.helpers import Traffic, eventually
from tests.integration.test_edge_cloud_link import edge_model, publish
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration
SERIES = 'edgefleet_inference_requests_total{device="cam-1",model="digits",outcome="success"}'


def test_samples_taken_while_the_link_was_cut_arrive_afterwards(
    kube: Kube, namespace: str, start_operator: StartOperator,
    prometheus: StartPrometheus, tmp_path: Path,
) -> None:
    server = prometheus([])  # it scrapes nothing: devices are out of its reach
    remote_write = ("--metrics-remote-write-url", f"{server.url}/api/v1/write")
    fleet = Fleet(kube, namespace, lambda *extra, **kw: start_operator(
        *extra, *remote_write, **kw), tmp_path)
    running = contextlib.ExitStack()  # traffic, once the model serves
    try:
        fleet.add_device("cam-1", site="plant-7")
        edge = fleet.start("cam-1", "--metrics-push-seconds", "1")
        uri, sha = publish(tmp_path, testmodels.scaled(2.0))
        kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha,
                                                        site="plant-7"))
        wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Healthy"}, timeout=60)

        running.enter_context(Traffic([edge.grpc_url]))
        eventually(lambda: server.value(SERIES), timeout=60,
                   what="the device's samples in Prometheus through the gateway")

        fleet.operator.kill()  # the link is cut; the device keeps serving and sampling
        cut_from = time.time()
        time.sleep(8)
        cut_to = time.time()
        assert server.value(f"count_over_time({SERIES}[7s])") in (None, 0, 1)
        fleet.restart_operator(*remote_write)

        def during_cut() -> list[tuple[float, float]] | None:
            values = server.samples(SERIES, cut_from, cut_to)
            return values if len(values) >= 6 else None

        values = eventually(during_cut, timeout=60, what="samples taken during the cut")
        print(f"\n{len(values)} samples taken during the 8 s cut arrived after reconnecting")
        assert [v for _, v in values] == sorted(v for _, v in values)  # a counter, in order
        assert values[-1][1] > values[0][1]  # requests went on during the cut
        assert "edgefleet_inference_requests_total" in edge.metrics()  # local scrape too
        # Every sample a real runtime sends is one the gateway takes (the allowlist).
        _, operator_metrics = fleet.operator.get("/metrics")
        assert "edgefleet_operator_gateway_refused_samples_total{" not in operator_metrics
        assert "edgefleet_operator_gateway_refused_messages_total{" not in operator_metrics
    finally:
        running.close()
        fleet.stop()
