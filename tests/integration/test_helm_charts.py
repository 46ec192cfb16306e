"""The Helm charts, with helm built from its Go module (hack/helmbin) and the real
kube-apiserver: lint and render for several value sets, every rendered manifest
accepted by a server-side dry run, clear errors for wrong values, install, upgrade
and uninstall of both charts, and the operator running on nothing but the RBAC the
cloud chart grants."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.conftest import Kube, StartOperator
from tests.helpers import eventually
from tests.integration.test_operator import device_body, model_body, wait_status

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOUD = REPO_ROOT / "helm" / "edgefleet"
EDGE = REPO_ROOT / "helm" / "edgefleet-edge"
EDGE_REQUIRED = ["--set", "cloud=gateway.fleet.svc:50051", "--set", "namespace=fleet"]

# Value sets each chart must lint, render and pass a server-side dry run with.
CLOUD_VALUES = {
    "default": [],
    "replicas 2": ["--set", "replicas=2"],
    "tls on": ["--set", "gateway.tlsSecretName=gateway-tls"],
    "monitoring on": ["--set", "monitoring.serviceMonitor=true",
                      "--set", "monitoring.prometheusRule=true",
                      "--set", "monitoring.labels.release=prometheus"],
    "monitoring off": ["--set", "monitoring.serviceMonitor=false",
                       "--set", "monitoring.prometheusRule=false",
                       "--set", "grafana.dashboards=false"],
    "namespaced": ["--set", "watchNamespaces={NAMESPACE}"],  # the test's namespace
}
EDGE_VALUES = {
    "default": EDGE_REQUIRED,
    "tls on": [*EDGE_REQUIRED, "--set", "tls.caSecretName=gateway-ca"],
    "host network": [*EDGE_REQUIRED, "--set", "hostNetwork=true"],
    "data volume": [*EDGE_REQUIRED, "--set", "dataDir.volume.emptyDir.sizeLimit=10Gi"],
}


def stand_in_crd(kind: str) -> dict:
    """A schemaless stand-in for a Prometheus Operator CRD (not installed in the local
    control plane), so that the API server can judge rendered objects of that kind."""
    plural = f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                           "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True}}}]}}


@pytest.fixture(scope="session")
def helm_bin() -> str:
    result = subprocess.run([str(REPO_ROOT / "hack" / "helmbin" / "build.sh")],
                            capture_output=True, text=True, check=True)
    return str(Path(result.stdout.strip()) / "helm")


@pytest.fixture
def helm(helm_bin: str, kube: Kube, tmp_path: Path) -> Iterator[Helm]:
    yield Helm(helm_bin, kube, tmp_path)


class Helm:
    def __init__(self, binary: str, kube: Kube, home: Path) -> None:
        self.binary, self.kube = binary, kube
        # helm keeps its own config and caches under these; none outside the test.
        self.env = {**kube.env, "HELM_CONFIG_HOME": str(home / "helm-config"),
                    "HELM_CACHE_HOME": str(home / "helm-cache"),
                    "HELM_DATA_HOME": str(home / "helm-data")}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], capture_output=True, text=True,
                                env=self.env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def template(self, chart: Path, values: list[str], namespace: str,
                 *extra: str) -> list[dict]:
        rendered = self.run("template", "release", str(chart), "--namespace", namespace,
                            *values, *extra).stdout
        return [doc for doc in yaml.safe_load_all(rendered) if doc]


def kinds(manifests: list[dict]) -> list[str]:
    return sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)


def test_the_cloud_chart_carries_the_crds_dashboards_and_alerts_as_they_are() -> None:
    copies = {crd: CLOUD / "crds" / crd.name for crd in (REPO_ROOT / "crds").glob("*.yaml")}
    copies |= {board: CLOUD / "files" / "dashboards" / board.name
               for board in (REPO_ROOT / "monitoring" / "dashboards").glob("*.json")}
    copies[REPO_ROOT / "monitoring" / "alerts.yaml"] = CLOUD / "files" / "alerts.yaml"
    assert len(copies) == 5
    for source, copy in sorted(copies.items()):
        assert copy.exists(), f"{copy} is missing: run `make chart-files`"
        assert copy.read_text() == source.read_text(), f"{copy} drifted: run `make chart-files`"


@pytest.mark.parametrize(("chart", "value_sets"), [(CLOUD, CLOUD_VALUES), (EDGE, EDGE_VALUES)],
                         ids=["edgefleet", "edgefleet-edge"])
def test_charts_lint_render_and_pass_a_server_side_dry_run(
    helm: Helm, kube: Kube, namespace: str, chart: Path, value_sets: dict[str, list[str]],
) -> None:
    for kind in ("ServiceMonitor", "PrometheusRule"):
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(stand_in_crd(kind)))
        kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     f"crd/{kind.lower()}s.monitoring.coreos.com")
    for name, values in value_sets.items():
        values = [value.replace("NAMESPACE", namespace) for value in values]
        lint = helm.run("lint", "--strict", str(chart), *values)
        assert "0 chart(s) failed" in lint.stdout, (name, lint.stdout)
        manifests = helm.template(chart, values, namespace)
        assert manifests, name
        rendered = "\n---\n".join(yaml.safe_dump(m) for m in manifests)
        applied = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered,
                               check=False)
        assert applied.returncode == 0, f"{name}: {applied.stderr}"
        assert applied.stdout.count("(server dry run)") == len(manifests), name


def test_cloud_chart_switches_follow_the_values(helm: Helm, namespace: str) -> None:
    default = helm.template(CLOUD, [], namespace)
    (deployment,) = [m for m in default if m["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--no-leader-election"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "ServiceMonitor/release-edgefleet" not in kinds(default)
    assert "PrometheusRule/release-edgefleet" not in kinds(default)
    boards = [m for m in default if m["kind"] == "ConfigMap"]
    assert sorted(m["metadata"]["name"] for m in boards) == [
        "release-edgefleet-dashboard-device", "release-edgefleet-dashboard-fleet-overview"]
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in boards)
    assert all(json.loads(next(iter(m["data"].values())))["panels"] for m in boards)

    two = helm.template(CLOUD, ["--set", "replicas=2"], namespace)
    (deployment,) = [m for m in two if m["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--leader-election"]
    assert "Role/release-edgefleet-leader" in kinds(two)
    # "auto" renders the ServiceMonitor where the cluster serves the API.
    auto = helm.template(CLOUD, [], namespace, "--api-versions", "monitoring.coreos.com/v1")
    assert "ServiceMonitor/release-edgefleet" in kinds(auto)
    (rule,) = [m for m in auto if m["kind"] == "PrometheusRule"]
    alerts = yaml.safe_load((REPO_ROOT / "monitoring" / "alerts.yaml").read_text())
    assert rule["spec"] == alerts  # the very rules promtool checks and tests
    namespaced = helm.template(CLOUD, ["--set", "watchNamespaces={fleet}"], namespace)
    (role,) = [m for m in namespaced if m["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "fleet"
    (cluster_role,) = [m for m in namespaced if m["kind"] == "ClusterRole"]
    assert {r["apiGroups"][0] for r in cluster_role["rules"]} == {"apiextensions.k8s.io", ""}


@pytest.mark.parametrize(("chart", "values", "says"), [
    (CLOUD, ["--set", "replicas=0"], "at '/replicas': minimum"),
    (CLOUD, ["--set", "gateway.service.type=Public"], "at '/gateway/service/type'"),
    (CLOUD, ["--set", "leaderElection=maybe"], "at '/leaderElection'"),
    (CLOUD, ["--set", "gateway.prot=1"], "additional properties 'prot' not allowed"),
    (EDGE, ["--set", "namespace=fleet"], "cloud (the gateway's HOST:PORT) is required"),
    (EDGE, [*EDGE_REQUIRED, "--set", "cloud=no port"], "at '/cloud'"),
    (EDGE, [*EDGE_REQUIRED, "--set", "dataDir.hostPath=relative"], "at '/dataDir/hostPath'"),
], ids=["replicas-0", "service-type", "leader-election", "unknown-key", "edge-no-cloud",
        "edge-bad-cloud", "edge-relative-path"])
def test_wrong_values_fail_at_install_naming_the_value(
    helm: Helm, chart: Path, values: list[str], says: str,
) -> None:
    result = helm.run("template", "release", str(chart), *values, check=False)
    assert result.returncode != 0
    assert says in result.stderr, result.stderr


def test_both_charts_install_upgrade_and_uninstall(helm: Helm, kube: Kube,
                                                   namespace: str) -> None:
    helm.run("install", "cloud", str(CLOUD), "--namespace", namespace)
    apps = client.AppsV1Api(kube.api)
    assert apps.read_namespaced_deployment("cloud-edgefleet", namespace).spec.replicas == 1
    helm.run("upgrade", "cloud", str(CLOUD), "--namespace", namespace, "--set", "replicas=2")
    assert apps.read_namespaced_deployment("cloud-edgefleet", namespace).spec.replicas == 2
    helm.run("install", "edge", str(EDGE), "--namespace", namespace, *EDGE_REQUIRED)
    daemonset = apps.read_namespaced_daemon_set("edge-edgefleet-edge", namespace)
    env = {e.name: e for e in daemonset.spec.template.spec.containers[0].env}
    assert env["EDGEFLEET_EDGE_DEVICE"].value_from.field_ref.field_path == "spec.nodeName"
    helm.run("upgrade", "edge", str(EDGE), "--namespace", namespace, *EDGE_REQUIRED,
             "--set", "heartbeatSeconds=5")
    assert "edge" in helm.run("list", "--namespace", namespace, "--short").stdout.split()

    helm.run("uninstall", "edge", "--namespace", namespace)
    helm.run("uninstall", "cloud", "--namespace", namespace)
    assert not apps.list_namespaced_deployment(namespace).items
    assert not apps.list_namespaced_daemon_set(namespace).items
    rbac = client.RbacAuthorizationV1Api(kube.api)
    assert "cloud-edgefleet" not in [r.metadata.name for r in rbac.list_cluster_role().items]


def service_account_kubeconfig(kube: Kube, namespace: str, account: str,
                               path: Path) -> Path:
    """The admin kubeconfig with its user swapped for a token of the ServiceAccount."""
    token = kube.core.create_namespaced_service_account_token(
        account, namespace, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=["https://kubernetes.default.svc"],
                                           expiration_seconds=3600))).status.token
    config = yaml.safe_load(kube.kubectl("config", "view", "--raw", "--minify").stdout)
    config["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_works_on_the_charts_rbac_alone(
    helm: Helm, kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    helm.run("install", "cloud", str(CLOUD), "--namespace", namespace,
             "--set", f"watchNamespaces={{{namespace}}}", "--set", "leaderElection=true")
    kubeconfig = service_account_kubeconfig(kube, namespace, "cloud-edgefleet",
                                            tmp_path / "operator.kubeconfig")
    account = f"system:serviceaccount:{namespace}:cloud-edgefleet"
    for verb, resource in (("list", "secrets"), ("delete", "edgemodels.edgefleet.io"),
                           ("create", "pods")):
        allowed = kube.kubectl("auth", "can-i", verb, resource, "-n", namespace,
                               "--as", account, check=False).stdout.strip()
        assert allowed == "no", f"{verb} {resource}: {allowed}"

    start_operator("--lease-namespace", namespace, kubeconfig=kubeconfig)
    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    kube.create("edgemodels", namespace, model_body("digits", version="1.0.0"))
    wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Pending"})
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/1"}, timeout=60)
    eventually(lambda: kube.kubectl("get", "lease", "-n", namespace, "-o", "name").stdout,
               what="the operator's Lease in the release namespace")
