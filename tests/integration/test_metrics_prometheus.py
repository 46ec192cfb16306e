"""A real Prometheus scrapes a real operator and a real edge runtime, and PromQL finds
the figures the traffic of the test produced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.conftest import Kube, StartEdge, StartOperator, StartPrometheus
from tests.helpers import eventually
from tests.integration.test_inference import infer
from tests.integration.test_operator import device_body

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_prometheus_reads_the_operator_and_edge_runtime_metrics(
    kube: Kube, namespace: str, start_operator: StartOperator, start_edge: StartEdge,
    prometheus: StartPrometheus,
) -> None:
    operator = start_operator()
    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    edge = start_edge(REPO_ROOT / "examples" / "models")
    server = prometheus([f"127.0.0.1:{operator.metrics_port}",
                         f"127.0.0.1:{edge.metrics_port}"])

    x = np.ones((1, 4), dtype=np.float32)
    for _ in range(5):
        infer(edge, "grpc", "scaled", {"x": x}, version="2")
    with pytest.raises(InferenceServerException):
        infer(edge, "http", "no-such-model", {"x": x})
    infer(edge, "grpc", "mlp", {"x": np.ones((3, 64), dtype=np.float32)})

    def scraped(promql: str, expected: float) -> bool:
        return server.value(promql) == expected

    checks = {
        'edgefleet_inference_requests_total{model="scaled",version="2",outcome="success"}': 5,
        'edgefleet_inference_requests_total{model="",outcome="not_found"}': 1,
        'edgefleet_inference_compute_duration_seconds_count{model="mlp"}': 1,
        'edgefleet_model_loaded{model="cnn",version="1"}': 1,
        "edgefleet_cloud_connected": 0,
        "edgefleet_operator_leader": 1,
        'edgefleet_operator_devices{phase="Pending"}': 1,
    }
    for promql, expected in checks.items():
        eventually(lambda q=promql, e=expected: scraped(q, e), timeout=30,
                   what=f"{promql} == {expected} (now {server.value(promql)})")
    # Latency quantiles come from the rate of the histograms: traffic between scrapes.
    def p99_under_traffic() -> float | None:
        for _ in range(5):
            infer(edge, "grpc", "scaled", {"x": x}, version="1")
        p99 = server.value('histogram_quantile(0.99, sum by (le) (rate('
                           'edgefleet_inference_request_duration_seconds_bucket'
                           '{model="scaled",version="1"}[1m])))')
        return p99 if p99 is not None and p99 == p99 else None  # NaN: no rate yet

    p99 = eventually(p99_under_traffic, timeout=30, what="a p99 latency")
    assert 0 < p99 < 10
    resident = server.query("process_resident_memory_bytes")
    assert len(resident) == 2 and all(float(r["value"][1]) > 0 for r in resident)
