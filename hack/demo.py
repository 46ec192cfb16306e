"""`make demo` / `make demo-down`: the local control plane, the operator, and the
example EdgeDevices and EdgeModel, ending with `kubectl get em,ed`.

    python hack/demo.py up     # idempotent: reuses a running control plane
    python hack/demo.py down   # stops the operator and the control plane
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
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
OPERATOR_PID = DEMO_DIR / "operator.pid"
NAMESPACE = "fleet"


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


def start_operator(cluster: localcluster.Cluster) -> int:
    DEMO_DIR.mkdir(exist_ok=True)
    port = localcluster.free_port()
    log_path = DEMO_DIR / "operator.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.operator", "--listen-host", "127.0.0.1",
             "--metrics-port", str(port)],
            env=cluster.env(), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    OPERATOR_PID.write_text(str(process.pid))

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


def stop_operator() -> None:
    if not OPERATOR_PID.exists():
        return
    pid = int(OPERATOR_PID.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    OPERATOR_PID.unlink()
    print(f">> stopped the operator (pid {pid})", file=sys.stderr)


def up() -> None:
    step("Local control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster = existing_cluster() or localcluster.up(CLUSTER_DIR)
    print(kubectl(cluster, "get", "namespaces"), end="")

    step("CustomResourceDefinitions from crds/")
    print(kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f",
                  str(REPO_ROOT / "crds")), end="")
    kubectl(cluster, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/edgemodels.edgefleet.io", "crd/edgedevices.edgefleet.io")

    step("The operator")
    stop_operator()
    port = start_operator(cluster)
    print(f"leading; metrics at http://127.0.0.1:{port}/metrics, log in .demo/operator.log")

    step("Example EdgeDevices and EdgeModel from examples/")
    print(kubectl(cluster, "apply", "-f", str(REPO_ROOT / "examples")), end="")
    wait_until(lambda: kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                               "jsonpath={.status.readySummary}") == "0/2",
               "the operator to target the two plant-7 cameras")

    step(f"kubectl get em,ed -n {NAMESPACE}")
    print(kubectl(cluster, "get", "em,ed", "-n", NAMESPACE), end="")
    print(f"""
The EdgeModel targets the two cameras at plant-7 and stays Pending until their edge
runtimes connect and report it Ready. Look around with:
  export KUBECONFIG={cluster.kubeconfig}
  export PATH={cluster.bin_dir}:$PATH
  kubectl describe em digits -n {NAMESPACE}
  kubectl label ed cam-0003 -n {NAMESPACE} site=plant-7 --overwrite   # READY becomes 0/3
Stop everything with: make demo-down""")


def down() -> None:
    stop_operator()
    localcluster.down(CLUSTER_DIR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args()
    up() if args.command == "up" else down()


if __name__ == "__main__":
    main()
