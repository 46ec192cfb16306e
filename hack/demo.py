"""`make demo` / `make demo-down`: the local control plane, the operator with its fleet
gateway, three edge runtimes, the example EdgeDevices and an EdgeModel rolled out to
the two that match, answering inference; then a canary rollout of a new version under
live traffic, gated on what the devices measure; ends with `kubectl get em,ed`.

    python hack/demo.py up     # idempotent: reuses a running control plane
    python hack/demo.py down   # stops the operator and the control plane
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

# Explicitly: under PYTHONSAFEPATH (see the Makefile) Python adds no script directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import localcluster

REPO_ROOT = localcluster.REPO_ROOT
CLUSTER_DIR = REPO_ROOT / ".cluster"
DEMO_DIR = REPO_ROOT / ".demo"
NAMESPACE = "fleet"
DEVICES = ("cam-0001", "cam-0002", "cam-0003")


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def kubectl(cluster: localcluster.Cluster, *args: str) -> str:
    result = subprocess.run([str(cluster.kubectl), *args], env=cluster.env(), check=True,
                            capture_output=True, text=True)
    return result.stdout


def existing_cluster() -> localcluster.Cluster | None:
    kubeconfig = CLUSTER_DIR / "kubeconfig"
    if not (kubeconfig.exists() and all(localcluster.alive(CLUSTER_DIR, name)
                                        for name in localcluster.COMPONENTS)):
        return None
    return localcluster.Cluster(state_dir=CLUSTER_DIR, server="", kubeconfig=kubeconfig,
                                bin_dir=localcluster.ensure_binaries())


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out waiting for {what}")


def start_operator(cluster: localcluster.Cluster, grpc_port: int) -> int:
    DEMO_DIR.mkdir(exist_ok=True)
    port = localcluster.free_port()
    log_path = DEMO_DIR / "logs" / "operator.log"
    process = localcluster.spawn(DEMO_DIR, "operator", [
        sys.executable, "-m", "edgefleet.operator", "--listen-host", "127.0.0.1",
        "--metrics-port", str(port), "--grpc-port", str(grpc_port),
        # Device statistics every 5 s rather than 30: the canary is judged sooner.
        "--heartbeat-write-seconds", "5",
        "--artifact-cache-dir", str(DEMO_DIR / "artifacts")], env=cluster.env())

    def ready() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"demo: the operator exited; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ready, "the operator to lead and start")
    return port


def stop_all() -> None:
    for name in (*DEVICES, "operator"):
        localcluster.stop_process(DEMO_DIR, name, grace_s=15)


def start_edges(cluster: localcluster.Cluster, grpc_port: int) -> dict[str, int]:
    """One `edgefleet-edge run` per example device; returns their gRPC inference ports."""
    ports = {}
    for device in DEVICES:
        secret = kubectl(cluster, "get", "secret", f"{device}-token", "-n", NAMESPACE,
                         "-o", "jsonpath={.data.token}")
        token_file = DEMO_DIR / f"{device}.token"
        token_file.write_bytes(base64.b64decode(secret))
        ports[device] = localcluster.free_port()
        localcluster.spawn(DEMO_DIR, device, [
            sys.executable, "-m", "edgefleet.edge_runtime", "run",
            "--cloud", f"127.0.0.1:{grpc_port}", "--namespace", NAMESPACE,
            "--device", device, "--token-file", str(token_file),
            "--data-dir", str(DEMO_DIR / f"{device}-data"), "--listen-host", "127.0.0.1",
            "--grpc-port", str(ports[device]), "--http-port", str(localcluster.free_port()),
            "--metrics-port", str(localcluster.free_port()), "--heartbeat-seconds", "2"])
    return ports


def apply_model(cluster: localcluster.Cluster) -> None:
    """examples/edgemodel.yaml with its source pointed at a model built here."""
    import testmodels  # needs onnx: installed with the project's dev extra

    model = testmodels.mlp()  # 64 inputs (8x8 pixels) to 10 classes; untrained weights
    path = DEMO_DIR / "digits-1.2.0.onnx"
    path.write_bytes(model)
    manifest = (REPO_ROOT / "examples" / "edgemodel.yaml").read_text()
    manifest = manifest.replace("https://models.example/digits-1.2.0.onnx", path.as_uri())
    manifest = re.sub(r'sha256: "[0-9a-f]{64}"',
                      f'sha256: "{hashlib.sha256(model).hexdigest()}"', manifest)
    print(subprocess.run([str(cluster.kubectl), "apply", "-f", "-"], input=manifest,
                         env=cluster.env(), check=True, capture_output=True,
                         text=True).stdout, end="")


class Traffic:
    """Clients sending requests to the devices until stopped, as an application would."""

    def __init__(self, ports: list[int]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, args=(ports,))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _send(self, ports: list[int]) -> None:
        import numpy as np
        import tritonclient.grpc as triton_grpc

        clients = [triton_grpc.InferenceServerClient(f"127.0.0.1:{port}") for port in ports]
        pixels = triton_grpc.InferInput("x", [1, 64], "FP32")
        pixels.set_data_from_numpy(np.random.default_rng(1).random((1, 64), dtype=np.float32))
        sent = 0
        while not self._stop.wait(0.01):
            clients[sent % len(clients)].infer("digits", [pixels])
            sent += 1


def canary_rollout(cluster: localcluster.Cluster, ports: list[int]) -> None:
    """Version 1.3.0 goes to one camera, is judged on its traffic there, then to both."""
    import testmodels

    model = testmodels.mlp(seed=1)
    path = DEMO_DIR / "digits-1.3.0.onnx"
    path.write_bytes(model)
    rollout = {"strategy": "Canary", "maxUnavailable": 1,
               "steps": [{"percent": 50, "pauseSeconds": 5}, {"percent": 100}],
               # No maxDrift: two untrained models disagree on every class by design.
               "analysis": {"minRequests": 50, "maxErrorRate": 0.01, "maxP99LatencyMs": 50}}
    patch = {"spec": {"version": "1.3.0", "rollout": rollout, "source": {
        "uri": path.as_uri(), "sha256": hashlib.sha256(model).hexdigest()}}}
    print(f"kubectl patch em digits -n {NAMESPACE} --type merge -p '{json.dumps(patch)}'")
    kubectl(cluster, "patch", "em", "digits", "-n", NAMESPACE, "--type", "merge",
            "-p", json.dumps(patch))
    fields = ("{.status.stepSummary}|{.status.updatedSummary}|{.status.phase}|"
              '{.status.conditions[?(@.type=="Progressing")].message}')
    started, last = time.monotonic(), ""
    print(f"{'s':>4}  {'STEP':<5} {'UPDATED':<8} {'PHASE':<12} PROGRESSING")
    with Traffic(ports):
        while time.monotonic() - started < 180:
            line = kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                           f"jsonpath={fields}")
            if line != last:
                step_summary, updated, phase, message = line.split("|", 3)
                print(f"{time.monotonic() - started:4.0f}  {step_summary or '-':<5} "
                      f"{updated:<8} {phase:<12} {message}", flush=True)
                last = line
            if phase == "Healthy" and "1.3.0" in message:
                break
            if phase in ("RolledBack", "Paused", "Failed"):
                raise SystemExit(f"demo: the rollout stopped ({phase}): {message}")
            time.sleep(0.5)
        else:
            raise SystemExit("demo: the rollout did not finish in 180 s")
    print(f"\nkubectl get events -n {NAMESPACE} --field-selector involvedObject.name=digits")
    print(kubectl(cluster, "get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp",
                  "--field-selector", "involvedObject.name=digits",
                  "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message"), end="")


def up() -> None:
    step("Local control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster = existing_cluster() or localcluster.up(CLUSTER_DIR)
    print(kubectl(cluster, "get", "namespaces"), end="")

    step("CustomResourceDefinitions from crds/")
    print(kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f",
                  str(REPO_ROOT / "crds")), end="")
    kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/edgemodels.edgefleet.io", "crd/edgedevices.edgefleet.io")

    step("The operator and its fleet gateway")
    stop_all()
    grpc_port = localcluster.free_port()
    port = start_operator(cluster, grpc_port)
    print(f"leading; gateway on 127.0.0.1:{grpc_port}; metrics at "
          f"http://127.0.0.1:{port}/metrics; log in .demo/logs/operator.log")

    step("Example EdgeDevices and their token Secrets (examples/devices.yaml)")
    print(kubectl(cluster, "apply", "-f", str(REPO_ROOT / "examples" / "devices.yaml")), end="")

    step("Three edge runtimes dial the gateway (edgefleet-edge run)")
    ports = start_edges(cluster, grpc_port)
    wait_until(lambda: kubectl(cluster, "get", "ed", "-n", NAMESPACE, "-o",
                               "jsonpath={.items[*].status.phase}").split() == ["Online"] * 3,
               "the three devices to come online")
    print(kubectl(cluster, "get", "ed", "-n", NAMESPACE), end="")

    step("The EdgeModel (examples/edgemodel.yaml, with a model built here)")
    apply_model(cluster)
    wait_until(lambda: kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                               "jsonpath={.status.readySummary}") == "2/2",
               "the model to be Ready on the two plant-7 cameras")

    step("Inference on each targeted device (tritonclient, gRPC)")
    import numpy as np
    import tritonclient.grpc as triton_grpc

    pixels = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    for device in ("cam-0001", "cam-0002"):
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{ports[device]}")
        inputs = [triton_grpc.InferInput("x", [1, 64], "FP32")]
        inputs[0].set_data_from_numpy(pixels)
        logits = client.infer("digits", inputs).as_numpy("logits")
        print(f"{device}: class {int(logits.argmax())} "
              f"(127.0.0.1:{ports[device]}, model digits 1.2.0)")

    step("A canary rollout of 1.3.0 under live traffic, gated on the devices' measurements")
    canary_rollout(cluster, [ports["cam-0001"], ports["cam-0002"]])

    step(f"kubectl get em,ed -n {NAMESPACE}")
    print(kubectl(cluster, "get", "em,ed", "-n", NAMESPACE), end="")
    print(f"""
The model reached the two cameras at plant-7 (cam-0003 is at plant-9) and answers
there; the weights are untrained, so the class is arbitrary. Version 1.3.0 went to
one camera first, was judged on its own traffic there, then went to both. Look around
with:
  export KUBECONFIG={cluster.kubeconfig}
  export PATH={cluster.bin_dir}:$PATH
  kubectl describe em digits -n {NAMESPACE}
  kubectl label ed cam-0003 -n {NAMESPACE} site=plant-7 --overwrite   # then READY 3/3
Logs are in .demo/logs/. Stop everything with: make demo-down""")


def down() -> None:
    stop_all()
    localcluster.down(CLUSTER_DIR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    up() if args.command == "up" else down()


if __name__ == "__main__":
    main()
