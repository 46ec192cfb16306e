"""A real, throwaway Kubernetes control plane on loopback: etcd, kube-apiserver and
kube-controller-manager (namespace deletion and garbage collection), built from the
pinned release by hack/testbin/build.sh and cached outside the repository.

`make cluster-up` / `make cluster-down` and the pytest fixture both use this module:

    python hack/localcluster.py up   [--dir .cluster]
    python hack/localcluster.py down [--dir .cluster]

Everything lives in one state directory (certificates, etcd data, logs, pid files and
the admin kubeconfig); `down` stops the processes and deletes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "hack" / "testbin" / "build.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
READY_TIMEOUT_S = 120.0


def log(message: str) -> None:
    print(f">> {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Cluster:
    """A started control plane: where it listens and how to reach it."""

    state_dir: Path
    server: str
    kubeconfig: Path
    bin_dir: Path

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    def env(self) -> dict[str, str]:
        """The environment a client of this cluster needs (kubectl, the operator)."""
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}


def ensure_binaries() -> Path:
    """Builds the pinned release's binaries on first use; returns their directory."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before by this process: processes
    started side by side bind theirs later, so the kernel could otherwise hand the same
    port to two of them (and gRPC, which binds with SO_REUSEPORT, would share it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A self-signed CA, the apiserver's serving cert, an admin client cert in
    system:masters and the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    days = "3650"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=pki)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=edgefleet-local-ca",
             "-days", days, "-out", "ca.crt", cwd=pki)
    (pki / "serving.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1\n"
        "extendedKeyUsage=serverAuth\n"
    )
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        ("apiserver", "/CN=kube-apiserver", "serving.ext"),
        ("admin", "/O=system:masters/CN=edgefleet-admin", "client.ext"),
    ):
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key",
                 cwd=pki)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr",
                 cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", days, "-extfile", ext, "-out", f"{name}.crt",
                 cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "edgefleet-local", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "edgefleet-admin", "user": {
            "client-certificate": str(pki / "admin.crt"),
            "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "edgefleet-local", "context": {
            "cluster": "edgefleet-local", "user": "edgefleet-admin"}}],
        "current-context": "edgefleet-local",
    }
    # JSON is valid YAML, and kubeconfig readers accept it.
    path.write_text(json.dumps(config, indent=2) + "\n")


def spawn(state_dir: Path, name: str, argv: list[str],
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Starts a background process with its log in state_dir/logs/NAME.log and its pid
    in state_dir/NAME.pid, for stop_process to find later (also from another process)."""
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log_file:
        # A session of its own: the process outlives `make cluster-up` and a Ctrl-C
        # in the terminal that started it.
        process = subprocess.Popen(
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    (state_dir / f"{name}.pid").write_text(str(process.pid))
    return process


def _tls_context(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return context


def _running(pid: int) -> bool:
    """Whether pid still runs; reaps it if it is our exited child (a zombie would
    otherwise look alive)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: someone else reaps it
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def alive(state_dir: Path, name: str) -> bool:
    pid_file = state_dir / f"{name}.pid"
    return pid_file.exists() and _running(int(pid_file.read_text()))


def _wait_ready(state_dir: Path, name: str, url: str, context: ssl.SSLContext | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if not alive(state_dir, name):
            tail = (state_dir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited during start-up; last log lines:\n{tail}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(0.25)
    raise RuntimeError(f"{name} not ready at {url} after {READY_TIMEOUT_S:.0f}s: {last_error}")


def up(state_dir: Path) -> Cluster:
    """Starts a fresh control plane in state_dir (which must not hold a running one)."""
    state_dir = state_dir.resolve()
    if any(alive(state_dir, name) for name in COMPONENTS):
        raise RuntimeError(f"a control plane already runs from {state_dir}; run down first")
    bin_dir = ensure_binaries()
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    try:
        return _start(state_dir, bin_dir)
    except BaseException:
        stop(state_dir)  # no half-started cluster left behind; the logs stay for a look
        raise


def _start(state_dir: Path, bin_dir: Path) -> Cluster:
    pki = state_dir / "pki"
    started = time.monotonic()
    make_pki(pki)

    etcd_port, etcd_peer_port, api_port, kcm_port = (free_port() for _ in range(4))
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    log(f"starting etcd on {etcd_url}")
    spawn(state_dir, "etcd", [
        str(bin_dir / "etcd"), "--name", "edgefleet-local",
        "--data-dir", str(state_dir / "etcd-data"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer_port}",
        "--initial-cluster", f"edgefleet-local=http://127.0.0.1:{etcd_peer_port}",
        # A throwaway cluster: losing the last writes on a power cut is fine, and
        # skipping fsync makes every API write much cheaper.
        "--unsafe-no-fsync", "--log-level", "warn",
    ])
    _wait_ready(state_dir, "etcd", f"{etcd_url}/health", None)

    server = f"https://127.0.0.1:{api_port}"
    log(f"starting kube-apiserver on {server}")
    spawn(state_dir, "kube-apiserver", [
        str(bin_dir / "kube-apiserver"),
        "--etcd-servers", etcd_url,
        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
        "--secure-port", str(api_port),
        "--tls-cert-file", str(pki / "apiserver.crt"),
        "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(pki / "ca.crt"),
        "--service-account-key-file", str(pki / "sa.pub"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-account-issuer", "https://kubernetes.default.svc",
        "--api-audiences", "https://kubernetes.default.svc",
        "--authorization-mode", "Node,RBAC",
        "--service-cluster-ip-range", "10.0.0.0/24",
        "--cert-dir", str(pki),
        "--enable-priority-and-fairness=false",
        "--profiling=false",
    ])
    tls = _tls_context(pki)
    _wait_ready(state_dir, "kube-apiserver", f"{server}/readyz", tls)

    kubeconfig = state_dir / "kubeconfig"
    write_kubeconfig(kubeconfig, server, pki)
    log("starting kube-controller-manager (namespace and garbage-collector controllers)")
    spawn(state_dir, "kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"),
        "--kubeconfig", str(kubeconfig),
        "--authentication-kubeconfig", str(kubeconfig),
        "--authorization-kubeconfig", str(kubeconfig),
        "--bind-address", "127.0.0.1", "--secure-port", str(kcm_port),
        "--controllers", "namespace,garbagecollector,serviceaccount",
        "--service-account-private-key-file", str(pki / "sa.key"),
        "--root-ca-file", str(pki / "ca.crt"),
        "--leader-elect=false",
        "--cert-dir", str(pki),
    ])
    _wait_ready(state_dir, "kube-controller-manager", f"https://127.0.0.1:{kcm_port}/healthz",
                ssl._create_unverified_context())  # its self-signed cert is not ours to trust
    log(f"control plane ready in {time.monotonic() - started:.1f}s")
    return Cluster(state_dir=state_dir, server=server, kubeconfig=kubeconfig, bin_dir=bin_dir)


def install_crds(cluster: Cluster) -> str:
    """Applies crds/ and waits until both resources are served; kubectl's output."""
    def kubectl(*args: str) -> str:
        return subprocess.run([str(cluster.kubectl), *args], env=cluster.env(), check=True,
                              capture_output=True, text=True).stdout

    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f",
                      str(REPO_ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/edgemodels.edgefleet.io", "crd/edgedevices.edgefleet.io")
    return applied


def stop_process(state_dir: Path, name: str, grace_s: float = 10.0) -> None:
    """Stops a process spawn() started: SIGTERM, the grace period, then SIGKILL."""
    pid_file = state_dir / f"{name}.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return
    deadline = time.monotonic() + grace_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
        while _running(pid):
            time.sleep(0.1)
    log(f"stopped {name} (pid {pid})")
    pid_file.unlink()


def stop(state_dir: Path) -> None:
    """Stops every component started from state_dir; keeps its files (logs)."""
    for name in reversed(COMPONENTS):
        stop_process(state_dir, name)


def down(state_dir: Path) -> None:
    """Stops every component started from state_dir and deletes it."""
    state_dir = state_dir.resolve()
    stop(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "build"])
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".cluster",
                        help="state directory (default: .cluster in the repository)")
    args = parser.parse_args()
    if args.command == "build":
        print(ensure_binaries())
    elif args.command == "up":
        cluster = up(args.dir)
        print(f"Control plane at {cluster.server}. Use it with:\n"
              f"  export KUBECONFIG={cluster.kubeconfig}\n"
              f"  export PATH={cluster.bin_dir}:$PATH   # kubectl of the same release\n"
              f"  kubectl get ns\n"
              f"Stop it with: make cluster-down")
    else:
        down(args.dir)


if __name__ == "__main__":
    main()
