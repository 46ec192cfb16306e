"""The alert rules and dashboards in monitoring/: promtool checks and unit-tests the
rules, and a real Prometheus, scraping a real operator and two real edge runtimes
while a canary rollout holds at a gate under traffic, answers every dashboard query
with data and knows every metric and label the alerts name."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import testmodels
import tritonclient.grpc as triton_grpc

from tests.conftest import Fleet, Prometheus, StartPrometheus
from tests.helpers import eventually
from tests.integration.test_edge_cloud_link import edge_model, publish
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration
MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
# A selector of one of our metrics: name and optional label matchers.
SELECTOR = re.compile(r"(edgefleet_[a-z_]+|process_[a-z_]+)(\{[^}]*\})?")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run `make prometheus` (make test does)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=MONITORING)


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked
    tested = promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for board in sorted((MONITORING / "dashboards").glob("*.json")):
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel["targets"]:
                queries.append((f"{board.stem}: {panel['title']}", target["expr"]))
    return queries


def alert_expressions() -> dict[str, str]:
    import yaml

    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def finite(server: Prometheus, promql: str) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in server.query(promql))


class Traffic:
    """Requests to each device until stopped."""

    def __init__(self, urls: list[str]) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(url,)) for url in urls]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _send(self, url: str) -> None:
        stock = triton_grpc.InferenceServerClient(url)
        item = triton_grpc.InferInput("x", [1, 4], "FP32")
        item.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        while not self._stop.wait(0.02):
            stock.infer("digits", [item])


def test_prometheus_answers_every_dashboard_query_and_knows_every_alert_metric(
    fleet: Fleet, prometheus: StartPrometheus,
) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    for name in ("cam-1", "cam-2"):
        fleet.add_device(name, site="plant-7")
        fleet.start(name)
    edges = {f"127.0.0.1:{fleet.edges[n].metrics_port}": {"device": n} for n in fleet.edges}
    server = prometheus([f"127.0.0.1:{fleet.operator.metrics_port}", *edges], edges)
    uri, sha = publish(fleet.root, testmodels.scaled(1.0))
    kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha, site="plant-7"))
    wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Healthy"}, timeout=60)
    # An artifact that fails verification, for the alert on it.
    kube.create("edgemodels", namespace, edge_model("broken", "1", uri, "0" * 64, site="x"))

    with Traffic([edge.grpc_url for edge in fleet.edges.values()]):
        uri, sha = publish(fleet.root, testmodels.scaled(2.0))
        kube.patch("edgemodels", namespace, "digits", {"spec": {
            "version": "2", "source": {"uri": uri, "sha256": sha}, "rollout": {
                "strategy": "Canary", "steps": [{"percent": 50, "manualApproval": True}],
                "analysis": {"minRequests": 10}}}})
        time.sleep(5)  # some seconds of traffic before the rate windows are judged
        for where, expr in dashboard_queries():
            promql = (expr.replace("$__rate_interval", "30s").replace("$namespace", namespace)
                      .replace("$model", "digits").replace("$device", "cam-1"))
            eventually(lambda q=promql: finite(server, q), timeout=90,
                       what=f"data for {where}: {promql}")

    for alert, expr in alert_expressions().items():
        server.query(expr)  # it evaluates (an error fails the query)
        for name, matchers in SELECTOR.findall(expr):
            labels = re.findall(r"([a-z_]+)\s*=~?", matchers)
            grouped = f"count by ({', '.join(labels)}) ({name})" if labels else name
            found = server.query(grouped)
            assert found, f"{alert}: no series of {name}"
            assert all(label in found[0]["metric"] for label in labels), (alert, found[0])
