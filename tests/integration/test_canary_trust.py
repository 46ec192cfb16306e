"""One device must not decide a canary: the attacks on the summed analysis, replayed
against the real API server and operator.

Each device's statistics are written into its EdgeDevice status the way the gateway
writes what a device reports; one of five devices lies, with the figures an attacker
used against the analysis that summed raw counts: 2^62 requests to pass a cohort that
fails half its requests, 10^6 errors to force a rollback of a healthy version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import testmodels

from tests.conftest import Kube, StartOperator
from tests.helpers import eventually
from tests.integration.test_edge_cloud_link import edge_model, publish
from tests.integration.test_operator import (  # noqa: F401 (gateway_alive: autouse)
    device_body,
    gateway_alive,
    report,
    status_of,
    wait_status,
)

pytestmark = pytest.mark.integration

DEVICES = [f"cam-{i}" for i in range(5)]
LIAR = "cam-4"
BOUNDS = [0.001, 0.01, 0.1]
ANALYSIS = {"minRequests": 100, "maxErrorRate": 0.02, "maxP99LatencyMs": 50}


def inference(version: str, requests: int, errors: int) -> dict[str, Any]:
    return {"model": "digits", "version": version, "requests": requests, "errors": errors,
            "latencyBoundsSeconds": BOUNDS, "latencyCounts": [requests + errors, 0, 0, 0],
            "topClassCounts": [requests]}


def canary_to_version_2(kube: Kube, namespace: str, start_operator: StartOperator,
                        root: Path) -> None:
    """Five devices serve version 1; version 2 goes to all of them in one canary step
    that waits for the analysis."""
    start_operator()
    for name in DEVICES:
        kube.create("edgedevices", namespace, device_body(name, site="plant-7"))
    uri, sha = publish(root, testmodels.scaled(1.0))
    kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha, site="plant-7"))
    for name in DEVICES:
        report(kube, namespace, name, ("digits", "1", "Ready"))
    wait_status(kube, "edgemodels", namespace, "digits",
                {"phase": "Healthy", "stableVersion": "1"}, timeout=60)
    uri, sha = publish(root, testmodels.scaled(2.0))
    kube.patch("edgemodels", namespace, "digits", {"spec": {
        "version": "2", "source": {"uri": uri, "sha256": sha},
        "rollout": {"strategy": "Canary", "maxUnavailable": "100%", "analysis": ANALYSIS,
                    "steps": [{"percent": 100}]}}})
    wait_status(kube, "edgemodels", namespace, "digits", {"phase": "Progressing"})


def analysis_of(kube: Kube, namespace: str) -> dict[str, Any]:
    return (status_of(kube, "edgemodels", namespace, "digits").get("rollout") or {}).get(
        "analysis") or {}


def device_reports(kube: Kube, namespace: str, stats: dict[str, tuple[int, int]]) -> None:
    """Each device holds version 2, Ready, and reports these (requests, errors)."""
    for name, (requests, errors) in stats.items():
        report(kube, namespace, name, ("digits", "2", "Ready"))
        kube.patch_status("edgedevices", namespace, name,
                          {"inference": [inference("2", requests, errors)]})


def test_one_device_claiming_2_pow_62_requests_cannot_pass_a_failing_canary(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    canary_to_version_2(kube, namespace, start_operator, tmp_path)
    device_reports(kube, namespace, {LIAR: (2**62, 0)})  # first, alone
    eventually(lambda: analysis_of(kube, namespace).get("verdict") == "Wait"
               and analysis_of(kube, namespace)["requests"] == 0,
               what=f"a waiting analysis (now {analysis_of(kube, namespace)})")
    device_reports(kube, namespace, dict.fromkeys(DEVICES[:4], (100, 100)))  # 50 % fail
    status = wait_status(kube, "edgemodels", namespace, "digits", {"phase": "RolledBack"},
                         timeout=60)
    analysis = status["rollout"]["analysis"]
    assert analysis["verdict"] == "Fail" and analysis["errorRate"] == 0.5
    assert analysis["requests"] <= 5 * 200  # the liar counts as much as the median device
    assert "median error rate 0.500" in analysis["message"]
    assert status["stableVersion"] == "1"


def test_one_device_reporting_a_million_errors_cannot_force_a_rollback(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    canary_to_version_2(kube, namespace, start_operator, tmp_path)
    healthy = dict.fromkeys(DEVICES[:4], (100, 0))
    device_reports(kube, namespace, {**healthy, LIAR: (0, 10**6)})
    status = wait_status(kube, "edgemodels", namespace, "digits",
                         {"phase": "Healthy", "stableVersion": "2"}, timeout=60)
    assert {h["outcome"] for h in status["history"]} == {"Promoted"}, status["history"]
    assert not [e for e in kube.events(namespace, "digits") if e.reason == "RolledBack"]
