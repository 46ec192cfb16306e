"""`make demo` / `make demo-down`: the whole system on this machine.

A local control plane, the operator with its fleet gateway, a real Prometheus, three
edge runtimes (the example EdgeDevices, at two sites); a digit classifier trained here
on scikit-learn's handwritten digits and rolled out to the three, with an int8 variant
that the operator builds and validates for the plant-9 camera; its accuracy measured at
the edge; then a retrained version rolled out, with its own int8 variant, as a canary
under live traffic, gated on what the devices measure; a plot of the rollout from
Prometheus' data. Then the field closes the loop: one camera is remounted sideways, the
devices keep samples and take feedback, the operator creates a retraining Job once
enough labels arrived (the demo runs its command: no kubelet here), and the new version
canaries on field accuracy; before and after, and a plot of it; `kubectl get em,ed`.

    python hack/demo.py up     # idempotent: reuses a running control plane
    python hack/demo.py down   # stops everything `up` started
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Explicitly: under PYTHONSAFEPATH (see the Makefile) Python adds no script directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import localcluster

if TYPE_CHECKING:  # `down` runs without the project's environment: imports stay lazy
    import digits
    import grpc
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
RETRAINING_PLOT = DEMO_DIR / "retraining.png"
SIDEWAYS = "cam-0003"  # the plant-9 camera, remounted a quarter turn round


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
        "--artifact-file-roots", str(DEMO_DIR / "models"),
        # Samples and labels from the devices, and retraining Jobs' outputs.
        "--dataset-uri", str(DEMO_DIR / "dataset"),
        "--retraining-namespaces", NAMESPACE, "--retraining-poll-seconds", "2"],
        env=cluster.env())

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
                         model: digits.Digits, sideways: bool = False) -> None:
    """Every test image through tritonclient to each targeted device, one request each;
    `sideways`: as the remounted camera sees them."""
    import digits
    import numpy as np
    import tritonclient.grpc as triton_grpc

    for device in DEVICES:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{ports[device]}")
        correct, versions = 0, set()
        images = (digits.sideways(model.test_pixels) if sideways and device == SIDEWAYS
                  else model.test_pixels)
        for pixels, label in zip(images, model.test_labels, strict=True):
            item = triton_grpc.InferInput("pixels", [1, 64], "FP32")
            item.set_data_from_numpy(pixels[np.newaxis])
            result = client.infer("digits", [item], outputs=[
                triton_grpc.InferRequestedOutput("label")])
            correct += int(result.as_numpy("label")[0] == label)
            versions.add(result.get_response().model_version)
        held = kubectl(cluster, "get", "ed", device, "-n", NAMESPACE, "-o",
                       "jsonpath={.status.models[*].variant}") or "source"
        seen = " (sideways)" if images is not model.test_pixels else ""
        print(f"{device}{seen}: {correct}/{len(model.test_labels)} test images right "
              f"({correct / len(model.test_labels):.1%}), answered by digits "
              f"{', '.join(sorted(versions))} ({held})")


@dataclass(frozen=True)
class Stream:
    """What an application sends one device: images in turn, each once unless `cycle`,
    with their true labels sent back as feedback when `labels` are given."""

    port: int
    pixels: np.ndarray
    labels: np.ndarray | None = None
    label_every: int = 1  # feedback for every n-th answer
    cycle: bool = True


def feedback_stub(channel: grpc.Channel) -> Callable[..., object]:
    from edgefleet.protocol.edgefleet.v1 import feedback_pb2

    return channel.unary_unary(
        "/edgefleet.v1.InferenceFeedback/Feedback",
        request_serializer=feedback_pb2.FeedbackRequest.SerializeToString,
        response_deserializer=feedback_pb2.FeedbackResponse.FromString)


def takes_feedback(port: int, pixels: np.ndarray, label: int) -> bool:
    """Whether the device remembers its answers for feedback: its EdgeModel's
    dataCollection reached it."""
    import grpc
    import numpy as np
    import tritonclient.grpc as triton_grpc

    from edgefleet.protocol.edgefleet.v1 import feedback_pb2

    item = triton_grpc.InferInput("pixels", [1, 64], "FP32")
    item.set_data_from_numpy(pixels[np.newaxis])
    answer = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}").infer("digits", [item])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            feedback_stub(channel)(feedback_pb2.FeedbackRequest(
                model_name="digits", id=answer.get_response().id, labels=[str(label)]))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
    return True


class Traffic:
    """Applications sending images to the devices until stopped (or, for streams that do
    not cycle, until they have sent every image)."""

    def __init__(self, streams: list[Stream], pause_s: float = 0.01) -> None:
        self._stop = threading.Event()
        self.labelled = 0
        self._threads = [threading.Thread(target=self._send, args=(stream, pause_s))
                         for stream in streams]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.wait()

    def wait(self) -> None:
        for thread in self._threads:
            thread.join()

    def _send(self, stream: Stream, pause_s: float) -> None:
        import grpc
        import numpy as np
        import tritonclient.grpc as triton_grpc

        from edgefleet.protocol.edgefleet.v1 import feedback_pb2

        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{stream.port}")
        channel = grpc.insecure_channel(f"127.0.0.1:{stream.port}")
        feedback = feedback_stub(channel)
        sent = 0
        with channel:
            while not self._stop.wait(pause_s):
                if not stream.cycle and sent == len(stream.pixels):
                    return
                index = sent % len(stream.pixels)
                item = triton_grpc.InferInput("pixels", [1, 64], "FP32")
                item.set_data_from_numpy(stream.pixels[index][np.newaxis])
                answer = client.infer("digits", [item]).get_response()
                if stream.labels is not None and sent % stream.label_every == 0:
                    # Someone checked the answer: its truth goes back.
                    feedback(feedback_pb2.FeedbackRequest(
                        model_name="digits", id=answer.id,
                        labels=[str(stream.labels[index])]))
                    self.labelled += 1
                sent += 1


def watch_rollout(cluster: localcluster.Cluster, version: str, timeout_s: float = 240) -> None:
    """Prints each change of the rollout of `version` until it is the stable version."""
    fields = ("{.status.stepSummary}|{.status.updatedSummary}|{.status.phase}|"
              "{.status.stableVersion}|"
              '{.status.conditions[?(@.type=="Progressing")].message}')
    started, last = time.monotonic(), ""
    print(f"{'s':>4}  {'STEP':<5} {'UPDATED':<8} {'PHASE':<12} PROGRESSING")
    while time.monotonic() - started < timeout_s:
        line = kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                       f"jsonpath={fields}")
        if line != last:
            step_summary, updated, phase, stable, message = line.split("|", 4)
            print(f"{time.monotonic() - started:4.0f}  {step_summary or '-':<5} "
                  f"{updated:<8} {phase:<12} {message}", flush=True)
            last = line
        if phase == "Healthy" and stable == version:
            return
        if phase in ("RolledBack", "Paused", "Failed"):
            raise SystemExit(f"demo: the rollout stopped ({phase}): {message}")
        time.sleep(0.5)
    raise SystemExit(f"demo: the rollout did not finish in {timeout_s:.0f} s")


def print_events(cluster: localcluster.Cluster) -> None:
    print(f"\nkubectl get events -n {NAMESPACE} --field-selector involvedObject.name=digits")
    print(kubectl(cluster, "get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp",
                  "--field-selector", "involvedObject.name=digits",
                  "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message"), end="")


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
    with Traffic([Stream(port, model.test_pixels) for port in ports]):
        watch_rollout(cluster, "1.3.0")
        time.sleep(6)  # traffic on the new version, for the plot
    print_events(cluster)


def query_range(prometheus: str, promql: str, start: float, end: float,
                ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    address = f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": promql, "start": start, "end": end, "step": 1})
    with urllib.request.urlopen(address, timeout=10) as reply:
        answer = json.loads(reply.read())
    return [(series["metric"], [(float(t), float(v)) for t, v in series["values"]])
            for series in answer["data"]["result"]]


# What the plots show, each (title, PromQL, scale).
DEVICES_PANEL = ("devices serving", 'sum by (version) (edgefleet_operator_model_devices'
                                    '{model="digits",state="Ready"})', 1)
REQUESTS_PANEL = ("requests/s", 'sum by (version) (rate(edgefleet_inference_requests_total'
                                '{model="digits",outcome="success"}[6s]))', 1)
LATENCY_PANEL = ("p99 latency (ms)", 'histogram_quantile(0.99, sum by (version, le) (rate('
                                     'edgefleet_inference_request_duration_seconds_bucket'
                                     '{model="digits"}[6s])))', 1000)
ACCURACY_PANEL = ("field accuracy", 'edgefleet_operator_model_field_accuracy{model="digits"}', 1)


def plot(prometheus: str, began: float, end: float, panels: list[tuple[str, str, float]],
         title: str, path: Path) -> None:
    """Series per version from Prometheus (the devices' samples arrived through the
    gateway; field accuracy is the operator's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 2.3 * len(panels)), sharex=True)
    styles: dict[str, str] = {}  # one line style per version across the panels
    for axis, (name, promql, scale) in zip(axes, panels, strict=True):
        series = sorted(query_range(prometheus, promql, began - 5, end),
                        key=lambda item: item[0].get("version", ""))
        for labels, values in series:
            if not any(v for _, v in values):
                continue  # a version that served nothing here
            version = labels.get("version", "?")
            style = styles.setdefault(version, ("-", "--", ":", "-.")[len(styles) % 4])
            axis.plot([t - began for t, _ in values], [v * scale for _, v in values],
                      style, linewidth=2, label=f"digits {version}")
        axis.set_ylabel(name)
        axis.legend(loc="upper left", fontsize="small")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since it began")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path.relative_to(REPO_ROOT)} from Prometheus' data")


FIELD_POLICY = {"lowConfidenceBelow": 0.9, "sampleRate": 0.5}
RETRAINING_LABELS = 1200


def field_accuracy(cluster: localcluster.Cluster) -> None:
    """Field accuracy per version (EdgeModel status.inference) and per device."""
    status = json.loads(kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                                "jsonpath={.status}"))
    print(f"kubectl get em digits -n {NAMESPACE} -o jsonpath='{{.status.inference}}'")
    print(f"{'VERSION':<16} {'DEVICES':>7} {'LABELLED':>8} {'ACCURACY':>8}")
    for entry in status.get("inference", []):
        if entry.get("labelled"):
            print(f"{entry['version']:<16} {entry['devices']:>7} {entry['labelled']:>8} "
                  f"{entry['accuracy']:>8.1%}")
    for device in DEVICES:
        for entry in json.loads(kubectl(cluster, "get", "ed", device, "-n", NAMESPACE, "-o",
                                        "jsonpath={.status.inference}") or "[]"):
            if entry.get("labelled"):
                print(f"  {device}: digits {entry['version']}, {entry['correct']} of "
                      f"{entry['labelled']} labelled answers right "
                      f"({entry['correct'] / entry['labelled']:.1%})")


def model_status(cluster: localcluster.Cluster, field: str) -> dict:
    return json.loads(kubectl(cluster, "get", "em", "digits", "-n", NAMESPACE, "-o",
                              f"jsonpath={{.status.{field}}}") or "{}")


def run_job(cluster: localcluster.Cluster, name: str) -> None:
    """What the Job's pod would run: its command and arguments, in its environment."""
    job = json.loads(kubectl(cluster, "get", "job", name, "-n", NAMESPACE, "-o", "json"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    command = [*container["command"], *container.get("args", [])]
    print(f"kubectl get job {name} -n {NAMESPACE}: runs {' '.join(command)} as "
          f"{job['spec']['template']['spec']['serviceAccountName']}, with")
    for key, value in env.items():
        print(f"  {key}={value}")
    executable = Path(sys.executable).parent / command[0]
    result = subprocess.run([str(executable), *command[1:]], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=600)
    for line in result.stderr.splitlines():
        if "Warning" not in line and "warnings.warn" not in line:
            print(f"  | {line}")
    if result.returncode != 0:
        raise SystemExit(f"demo: {command[0]} failed ({result.returncode})")


def field_retraining(cluster: localcluster.Cluster, ports: dict[str, int],
                     model: digits.Digits) -> str:
    """The loop from the field back to the fleet; returns the version it rolled out."""
    import digits

    step(f"{SIDEWAYS} at plant-9 is remounted sideways: every digit it sees is turned a "
         "quarter round")
    accuracy_at_the_edge(cluster, ports, model, sideways=True)

    step("Data collection, feedback and retraining on the EdgeModel; the next version "
         "canaries on field accuracy")
    patch = {"spec": {
        "dataCollection": FIELD_POLICY,
        "retraining": {
            "minNewLabelledSamples": RETRAINING_LABELS, "rollout": "Canary",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{
                "image": "registry.example/edgefleet-retrain:0.1.0",
                "command": ["edgefleet-retrain"],
                # The base version's training images, as this demo wrote them.
                "args": ["--base-data", str(model.train), "--hidden-units", "256"]}]}}}}},
        "rollout": {"steps": [{"percent": 50, "pauseSeconds": 5}, {"percent": 100}],
                    "analysis": {"minRequests": 100, "maxDrift": None, "minLabelled": 50,
                                 "minAccuracy": 0.9, "maxAccuracyDrop": 0.05}}}}
    print(f"kubectl patch em digits -n {NAMESPACE} --type merge -p '{json.dumps(patch)}'")
    kubectl(cluster, "patch", "em", "digits", "-n", NAMESPACE, "--type", "merge",
            "-p", json.dumps(patch))

    for device in DEVICES:
        wait_until(lambda: takes_feedback(ports[device], model.test_pixels[0],  # noqa: B023
                                          int(model.test_labels[0])),
                   f"{device} to take feedback (the new dataCollection to reach it)")
    step(f"Feedback: someone checks answers and sends their true labels; {SIDEWAYS} sees "
         f"the {len(model.train_labels):,} training images sideways, each once, every "
         "answer checked; the other cameras every tenth")
    others = [Stream(ports[d], model.test_pixels, model.test_labels, label_every=10)
              for d in DEVICES if d != SIDEWAYS]
    sideways = Stream(ports[SIDEWAYS], digits.sideways(model.train_pixels),
                      model.train_labels, cycle=False)
    with Traffic(others) as background, Traffic([sideways], pause_s=0) as field:
        field.wait()
        wait_until(lambda: model_status(cluster, "retraining").get("phase") == "Running",
                   "the retraining Job", timeout=120)
    sent = background.labelled + field.labelled
    wait_until(lambda: model_status(cluster, "data").get("labelled", 0) >= sent,
               f"the {sent} labels to reach the dataset", timeout=120)
    data = model_status(cluster, "data")
    print(f"the dataset holds {data['samples']} samples and {data['labelled']} labels "
          f"from {data['devices']} devices ({data['bytes']:,} bytes; EdgeModel "
          f"status.data): requests less sure than {FIELD_POLICY['lowConfidenceBelow']} and "
          f"half the rest at random (the sideways digits are answered wrongly, and most of "
          f"them confidently: only sampling keeps those)")
    field_accuracy(cluster)

    job = model_status(cluster, "retraining")["job"]
    step(f"The operator created Job {job} past {RETRAINING_LABELS:,} new labels. The local "
         "control plane has no kubelet, so the demo runs the Job's command itself, with "
         "its environment, as its pod would")
    run_job(cluster, job)
    wait_until(lambda: model_status(cluster, "retraining").get("phase") == "Succeeded",
               "the Job's output to become a candidate", timeout=60)
    retraining = model_status(cluster, "retraining")
    print(f"status.retraining: {retraining['message'].split(';')[0]}")
    candidate = retraining["candidate"]["version"]

    step(f"{candidate} canaries on field accuracy under labelled traffic")
    streams = [Stream(ports[d], model.test_pixels, model.test_labels, label_every=10)
               for d in DEVICES if d != SIDEWAYS]
    streams.append(Stream(ports[SIDEWAYS], digits.sideways(model.test_pixels),
                          model.test_labels, label_every=10))
    with Traffic(streams):
        watch_rollout(cluster, candidate, timeout_s=300)
        time.sleep(6)  # traffic on the new version, for the plot
    print_events(cluster)

    step("Field accuracy after retraining")
    field_accuracy(cluster)
    step("Accuracy measured at the edge after retraining")
    accuracy_at_the_edge(cluster, ports, model, sideways=True)
    return candidate


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
    shutil.rmtree(DEMO_DIR / "dataset", ignore_errors=True)
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
    plot(prometheus, started, ended, [DEVICES_PANEL, REQUESTS_PANEL, LATENCY_PANEL],
         "make demo: canary rollout of digits 1.3.0 over 1.2.0 (int8 at plant-9)", PLOT)

    started = time.time()
    retrained = field_retraining(cluster, ports, model)
    step("Field accuracy, retraining and the rollout as Prometheus saw them")
    plot(prometheus, started, time.time(), [DEVICES_PANEL, ACCURACY_PANEL, REQUESTS_PANEL],
         f"make demo: {SIDEWAYS} sideways, digits retrained on its labelled samples "
         f"({retrained})", RETRAINING_PLOT)

    step(f"kubectl get em,ed -n {NAMESPACE}")
    print(kubectl(cluster, "get", "em,ed", "-n", NAMESPACE), end="")
    print(f"""
The classifier reached the three cameras, the plant-9 one (cam-0003) as the int8 build
the operator made and scored against the source before shipping it; version 1.3.0
went to part of the cameras first, was judged there on its own traffic against 1.2.0,
then went to all, each camera on its own build of it. Then {SIDEWAYS} was remounted
sideways: its field accuracy fell, the devices kept samples and took feedback, the
operator created a retraining Job past {RETRAINING_LABELS:,} new labels, and the version
that Job trained ({retrained}) canaried on field accuracy and went to every camera.
Where to look next:
  export KUBECONFIG={cluster.kubeconfig}
  export PATH={cluster.bin_dir}:$PATH
  kubectl describe em digits -n {NAMESPACE}                  # conditions and Events
  kubectl get em digits -n {NAMESPACE} -o jsonpath='{{.status.retraining}}'
  kubectl get ed cam-0001 -n {NAMESPACE} -o yaml             # what a device reports
  kubectl label ed cam-0002 -n {NAMESPACE} site=plant-9 --overwrite   # it takes int8
  kubectl patch ed cam-0003 -n {NAMESPACE} --type merge -p '{{"spec":{{"revoked":true}}}}'
                                     # its session ends, its certificate is refused
  {prometheus}/graph                                      # PromQL over fleet and devices
  {PLOT.relative_to(REPO_ROOT)}, {RETRAINING_PLOT.relative_to(REPO_ROOT)}
  .demo/dataset/{NAMESPACE}/digits/                         # the samples, numpy.load() reads them
  monitoring/dashboards/ (Grafana), monitoring/alerts.yaml
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
