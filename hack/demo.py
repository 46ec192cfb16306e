"""`make demo` / `make demo-down`: the whole system on this machine.

A local control plane, the operator with its fleet gateway, a real Prometheus, three
edge runtimes (the example EdgeDevices, at two sites); a digit classifier trained here
on scikit-learn's handwritten digits and rolled out to the three, with an int8 variant
that the operator builds and validates for the plant-9 camera; its accuracy measured at
the edge; then a retrained version rolled out, with its own int8 variant, as a canary
under live traffic, gated on what the devices measure; a plot of the rollout from
Prometheus' data; `kubectl get em,ed`.

    python hack/demo.py up     # idempotent: reuses a running control plane
    python hack/demo.py down   # stops everything `up` started
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# Explicitly: under PYTHONSAFEPATH (see the Makefile) Python adds no script directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import localcluster

if TYPE_CHECKING:  # `down` runs without the project's environment: imports stay lazy
    import digits
    import numpy as np

REPO_ROOT = localcluster.REPO_ROOT
CLUSTER_DIR = REPO_ROOT / ".cluster"
DEMO_DIR = REPO_ROOT / ".demo"
NAMESPACE = "fleet"
DEVICES = ("cam-0001", "cam-0002", "cam-0003")
# Placeholders in examples/edgemodel.yaml, replaced by the files trained here.
EXAMPLE_SOURCE = ("https://models.example/digits-1.2.0.onnx",
                  "3b1f4c1e8f0d2a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3")
EXAMPLE_DATASET = ("https://models.example/digits-validation.npz",
                   "9c0ffee0d2a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f")
PLOT = DEMO_DIR / "rollout.png"


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


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_prometheus(operator_port: int) -> str:
    """Prometheus scraping the operator; the devices' samples come in through the
    gateway (remote write), as they would from behind NAT."""
    binary = shutil.which("prometheus")
    if not binary:
        raise SystemExit("demo: prometheus is not installed; `make demo` installs it")
    port = localcluster.free_port()
    config = DEMO_DIR / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [{"job_name": "edgefleet-operator", "static_configs": [
            {"targets": [f"127.0.0.1:{operator_port}"]}]}]}))
    shutil.rmtree(DEMO_DIR / "prometheus-data", ignore_errors=True)
    localcluster.spawn(DEMO_DIR, "prometheus", [
        binary, f"--config.file={config}", f"--storage.tsdb.path={DEMO_DIR / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver"])
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{url}/-/ready"), "Prometheus to start")
    return url


def start_operator(cluster: localcluster.Cluster, grpc_port: int, enrolment_port: int,
                   port: int, remote_write_url: str) -> str:
    """Starts the operator; returns the pin of its gateway CA (from its log)."""
    log_path = DEMO_DIR / "logs" / "operator.log"
    process = localcluster.spawn(DEMO_DIR, "operator", [
        sys.executable, "-m", "edgefleet.operator", "--listen-host", "127.0.0.1",
        "--metrics-port", str(port), "--grpc-port", str(grpc_port),
        "--enrolment-port", str(enrolment_port),
        # Device statistics every 5 s rather than 30: the canary is judged sooner.
        "--heartbeat-write-seconds", "5", "--metrics-remote-write-url", remote_write_url,
        "--artifact-cache-dir", str(DEMO_DIR / "artifacts"),
        # The models trained here are read from disk: file:// sources below this only.
        "--artifact-file-roots", str(DEMO_DIR / "models")], env=cluster.env())

    def ready() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"demo: the operator exited; see {log_path}")
        return answers(f"http://127.0.0.1:{port}/readyz")

    wait_until(ready, "the operator to lead and start")
    pins = re.findall(r"ca-cert-hash=(sha256:[0-9a-f]{64})", log_path.read_text())
    if not pins:
        raise SystemExit(f"demo: the operator logged no CA pin; see {log_path}")
    return pins[-1]


def stop_all() -> None:
    for name in (*DEVICES, "operator", "prometheus"):
        localcluster.stop_process(DEMO_DIR, name, grace_s=15)


def start_edges(cluster: localcluster.Cluster, grpc_port: int, enrolment_port: int,
                ca_pin: str) -> dict[str, int]:
    """One `edgefleet-edge run` per example device, each enrolling with its bootstrap
    token and trusting the gateway by the CA's pin, as `kubeadm join` does; returns
    their gRPC inference ports."""
    ports = {}
    for device in DEVICES:
        # Each run of the demo enrols its devices afresh (the namespace is new).
        shutil.rmtree(DEMO_DIR / f"{device}-data" / "identity", ignore_errors=True)
        secret = kubectl(cluster, "get", "secret", f"{device}-token", "-n", NAMESPACE,
                         "-o", "jsonpath={.data.token}")
        token_file = DEMO_DIR / f"{device}.token"
        token_file.write_bytes(base64.b64decode(secret))
        ports[device] = localcluster.free_port()
        localcluster.spawn(DEMO_DIR, device, [
            sys.executable, "-m", "edgefleet.edge_runtime", "run",
            "--cloud", f"127.0.0.1:{grpc_port}", "--namespace", NAMESPACE,
            "--device", device, "--token-file", str(token_file), "--ca-cert-hash", ca_pin,
            "--enrolment-address", f"127.0.0.1:{enrolment_port}",
            "--data-dir", str(DEMO_DIR / f"{device}-data"), "--listen-host", "127.0.0.1",
            "--grpc-port", str(ports[device]), "--http-port", str(localcluster.free_port()),
            "--metrics-port", str(localcluster.free_port()), "--heartbeat-seconds", "2",
            "--metrics-push-seconds", "2"])
    return ports


def apply_model(cluster: localcluster.Cluster, model: digits.Digits) -> None:
    """examples/edgemodel.yaml with its source and validation set pointed at the files
    trained here."""
    manifest = (REPO_ROOT / "examples" / "edgemodel.yaml").read_text()
    for (uri, sha), path in ((EXAMPLE_SOURCE, model.versions["1.2.0"]),
                             (EXAMPLE_DATASET, model.validation)):
        manifest = manifest.replace(uri, path.as_uri()).replace(sha, sha256_of(path))
    print(subprocess.run([str(cluster.kubectl), "apply", "-f", "-"], input=manifest,
                         env=cluster.env(), check=True, capture_output=True,
                         text=True).stdout, end="")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def variants_table(cluster: localcluster.Cluster, version: str) -> None:
    """What the operator built of a version, from status.variants."""
    status = json.loads(kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                                "jsonpath={.status}"))
    source = next(a for a in (status.get("artifact"), status.get("stableArtifact"))
                  if a and a["version"] == version)
    print(f"kubectl get em digits -n {NAMESPACE} -o jsonpath='{{.status.variants}}'")
    print(f"{'VARIANT':<8} {'VERSION':<8} {'PHASE':<9} {'BYTES':>7} {'ACCURACY':>9} "
          f"{'LATENCY':>9} {'BUILD':>6}")
    for entry in status.get("variants", []):
        if entry["version"] != version:
            continue
        print(f"{'(source)':<8} {version:<8} {'-':<9} {source['sizeBytes']:>7} "
              f"{entry.get('sourceAccuracy', 0):>9.1%} "
              f"{entry.get('sourceLatencyMs', 0):>7.3f}ms {'-':>6}")
        print(f"{entry['name']:<8} {version:<8} {entry['phase']:<9} {entry.get('bytes', 0):>7} "
              f"{entry.get('accuracy', 0):>9.1%} {entry.get('latencyMs', 0):>7.3f}ms "
              f"{entry.get('buildSeconds', 0):>5.2f}s")


def accuracy_at_the_edge(cluster: localcluster.Cluster, ports: dict[str, int],
                         model: digits.Digits) -> None:
    """Every test image through tritonclient to each targeted device, one request each."""
    import numpy as np
    import tritonclient.grpc as triton_grpc

    for device in DEVICES:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{ports[device]}")
        correct, versions = 0, set()
        for pixels, label in zip(model.test_pixels, model.test_labels, strict=True):
            item = triton_grpc.InferInput("pixels", [1, 64], "FP32")
            item.set_data_from_numpy(pixels[np.newaxis])
            result = client.infer("digits", [item], outputs=[
                triton_grpc.InferRequestedOutput("label")])
            correct += int(result.as_numpy("label")[0] == label)
            versions.add(result.get_response().model_version)
        held = kubectl(cluster, "get", "ed", device, "-n", NAMESPACE, "-o",
                       "jsonpath={.status.models[*].variant}") or "source"
        print(f"{device}: {correct}/{len(model.test_labels)} test images right "
              f"({correct / len(model.test_labels):.1%}), answered by digits "
              f"{', '.join(sorted(versions))} ({held})")


class Traffic:
    """An application sending test images to the devices until stopped."""

    def __init__(self, ports: list[int], pixels: np.ndarray) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, args=(ports, pixels))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _send(self, ports: list[int], pixels: np.ndarray) -> None:
        import numpy as np
        import tritonclient.grpc as triton_grpc

        clients = [triton_grpc.InferenceServerClient(f"127.0.0.1:{port}") for port in ports]
        sent = 0
        while not self._stop.wait(0.01):
            item = triton_grpc.InferInput("pixels", [1, 64], "FP32")
            item.set_data_from_numpy(pixels[sent % len(pixels)][np.newaxis])
            clients[sent % len(clients)].infer("digits", [item])
            sent += 1


def canary_rollout(cluster: localcluster.Cluster, ports: list[int], model: digits.Digits,
                   ) -> None:
    """The retrained version goes to part of the cameras, is judged on its own traffic
    there against the stable one (errors, p99, drift of its answers), then to all; the
    plant-9 camera gets its int8 build, made and validated before the rollout starts."""
    rollout = {"strategy": "Canary", "maxUnavailable": 1,
               "steps": [{"percent": 50, "pauseSeconds": 10}, {"percent": 100}],
               "analysis": {"minRequests": 200, "maxErrorRate": 0.01,
                            "maxP99LatencyMs": 50, "maxDrift": 0.1}}
    retrained = model.versions["1.3.0"]
    patch = {"spec": {"version": "1.3.0", "rollout": rollout, "source": {
        "uri": retrained.as_uri(), "sha256": sha256_of(retrained)}}}
    print(f"kubectl patch em digits -n {NAMESPACE} --type merge -p '{json.dumps(patch)}'")
    kubectl(cluster, "patch", "em", "digits", "-n", NAMESPACE, "--type", "merge",
            "-p", json.dumps(patch))
    fields = ("{.status.stepSummary}|{.status.updatedSummary}|{.status.phase}|"
              "{.status.stableVersion}|"
              '{.status.conditions[?(@.type=="Progressing")].message}')
    started, last = time.monotonic(), ""
    print(f"{'s':>4}  {'STEP':<5} {'UPDATED':<8} {'PHASE':<12} PROGRESSING")
    with Traffic(ports, model.test_pixels):
        while time.monotonic() - started < 240:
            line = kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                           f"jsonpath={fields}")
            if line != last:
                step_summary, updated, phase, stable, message = line.split("|", 4)
                print(f"{time.monotonic() - started:4.0f}  {step_summary or '-':<5} "
                      f"{updated:<8} {phase:<12} {message}", flush=True)
                last = line
            if phase == "Healthy" and stable == "1.3.0":
                break
            if phase in ("RolledBack", "Paused", "Failed"):
                raise SystemExit(f"demo: the rollout stopped ({phase}): {message}")
            time.sleep(0.5)
        else:
            raise SystemExit("demo: the rollout did not finish in 240 s")
        time.sleep(6)  # traffic on the new version, for the plot
    print(f"\nkubectl get events -n {NAMESPACE} --field-selector involvedObject.name=digits")
    print(kubectl(cluster, "get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp",
                  "--field-selector", "involvedObject.name=digits",
                  "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message"), end="")


def query_range(prometheus: str, promql: str, start: float, end: float,
                ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    address = f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": promql, "start": start, "end": end, "step": 1})
    with urllib.request.urlopen(address, timeout=10) as reply:
        answer = json.loads(reply.read())
    return [(series["metric"], [(float(t), float(v)) for t, v in series["values"]])
            for series in answer["data"]["result"]]


def plot(prometheus: str, began: float, end: float) -> None:
    """The rollout as Prometheus recorded it: devices per version, requests and p99
    per version (the devices' samples arrived through the gateway)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("devices serving", 'sum by (version) (edgefleet_operator_model_devices'
                            '{model="digits",state="Ready"})', 1),
        ("requests/s", 'sum by (version) (rate(edgefleet_inference_requests_total'
                       '{model="digits",outcome="success"}[6s]))', 1),
        ("p99 latency (ms)", 'histogram_quantile(0.99, sum by (version, le) (rate('
                             'edgefleet_inference_request_duration_seconds_bucket'
                             '{model="digits"}[6s])))', 1000),
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 7), sharex=True)
    for axis, (title, promql, scale) in zip(axes, panels, strict=True):
        series = sorted(query_range(prometheus, promql, began - 5, end),
                        key=lambda item: item[0].get("version", ""))
        for (labels, values), style in zip(series, ("-", "--", ":"), strict=False):
            axis.plot([t - began for t, _ in values], [v * scale for _, v in values],
                      style, linewidth=2, label=f"digits {labels.get('version', '?')}")
        axis.set_ylabel(title)
        axis.legend(loc="upper left", fontsize="small")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since the canary began")
    figure.suptitle("make demo: canary rollout of digits 1.3.0 over 1.2.0 (int8 at plant-9)")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)
    print(f"wrote {PLOT.relative_to(REPO_ROOT)} from Prometheus' data")


def fresh_namespace(cluster: localcluster.Cluster) -> None:
    """A control plane kept from an earlier run still holds its demo objects: the demo
    starts over without them (its operator is stopped, so their finalizers go too)."""
    if NAMESPACE not in kubectl(cluster, "get", "namespaces", "-o", "name"):
        return
    for name in kubectl(cluster, "get", "em,ed", "-n", NAMESPACE, "-o", "name").split():
        kubectl(cluster, "patch", name, "-n", NAMESPACE, "--type", "merge",
                "-p", '{"metadata":{"finalizers":null}}')
    kubectl(cluster, "delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s")


def up() -> None:
    import digits

    DEMO_DIR.mkdir(exist_ok=True)
    step("Local control plane (etcd, kube-apiserver, kube-controller-manager)")
    cluster = existing_cluster() or localcluster.up(CLUSTER_DIR)
    print(kubectl(cluster, "get", "namespaces"), end="")

    step("CustomResourceDefinitions from crds/")
    print(localcluster.install_crds(cluster), end="")

    step("The operator with its fleet gateway, and Prometheus")
    stop_all()
    fresh_namespace(cluster)
    grpc_port, enrolment_port, operator_port = (localcluster.free_port() for _ in range(3))
    prometheus = start_prometheus(operator_port)
    ca_pin = start_operator(cluster, grpc_port, enrolment_port, operator_port,
                            f"{prometheus}/api/v1/write")
    print(f"operator leading; gateway sessions on 127.0.0.1:{grpc_port} (mutual TLS), "
          f"enrolment on 127.0.0.1:{enrolment_port}; its CA (Secret default/"
          f"edgefleet-gateway-ca) pins as {ca_pin}\nmetrics at "
          f"http://127.0.0.1:{operator_port}/metrics; Prometheus at {prometheus} "
          "(the devices' samples arrive through the gateway)")

    step("Example EdgeDevices and their token Secrets (examples/devices.yaml)")
    print(kubectl(cluster, "apply", "-f", str(REPO_ROOT / "examples" / "devices.yaml")), end="")

    step("Three edge runtimes enrol (token once, CA by its pin) and dial the gateway over "
         "mutual TLS")
    ports = start_edges(cluster, grpc_port, enrolment_port, ca_pin)
    wait_until(lambda: kubectl(cluster, "get", "ed", "-n", NAMESPACE, "-o",
                               "jsonpath={.items[*].status.phase}").split() == ["Online"] * 3,
               "the three devices to come online")
    print(kubectl(cluster, "get", "ed", "-n", NAMESPACE), end="")

    step("A digit classifier trained on scikit-learn's handwritten digits, in two versions")
    model = digits.build(DEMO_DIR / "models")
    for version, path in model.versions.items():
        print(f"digits {version}: MLP 64-{digits.HIDDEN_UNITS[version]}-10 trained on "
              f"{1797 - len(model.test_labels)} images, {model.accuracy[version]:.1%} on the "
              f"{len(model.test_labels)} held out; ONNX {path.stat().st_size} bytes")

    step("The EdgeModel (examples/edgemodel.yaml): 1.2.0 for every camera, and an int8 "
         "variant for plant-9 that the operator builds and validates")
    apply_model(cluster, model)
    wait_until(lambda: kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                               "jsonpath={.status.readySummary}") == "3/3",
               "the model to be Ready on the three cameras", timeout=180)
    variants_table(cluster, "1.2.0")

    step("Accuracy measured at the edge (tritonclient, gRPC, every held-out image)")
    accuracy_at_the_edge(cluster, ports, model)

    step("A canary rollout of 1.3.0 (retrained, with its own int8 build) under live "
         "traffic, gated on the devices' measurements")
    started = time.time()
    canary_rollout(cluster, list(ports.values()), model)
    ended = time.time()
    variants_table(cluster, "1.3.0")

    step("Accuracy measured at the edge after the rollout")
    accuracy_at_the_edge(cluster, ports, model)

    step("The rollout as Prometheus saw it")
    plot(prometheus, started, ended)

    step(f"kubectl get em,ed -n {NAMESPACE}")
    print(kubectl(cluster, "get", "em,ed", "-n", NAMESPACE), end="")
    print(f"""
The classifier reached the three cameras, the plant-9 one (cam-0003) as the int8 build
the operator made and scored against the source before shipping it; version 1.3.0
went to part of the cameras first, was judged there on its own traffic against 1.2.0,
then went to all, each camera on its own build of it. Where to look next:
  export KUBECONFIG={cluster.kubeconfig}
  export PATH={cluster.bin_dir}:$PATH
  kubectl describe em digits -n {NAMESPACE}                  # conditions and Events
  kubectl get ed cam-0001 -n {NAMESPACE} -o yaml             # what a device reports
  kubectl label ed cam-0002 -n {NAMESPACE} site=plant-9 --overwrite   # it takes int8
  kubectl patch ed cam-0003 -n {NAMESPACE} --type merge -p '{{"spec":{{"revoked":true}}}}'
                                     # its session ends, its certificate is refused
  {prometheus}/graph                                      # PromQL over fleet and devices
  {PLOT.relative_to(REPO_ROOT)}, monitoring/dashboards/ (Grafana), monitoring/alerts.yaml
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
