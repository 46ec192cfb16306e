"""Artifact delivery benchmark: a 200 MB model from the fleet gateway to 1 and to 10
edge runtimes on loopback, next to a raw TCP copy of the same bytes to as many
receivers, in the same run.

    .venv/bin/python benchmarks/artifact_delivery.py [--megabytes 200] [--devices 1 10]

The real path: local control plane, operator (artifact cache, gateway) and
`edgefleet-edge run` processes. Timed from the moment the devices are selected until
every one holds the verified blob (download, fsync, sha256 check, atomic rename). The
raw copy writes and fsyncs the same bytes without hashing. Prints seconds, MB/s and the
ratio of the two.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, config

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))
sys.path.insert(0, str(REPO_ROOT))
import testmodels  # noqa: E402

import localcluster  # noqa: E402
from tests.conftest import launch_edge, stop_edge  # noqa: E402

GROUP, VERSION, NAMESPACE = "edgefleet.io", "v1alpha1", "bench"


def wait(check: object, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def raw_tcp_copy(data_path: Path, receivers: int, out_dir: Path) -> float:
    """Seconds to send the file to `receivers` concurrent TCP clients that write it to
    disk and fsync, over loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one(conn: socket.socket) -> None:
        with conn, open(data_path, "rb") as source:
            conn.sendfile(source)

    def accept_all() -> None:
        for _ in range(receivers):
            conn, _ = listener.accept()
            threading.Thread(target=serve_one, args=(conn,)).start()

    threading.Thread(target=accept_all, daemon=True).start()

    def receive(index: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as conn, \
                open(out_dir / f"copy-{index}", "wb") as out:
            while chunk := conn.recv(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())

    started = time.perf_counter()
    threads = [threading.Thread(target=receive, args=(i,)) for i in range(receivers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    listener.close()
    for index in range(receivers):
        (out_dir / f"copy-{index}").unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = testmodels.large(args.megabytes)
        sha = hashlib.sha256(model).hexdigest()
        artifact = root / f"{sha}.onnx"
        artifact.write_bytes(model)
        del model

        cluster = localcluster.up(root / "cluster")
        operator = None
        edges = []
        try:
            localcluster.install_crds(cluster)
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
                name=NAMESPACE)))
            grpc_port = localcluster.free_port()
            with open(root / "operator.log", "wb") as log:
                operator = subprocess.Popen(
                    [sys.executable, "-m", "edgefleet.operator", "--listen-host", "127.0.0.1",
                     "--metrics-port", str(localcluster.free_port()),
                     "--grpc-port", str(grpc_port), "--no-leader-election",
                     "--artifact-cache-dir", str(root / "cache"), "--namespaces", NAMESPACE],
                    env=cluster.env(), stdout=log, stderr=subprocess.STDOUT)
            # The model targets a label no device has yet: the operator fetches and
            # verifies the artifact first, outside the timed part.
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "edgemodels", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeModel",
                "metadata": {"name": "large"},
                "spec": {"version": "1", "source": {"uri": artifact.as_uri(), "sha256": sha},
                         "selector": {"matchLabels": {"bench": "on"}}}})
            wait(lambda: custom.get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "edgemodels", "large").get("status", {}).get(
                "artifact"), "the operator to verify the artifact")

            results = []
            for count in args.devices:
                names = [f"dev-{count}-{i}" for i in range(count)]
                for name in names:
                    core.create_namespaced_secret(NAMESPACE, client.V1Secret(
                        metadata=client.V1ObjectMeta(name=f"{name}-token"),
                        string_data={"token": f"t-{name}"}))
                    (root / f"{name}.token").write_text(f"t-{name}")
                    custom.create_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, "edgedevices", {
                            "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeDevice",
                            "metadata": {"name": name, "labels": {"bench": "off"}},
                            "spec": {"bootstrapTokenSecretRef": {"name": f"{name}-token"}}})
                    edges.append(launch_edge(
                        root / f"{name}.log", "run", "--cloud", f"127.0.0.1:{grpc_port}",
                        "--namespace", NAMESPACE, "--device", name,
                        "--token-file", str(root / f"{name}.token"),
                        "--data-dir", str(root / f"{name}-data")))
                blobs = [root / f"{name}-data" / "blobs" / "sha256" / sha for name in names]
                wait(lambda n=names: all(custom.get_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, "edgedevices", name).get("status", {}).get(
                    "phase") == "Online" for name in n), "devices online")
                started = time.perf_counter()
                for name in names:
                    custom.patch_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, "edgedevices", name,
                        {"metadata": {"labels": {"bench": "on"}}})
                wait(lambda b=blobs: all(p.exists() for p in b), "every device to hold it")
                fleet_s = time.perf_counter() - started
                raw_s = raw_tcp_copy(artifact, count, root)
                results.append((count, fleet_s, raw_s))
                for edge in edges:
                    stop_edge(edge)
                edges.clear()
        finally:
            for edge in edges:
                stop_edge(edge)
            if operator:
                operator.terminate()
                operator.wait()
            localcluster.down(cluster.state_dir)

    size_mb = args.megabytes * 2**20 / 1e6
    print(f"\nArtifact delivery, {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} cores, {args.megabytes} MiB artifact, loopback")
    print(f"{'devices':>7} {'edgefleet s':>12} {'MB/s':>8} {'raw TCP s':>10} {'MB/s':>8} "
          f"{'ratio':>6}")
    for count, fleet_s, raw_s in results:
        print(f"{count:>7} {fleet_s:12.2f} {count * size_mb / fleet_s:8.0f} {raw_s:10.2f} "
              f"{count * size_mb / raw_s:8.0f} {fleet_s / raw_s:6.2f}")
    print("ratio: EdgeFleet time / raw TCP copy time for the same bytes to as many receivers"
          " (EdgeFleet also verifies sha256 and renames atomically)")


if __name__ == "__main__":
    main()
