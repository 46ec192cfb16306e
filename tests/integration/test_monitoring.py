"""The alert rules and dashboards in monitoring/: promtool checks and unit-tests the
rules, and a real Prometheus, scraping a real operator and real edge runtimes of a
fleet in trouble on purpose, answers every dashboard query and every alert expression
with data."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import testmodels
import yaml

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from tests.conftest import Fleet, Prometheus, StartPrometheus
from tests.helpers import MONITORING, Traffic, alert_expressions, eventually
from tests.integration.test_edge_cloud_link import edge_model, publish
from tests.integration.test_gateway_security import FakeDevice, connect_fake, written
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run `make prometheus` (make test does)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=MONITORING)


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0 and "SUCCESS: 12 rules found" in checked.stdout, checked
    tested = promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for board in sorted((MONITORING / "dashboards").glob("*.json")):
        for panel in json.loads(board.read_text())["panels"]:
            for target in panel["targets"]:
                queries.append((f"{board.stem}: {panel['title']}", target["expr"]))
    return queries


def finite(server: Prometheus, promql: str) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in server.query(promql))


def test_prometheus_answers_every_dashboard_query_and_every_alert_fires(
    fleet: Fleet, prometheus: StartPrometheus, devices: list[FakeDevice], tmp_path: Path,
) -> None:
    """A fleet in trouble on purpose: a device offline, a rollout rolled back, another
    held at a gate with its canary failing half its requests, an artifact that fails
    verification, devices whose metrics buffer overflows (no remote write, a tiny
    buffer), a device overheating (its thermal zone at 95 °C) and one short of memory
    and disk, its clock an hour behind, with a model that failed there, and three of six
    devices offline. Every dashboard query returns data, and so does every alert
    expression."""
    kube, namespace = fleet.kube, fleet.namespace
    hot = tmp_path / "hot-sys" / "class" / "thermal" / "thermal_zone0"
    hot.mkdir(parents=True)
    (hot / "temp").write_text("45000\n")  # 95 °C once its canary step holds
    for name, site in (("cam-1", "plant-7"), ("cam-2", "plant-7"), ("cam-3", "plant-9")):
        fleet.add_device(name, site=site)
        fleet.start(name, "--metrics-push-seconds", "0.2", "--metrics-buffer-bytes", "65536",
                    *(["--sysfs-path", str(tmp_path / "hot-sys")] if name == "cam-1" else []))
    fleet.add_device("cam-4", site="plant-9")
    troubled = connect_fake(fleet, devices, "cam-4")
    written(fleet, troubled, pb.DeviceMessage(heartbeat=pb.Heartbeat(
        models=[pb.ModelState(name="digits", version="0", digest="sha256:" + "0" * 64,
                              state=pb.ModelState.FAILED, message="not enough disk")],
        health=pb.Health(memory_available_bytes=1, memory_total_bytes=100, disk_free_bytes=1,
                         disk_total_bytes=100, time_ms=int(time.time() * 1000) - 3_600_000))),
        lambda status: status.get("healthSummary") == "MemoryPressure,DiskPressure,ClockSkew",
        "cam-4 in trouble")
    for name in ("cam-5", "cam-6"):  # seen once, then gone: with cam-3, many offline
        fleet.add_device(name, site="plant-9")
        connect_fake(fleet, devices, name).close()
    stable_uri, stable_sha = publish(fleet.root, testmodels.scaled(1.0))
    for model in ("digits", "doomed"):
        kube.create("edgemodels", namespace,
                    edge_model(model, "1", stable_uri, stable_sha, site="plant-7"))
        wait_status(kube, "edgemodels", namespace, model, {"phase": "Healthy"}, timeout=60)
    broken_uri, broken_sha = publish(fleet.root, b"not an onnx model")
    kube.patch("edgemodels", namespace, "doomed", {"spec": {
        "version": "2", "source": {"uri": broken_uri, "sha256": broken_sha}}})
    kube.create("edgemodels", namespace,
                edge_model("unverified", "1", stable_uri, "0" * 64, site="plant-7"))
    flaky_uri, flaky_sha = publish(fleet.root, testmodels.flaky_scaled(2.0))
    kube.patch("edgemodels", namespace, "digits", {"spec": {
        "version": "2", "source": {"uri": flaky_uri, "sha256": flaky_sha}, "rollout": {
            "strategy": "Canary", "steps": [{"percent": 50, "manualApproval": True}],
            "analysis": {"minRequests": 10, "maxErrorRate": 0.9}}}})
    wait_status(kube, "edgemodels", namespace, "doomed", {"phase": "RolledBack"}, timeout=60)
    wait_status(kube, "edgemodels", namespace, "digits", {"stepSummary": "1/2"}, timeout=60)
    # Hot only now: a device under pressure would be held back from the canary.
    (hot / "temp").write_text("95000\n")
    fleet.edges.pop("cam-3").process.kill()  # offline from now on

    # Scraped as a site would scrape its devices: the devices' job, a device label.
    edges = {f"127.0.0.1:{fleet.edges[n].metrics_port}": {"device": n, "job": "edgefleet-edge"}
             for n in fleet.edges}
    # Started once the rollout holds at its step: the step has not changed since.
    # The alert rules as they are, but firing at once: their `for` is minutes long.
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    immediate = tmp_path / "alerts-now.yaml"
    immediate.write_text(yaml.safe_dump(rules))
    server = prometheus([f"127.0.0.1:{fleet.operator.metrics_port}", *edges], edges,
                        rule_files=[immediate])
    with Traffic([edge.grpc_url for edge in fleet.edges.values()]):
        for where, expr in dashboard_queries():
            promql = (expr.replace("$__rate_interval", "30s").replace("$namespace", namespace)
                      .replace("$model", "digits").replace("$device", "cam-1"))
            eventually(lambda q=promql: finite(server, q), timeout=90,
                       what=f"data for {where}: {promql}")
        for alert, expr in alert_expressions().items():
            eventually(lambda q=expr: server.query(q), timeout=90,
                       what=f"the expression of {alert} to return data: {expr}")
        # Each device alert fires naming the device in trouble (and the model).
        for alert, labels in (
                ("EdgeFleetDeviceOffline", {"device": "cam-3"}),
                ("EdgeFleetDeviceOverheating", {"device": "cam-1"}),
                ("EdgeFleetDeviceMemoryPressure", {"device": "cam-4"}),
                ("EdgeFleetDeviceDiskPressure", {"device": "cam-4"}),
                ("EdgeFleetDeviceClockSkew", {"device": "cam-4"}),
                ("EdgeFleetDeviceModelFailed", {"device": "cam-4", "model": "digits"})):
            selector = ",".join(f'{key}="{value}"' for key, value in
                                {"alertname": alert, "alertstate": "firing",
                                 "namespace": namespace, **labels}.items())
            eventually(lambda q=f"ALERTS{{{selector}}}": server.query(q), timeout=60,
                       what=f"{alert} firing for {labels}")
