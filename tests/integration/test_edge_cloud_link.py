"""End to end: control plane, operator with its fleet gateway, and `edgefleet-edge run`
processes on loopback. `kubectl apply` of an EdgeModel ends with the model verified,
loaded and answering on every targeted device."""

from __future__ import annotations

import hashlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import testmodels
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import EdgeProcess, Fleet, Kube
from tests.helpers import eventually, printed_row
from tests.integration.test_operator import wait_status

pytestmark = pytest.mark.integration


def publish(root: Path, model: bytes) -> tuple[str, str]:
    """Puts an artifact where the operator can read it; returns (uri, sha256)."""
    sha = hashlib.sha256(model).hexdigest()
    path = root / f"{sha}.onnx"
    path.write_bytes(model)
    return path.as_uri(), sha


def edge_model(name: str, version: str, uri: str, sha: str, **match: str) -> dict[str, Any]:
    return {"apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeModel",
            "metadata": {"name": name},
            "spec": {"version": version, "source": {"uri": uri, "sha256": sha},
                     "selector": {"matchLabels": match}}}


def answer(edge: EdgeProcess, model: str) -> float:
    stock = triton_grpc.InferenceServerClient(edge.grpc_url)
    item = triton_grpc.InferInput("x", [1, 4], "FP32")
    item.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    return float(stock.infer(model, [item]).as_numpy("y")[0, 0])


def one_device_serving(fleet: Fleet, factor: float, version: str = "1") -> EdgeProcess:
    """Device cam-1 at plant-7 serving EdgeModel digits (y = factor * x), Healthy."""
    fleet.add_device("cam-1", site="plant-7")
    edge = fleet.start("cam-1")
    uri, sha = publish(fleet.root, testmodels.scaled(factor))
    fleet.kube.create("edgemodels", fleet.namespace,
                      edge_model("digits", version, uri, sha, site="plant-7"))
    wait_status(fleet.kube, "edgemodels", fleet.namespace, "digits", {"phase": "Healthy"},
                timeout=60)
    return edge


def reported(kube: Kube, namespace: str, device: str) -> list[dict[str, Any]]:
    return kube.get("edgedevices", namespace, device).get("status", {}).get("models", [])


def test_apply_to_ready_on_targeted_devices_relabel_and_withdraw(fleet: Fleet) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    for name, site in (("cam-1", "plant-7"), ("cam-2", "plant-7"), ("cam-3", "plant-9")):
        fleet.add_device(name, site=site)
        fleet.start(name)
    uri, sha = publish(fleet.root, testmodels.scaled(3.0))
    kube.create("edgemodels", namespace, edge_model("digits", "1.0.0", uri, sha,
                                                    site="plant-7"))

    wait_status(kube, "edgemodels", namespace, "digits",
                {"phase": "Healthy", "readySummary": "2/2"}, timeout=60)
    for device in ("cam-1", "cam-2"):
        (held,) = reported(kube, namespace, device)
        assert (held["name"], held["version"], held["state"]) == ("digits", "1.0.0", "Ready")
        assert held["digest"] == f"sha256:{sha}"
        assert answer(fleet.edges[device], "digits") == 3.0
    assert reported(kube, namespace, "cam-3") == []
    # A repository client sees what the cloud assigned, and may not change it here.
    repository = triton_grpc.InferenceServerClient(fleet.edges["cam-1"].grpc_url)
    assert repository.get_model_repository_index(as_json=True)["models"] == [
        {"name": "digits", "version": "1.0.0", "state": "READY"}]
    with pytest.raises(InferenceServerException, match=f"EdgeDevice {namespace}/cam-1"):
        repository.unload_model("digits")
    printed = printed_row(kube.kubectl("get", "em", "digits", "-n", namespace).stdout)
    assert (printed["VERSION"], printed["READY"], printed["PHASE"]) == ("1.0.0", "2/2", "Healthy")
    devices = kube.kubectl("get", "ed", "-n", namespace).stdout
    assert [(row["PHASE"], row["HEALTH"], row["MODELS"])
            for row in (printed_row(devices, i) for i in range(3))] == [
        ("Online", "Healthy", "1"), ("Online", "Healthy", "1"), ("Online", "Healthy", "0")]

    # Relabel: the model follows the label.
    kube.patch("edgedevices", namespace, "cam-3", {"metadata": {"labels": {"site": "plant-7"}}})
    kube.patch("edgedevices", namespace, "cam-1", {"metadata": {"labels": {"site": "plant-9"}}})
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "2/2"}, timeout=60)
    eventually(lambda: reported(kube, namespace, "cam-1") == [], timeout=30,
               what="cam-1 to drop the model")
    assert answer(fleet.edges["cam-3"], "digits") == 3.0

    # Delete: it leaves every device, then the object goes.
    kube.delete("edgemodels", namespace, "digits")
    eventually(lambda: kube.kubectl("get", "em", "digits", "-n", namespace,
                                    check=False).returncode != 0,
               timeout=60, what="the EdgeModel to be withdrawn and gone")
    for device in ("cam-1", "cam-2", "cam-3"):
        assert reported(kube, namespace, device) == []
        assert not triton_grpc.InferenceServerClient(
            fleet.edges[device].grpc_url).is_model_ready("digits")


def test_a_restarted_edge_serves_its_last_known_good_model_without_the_cloud(
    fleet: Fleet,
) -> None:
    edge = one_device_serving(fleet, 5.0, version="2")
    fleet.operator.kill()  # the cloud goes away
    edge.process.send_signal(signal.SIGTERM)
    edge.process.wait(timeout=20)
    restarted = fleet.start("cam-1")  # ready means serving, with no cloud to ask
    assert answer(restarted, "digits") == 5.0
    assert "edgefleet_cloud_connected 0.0" in restarted.metrics()


def test_twenty_edge_runtimes_converge_on_one_model(fleet: Fleet) -> None:
    kube, namespace = fleet.kube, fleet.namespace
    names = [f"cam-{i:02d}" for i in range(20)]
    for name in names:
        fleet.add_device(name, site="plant-7")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(fleet.start, names))
    eventually(lambda: all(kube.get("edgedevices", namespace, n).get("status", {}).get("phase")
                           == "Online" for n in names), timeout=120, what="all 20 online")

    uri, sha = publish(fleet.root, testmodels.mlp())
    started = time.monotonic()
    kube.create("edgemodels", namespace, edge_model("mlp", "1", uri, sha, site="plant-7"))
    wait_status(kube, "edgemodels", namespace, "mlp", {"readySummary": "20/20"}, timeout=180)
    elapsed = time.monotonic() - started
    print(f"\n20 edge runtimes converged on one EdgeModel in {elapsed:.1f} s "
          "(apply to READY 20/20)")
    assert all(reported(kube, namespace, n)[0]["digest"] == f"sha256:{sha}" for n in names)
