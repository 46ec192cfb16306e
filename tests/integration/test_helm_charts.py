"""The Helm charts, with helm built from its Go module (hack/helmbin) and the real
kube-apiserver: lint and render for several value sets, every rendered manifest
accepted by a server-side dry run, clear errors for wrong values, install, upgrade
and uninstall of both charts (the gateway CA outliving them), device credentials that
no node shares with another, and the operator running on nothing but the RBAC the
cloud chart grants."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client

from tests.conftest import Kube, StartEdge, StartOperator
from tests.helpers import eventually
from tests.integration.test_operator import device_body, model_body, wait_status

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOUD = REPO_ROOT / "helm" / "edgefleet"
EDGE = REPO_ROOT / "helm" / "edgefleet-edge"
# The pin of a gateway CA, as the cloud chart's NOTES tell how to get it.
PIN = "sha256:" + hashlib.sha256(b"a gateway CA's SubjectPublicKeyInfo").hexdigest()
EDGE_CLOUD = ["--set", "cloud.address=gateway.fleet.svc:50051", "--set", "namespace=fleet"]
EDGE_REQUIRED = [*EDGE_CLOUD, "--set", f"cloud.caCertHash={PIN}"]
EDGE_PLAINTEXT = [*EDGE_CLOUD, "--set", "insecurePlaintext=true",
                  "--set", "enrolment.bootstrapTokens=true"]

# Value sets each chart must lint, render and pass a server-side dry run with.
CLOUD_VALUES = {
    "default": [],
    "replicas 2": ["--set", "replicas=2"],
    "plaintext": ["--set", "gateway.insecurePlaintext=true"],
    "identity settings": ["--set", "gateway.enrolmentPort=8443",
                          "--set", "gateway.deviceCertValidity=86400",
                          "--set", "gateway.dnsNames={gateway.fleet.example}",
                          "--set", "gateway.ca.secretName=fleet-ca",
                          "--set", "gateway.signingSecretName=fleet-signing"],
    "cert-manager": ["--set", "gateway.ca.certManager.enabled=true"],
    "monitoring on": ["--set", "monitoring.serviceMonitor=true",
                      "--set", "monitoring.prometheusRule=true",
                      "--set", "monitoring.labels.release=prometheus"],
    "monitoring off": ["--set", "monitoring.serviceMonitor=false",
                       "--set", "monitoring.prometheusRule=false",
                       "--set", "grafana.dashboards=false"],
    "namespaced": ["--set", "watchNamespaces={NAMESPACE}"],  # the test's namespace
    "cluster-wide": ["--set", "clusterWide=true"],
    "no network policy": ["--set", "networkPolicy.enabled=false"],
    "artifact sources": ["--set", "artifacts.fileRoots={/srv/models}",
                         "--set", "artifacts.allowPrivateNetworks=true",
                         "--set", "extraVolumes[0].name=models",
                         "--set", "extraVolumes[0].emptyDir.sizeLimit=1Gi",
                         "--set", "extraVolumeMounts[0].name=models",
                         "--set", "extraVolumeMounts[0].mountPath=/srv/models",
                         "--set", "extraVolumeMounts[0].readOnly=true",
                         "--set", "networkPolicy.artifactEgress[0].to[0].ipBlock.cidr=10.8.0.0/16",
                         "--set", "networkPolicy.artifactEgress[0].ports[0].port=9000"],
    "remote write": ["--set", "metrics.remoteWriteUrl=http://prometheus.monitoring:9090/api/v1/write",
                     "--set", "networkPolicy.apiServer.to[0].ipBlock.cidr=10.0.0.1/32",
                     "--set", "networkPolicy.gatewayFrom[0].ipBlock.cidr=203.0.113.0/24"],
    "gateway pods": ["--set", "gateway.replicas=3", "--set", "replicas=2",
                     "--set", "gateway.ca.certManager.enabled=true",
                     "--set", "gateway.resources.limits.memory=2Gi",
                     "--set", "metrics.remoteWriteUrl=http://prometheus.monitoring:9090/api/v1/write",
                     "--set", "monitoring.serviceMonitor=true"],
}
EDGE_VALUES = {
    "default": EDGE_REQUIRED,
    "ca from a secret": [*EDGE_CLOUD, "--set", "tls.caSecretName=gateway-ca"],
    "fleet labels": [*EDGE_REQUIRED, "--set", "enrolment.labels.site=plant-7",
                     "--set", "cloud.enrolmentAddress=enrol.fleet.example:443"],
    "bootstrap tokens": [*EDGE_REQUIRED, "--set", "enrolment.bootstrapTokens=true"],
    "plaintext": EDGE_PLAINTEXT,
    "host network": [*EDGE_REQUIRED, "--set", "hostNetwork=true"],
    "data volume": [*EDGE_REQUIRED, "--set", "dataDir.volume.emptyDir.sizeLimit=10Gi"],
    "token, node only": [*EDGE_REQUIRED, "--set", "auth.tokenSecretName=inference-token",
                         "--set", "hostNetwork=true", "--set", "listenHost=127.0.0.1"],
    "no network policy": [*EDGE_REQUIRED, "--set", "networkPolicy.enabled=false"],
    "mutual tls": [*EDGE_REQUIRED, "--set", "inferenceTls.secretName=inference-tls",
                   "--set", "inferenceTls.requireClientCertificates=true"],
    "site network": [*EDGE_REQUIRED,
                     "--set", "networkPolicy.inferenceFrom[0].ipBlock.cidr=192.168.10.0/24",
                     "--set", "networkPolicy.gatewayTo[0].ipBlock.cidr=198.51.100.7/32"],
}


# The other operators' kinds the cloud chart may render, by API group.
STAND_IN_KINDS = [("monitoring.coreos.com", "ServiceMonitor"),
                  ("monitoring.coreos.com", "PrometheusRule"),
                  ("cert-manager.io", "Issuer"), ("cert-manager.io", "Certificate")]


def stand_in_crd(group: str, kind: str) -> dict:
    """A schemaless stand-in for a Prometheus Operator or cert-manager CRD (not
    installed in the local control plane), so that the API server can judge rendered
    objects of that kind."""
    plural = f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
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
    for group, kind in STAND_IN_KINDS:
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(stand_in_crd(group, kind)))
        kube.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     f"crd/{kind.lower()}s.{group}")
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
    assert "Role/release-edgefleet-leases" in kinds(two)
    # "auto" renders the ServiceMonitor where the cluster serves the API.
    auto = helm.template(CLOUD, [], namespace, "--api-versions", "monitoring.coreos.com/v1")
    assert "ServiceMonitor/release-edgefleet" in kinds(auto)
    (rule,) = [m for m in auto if m["kind"] == "PrometheusRule"]
    alerts = yaml.safe_load((REPO_ROOT / "monitoring" / "alerts.yaml").read_text())
    assert rule["spec"] == alerts  # the very rules promtool checks and tests
    namespaced = helm.template(CLOUD, ["--set", "watchNamespaces={fleet}"], namespace)
    (role,) = serving_roles(namespaced)
    assert role["metadata"]["namespace"] == "fleet"
    (cluster_role,) = [m for m in namespaced if m["kind"] == "ClusterRole"]
    assert {r["apiGroups"][0] for r in cluster_role["rules"]} == {"apiextensions.k8s.io", ""}


def the(manifests: list[dict], kind: str) -> dict:
    (manifest,) = [m for m in manifests if m["kind"] == kind]
    return manifest


def container_env(manifests: list[dict], kind: str) -> dict[str, str]:
    """The literal environment variables of the first container of the workload."""
    container = the(manifests, kind)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def grants(rules: list[dict], resource: str, name: str | None = None) -> set[str]:
    """The verbs the rules grant on a resource: on every object of it, or also those
    limited to the object `name`."""
    return {verb for rule in rules if resource in rule["resources"]
            and (not rule.get("resourceNames") or name in rule["resourceNames"])
            for verb in rule["verbs"]}


def serving_roles(manifests: list[dict]) -> list[dict]:
    """The Roles of the namespaces the operator serves: not its Lease's nor its
    identity Secrets' (which are the release namespace's alone)."""
    return [m for m in manifests if m["kind"] == "Role"
            and not m["metadata"]["name"].endswith(("-leases", "-identity", "-retraining"))]


def test_cloud_chart_reads_secrets_only_in_the_namespaces_it_serves(
    helm: Helm, namespace: str,
) -> None:
    default = helm.template(CLOUD, [], namespace)
    # No ClusterRole: nothing the operator holds reaches a Secret outside its namespaces.
    (cluster_role,) = [m for m in default if m["kind"] == "ClusterRole"]
    assert not grants(cluster_role["rules"], "secrets")
    roles = serving_roles(default)
    assert [r["metadata"]["namespace"] for r in roles] == [namespace]
    assert grants(roles[0]["rules"], "secrets") == {"get", "list", "watch"}
    assert grants(roles[0]["rules"], "events") == {"create", "patch"}
    # A device that enrols with a fleet token gets its EdgeDevice made by the gateway.
    assert grants(roles[0]["rules"], "edgedevices") == {"get", "list", "watch", "patch",
                                                        "create"}
    assert grants(roles[0]["rules"], "edgemodels") == {"get", "list", "watch", "patch"}
    # The operator serves exactly the namespaces its Roles cover.
    assert json.loads(container_env(default, "Deployment")["EDGEFLEET_NAMESPACES"]) == [namespace]

    listed = helm.template(CLOUD, ["--set", "watchNamespaces={fleet,plant-7}"], namespace)
    assert sorted(r["metadata"]["namespace"] for r in serving_roles(listed)) == [
        "fleet", "plant-7"]
    assert all("create" in grants(r["rules"], "edgedevices") for r in serving_roles(listed))
    assert sorted(b["metadata"]["namespace"] for b in listed if b["kind"] == "RoleBinding"
                  and not b["metadata"]["name"].endswith(("-identity", "-leases"))) == [
        "fleet", "plant-7"]
    env = container_env(listed, "Deployment")
    assert json.loads(env["EDGEFLEET_NAMESPACES"]) == ["fleet", "plant-7"]
    assert not grants(the(listed, "ClusterRole")["rules"], "secrets")

    # Cluster-wide only when asked: then one ClusterRole, and the operator serves all.
    wide = helm.template(CLOUD, ["--set", "clusterWide=true"], namespace)
    assert grants(the(wide, "ClusterRole")["rules"], "secrets") == {"get", "list", "watch"}
    assert "create" in grants(the(wide, "ClusterRole")["rules"], "edgedevices")
    assert not serving_roles(wide)
    assert "EDGEFLEET_NAMESPACES" not in container_env(wide, "Deployment")
    # The Leases (the leader's, the gateway replicas') and the identity Secrets stay
    # Roles of the release namespace in every mode.
    leader = helm.template(CLOUD, ["--set", "clusterWide=true", "--set", "replicas=2"],
                           namespace)
    identity_role, lease_role = sorted((m for m in leader if m["kind"] == "Role"),
                                       key=lambda m: m["metadata"]["name"])
    assert lease_role["metadata"]["name"].endswith("-leases")
    assert lease_role["metadata"]["namespace"] == namespace
    assert grants(lease_role["rules"], "leases") == {"get", "list", "create", "update",
                                                     "patch", "delete"}
    assert identity_role["metadata"]["namespace"] == namespace


def test_cloud_chart_grants_retraining_jobs_only_in_the_namespaces_listed(
    helm: Helm, namespace: str,
) -> None:
    def jobs_granted(manifests: list[dict]) -> dict[str, set[str]]:
        return {m["metadata"].get("namespace", "*"): grants(m["rules"], "jobs")
                for m in manifests if m["kind"] in ("Role", "ClusterRole")
                and grants(m["rules"], "jobs")}

    def retraining_namespaces(manifests: list[dict]) -> list[str]:
        return json.loads(container_env(manifests, "Deployment")[
            "EDGEFLEET_RETRAINING_NAMESPACES"])

    default = helm.template(CLOUD, [], namespace)
    assert jobs_granted(default) == {} and retraining_namespaces(default) == []
    assert not [m for m in default if m["kind"] == "ServiceAccount"
                and m["metadata"]["name"] == "edgefleet-retrain"]

    listed = helm.template(CLOUD, ["--set", "retraining.namespaces={fleet}"], namespace)
    assert jobs_granted(listed) == {"fleet": {"create", "get"}}
    assert retraining_namespaces(listed) == ["fleet"]
    (account,) = [m for m in listed if m["kind"] == "ServiceAccount"
                  and m["metadata"]["name"] == "edgefleet-retrain"]
    assert account["metadata"]["namespace"] == "fleet"
    assert account["automountServiceAccountToken"] is False

    served = helm.template(CLOUD, ["--set", "retraining.namespaces={*}",
                                   "--set", "watchNamespaces={fleet,plant-7}"], namespace)
    assert jobs_granted(served) == {"fleet": {"create", "get"}, "plant-7": {"create", "get"}}
    assert retraining_namespaces(served) == ["fleet", "plant-7"]
    wide = helm.template(CLOUD, ["--set", "retraining.namespaces={*}",
                                 "--set", "clusterWide=true"], namespace)
    assert jobs_granted(wide) == {"*": {"create", "get"}}
    assert retraining_namespaces(wide) == ["*"]


EXTENSION_POINTS = ["--set", "imagePullSecrets[0].name=registry", "--set",
                    "priorityClassName=fleet-critical", "--set", "commonLabels.team=ml",
                    "--set", "podLabels.tier=serving"]


def test_both_charts_take_the_usual_extension_points(helm: Helm, namespace: str) -> None:
    cloud = helm.template(CLOUD, [*EXTENSION_POINTS, "--set", "gateway.replicas=2"], namespace)
    edge = helm.template(EDGE, [*EDGE_REQUIRED, *EXTENSION_POINTS, "--set",
                                "affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuring"
                                "Execution[0].weight=1"], namespace)
    for manifest in (*cloud, *edge):
        assert manifest["metadata"]["labels"]["team"] == "ml", kinds([manifest])
    pods = [m["spec"]["template"] for m in (*cloud, *edge)
            if m["kind"] in ("Deployment", "DaemonSet")]
    assert len(pods) == 3  # the operator, the gateway replicas, the edge runtime
    for pod in pods:
        assert pod["metadata"]["labels"]["tier"] == "serving"
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
        assert pod["spec"]["priorityClassName"] == "fleet-critical"
    assert "nodeAffinity" in the(edge, "DaemonSet")["spec"]["template"]["spec"]["affinity"]
    # Drains evict one operator pod at a time, and one gateway pod at a time.
    budgets = {m["metadata"]["name"]: m["spec"] for m in cloud
               if m["kind"] == "PodDisruptionBudget"}
    assert budgets == {
        "release-edgefleet": {"maxUnavailable": 1, "selector": {"matchLabels": {
            "app.kubernetes.io/name": "edgefleet", "app.kubernetes.io/instance": "release"}}},
        "release-edgefleet-gateway": {"maxUnavailable": 1, "selector": {"matchLabels": {
            "app.kubernetes.io/name": "edgefleet-gateway",
            "app.kubernetes.io/instance": "release",
            "app.kubernetes.io/component": "gateway"}}}}


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    """A `helm test` pod's Python script, run here as its container would run it."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)


def test_cloud_chart_has_a_helm_test_the_network_policy_admits(
        helm: Helm, namespace: str, start_operator: StartOperator) -> None:
    """The rendered test pod's script, run here against a real operator (its Services'
    names standing for its address): it passes while the operator leads and serves,
    and fails once it is gone."""
    operator = start_operator()
    manifests = helm.template(CLOUD, [
        "--set", "networkPolicy.gatewayFrom[0].ipBlock.cidr=10.0.0.0/8",
        "--set", f"metrics.port={operator.metrics_port}",
        "--set", f"gateway.port={operator.grpc_port}",
        "--set", f"gateway.enrolmentPort={operator.enrolment_port}"], namespace)
    pod = the(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][2]
    assert f"http://release-edgefleet-metrics:{operator.metrics_port}/readyz" in script
    assert f"ports = [{operator.grpc_port}, {operator.enrolment_port}]" in script
    assert '"release-edgefleet-gateway"' in script
    here = script.replace("release-edgefleet-metrics", "127.0.0.1").replace(
        "release-edgefleet-gateway", "127.0.0.1")
    passed = run_script(here)
    assert passed.returncode == 0, passed.stderr
    assert "200" in passed.stdout and "accepts connections" in passed.stdout
    operator.stop()
    assert run_script(here).returncode != 0
    assert pod["spec"]["automountServiceAccountToken"] is False
    labels = pod["metadata"]["labels"]
    policy = next(m for m in manifests if m["kind"] == "NetworkPolicy"
                  and m["metadata"]["name"] == "release-edgefleet")
    for rule in policy["spec"]["ingress"]:  # both the metrics and the narrowed gateway ports
        selectors = [peer["podSelector"]["matchLabels"] for peer in rule.get("from", [])
                     if "podSelector" in peer and "namespaceSelector" not in peer]
        assert any(all(labels.get(k) == v for k, v in selector.items())
                   for selector in selectors), rule


def test_edge_chart_helm_test_checks_every_runtime_pod_it_finds(
        helm: Helm, namespace: str, start_edge: StartEdge) -> None:
    """The rendered test pod's script, run here against a real runtime (the headless
    Service's name standing for its address): it passes while the runtime serves and
    fails once it is gone."""
    edge = start_edge(REPO_ROOT / "examples" / "models")
    manifests = helm.template(EDGE, [
        *EDGE_REQUIRED, "--set", f"ports.grpc={edge.grpc_port}", "--set",
        f"ports.http={edge.http_port}", "--set",
        "networkPolicy.inferenceFrom[0].ipBlock.cidr=10.0.0.0/8"], namespace)
    pod, service = the(manifests, "Pod"), the(manifests, "Service")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == the(manifests, "DaemonSet")["spec"]["selector"][
        "matchLabels"]
    script = pod["spec"]["containers"][0]["command"][2]
    assert f'"{service["metadata"]["name"]}"' in script
    here = script.replace(f'"{service["metadata"]["name"]}"', '"127.0.0.1"')
    passed = run_script(here)
    assert passed.returncode == 0, passed.stderr
    assert "REST ready 200" in passed.stdout and "gRPC health SERVING" in passed.stdout
    edge.process.terminate()
    edge.process.wait(timeout=30)
    assert run_script(here).returncode != 0

    # The NetworkPolicy admits the test pod to the inference ports it narrowed.
    policy = the(manifests, "NetworkPolicy")
    inference = next(rule for rule in policy["spec"]["ingress"]
                     if {"port": "grpc", "protocol": "TCP"} in rule["ports"])
    labels = pod["metadata"]["labels"]
    assert any(all(labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
               for peer in inference["from"] if "podSelector" in peer)
    # Bound to loopback, nothing outside the node reaches the runtime: no test pod.
    loopback = helm.template(EDGE, [*EDGE_REQUIRED, "--set", "listenHost=127.0.0.1"],
                             namespace)
    assert "Pod" not in kinds(loopback)


def test_cloud_chart_lets_the_operator_keep_its_ca_and_signing_key_in_its_namespace(
    helm: Helm, namespace: str,
) -> None:
    """The operator creates the CA and signing Secrets when absent: create on Secrets of
    the release namespace (Kubernetes cannot narrow create to names), get and update
    of those two alone, whatever the namespaces it serves."""
    for values in ([], ["--set", "watchNamespaces={fleet}"], ["--set", "clusterWide=true"]):
        manifests = helm.template(CLOUD, [*values, "--set", "gateway.ca.secretName=fleet-ca"],
                                  namespace)
        (role,) = [m for m in manifests if m["kind"] == "Role"
                   and m["metadata"]["name"].endswith("-identity")]
        assert role["metadata"]["namespace"] == namespace, values
        assert grants(role["rules"], "secrets") == {"create"}, values
        for name in ("fleet-ca", "edgefleet-assignment-signing"):
            assert grants(role["rules"], "secrets", name) == {"create", "get", "update"}
        assert grants(role["rules"], "secrets", "another-secret") == {"create"}
        (binding,) = [m for m in manifests if m["kind"] == "RoleBinding"
                      and m["metadata"]["name"] == role["metadata"]["name"]]
        assert binding["subjects"][0]["name"] == the(manifests, "ServiceAccount")[
            "metadata"]["name"]
        env = container_env(manifests, "Deployment")
        assert env["EDGEFLEET_CA_SECRET_NAME"] == "fleet-ca"
        assert env["EDGEFLEET_SIGNING_SECRET_NAME"] == "edgefleet-assignment-signing"


def operator_settings_from(env: dict[str, str], tmp_path: Path,
                           args: list[str] | None = None) -> dict:
    """What the operator's own settings make of a rendered environment (and arguments)."""
    code = ("import json, sys; from edgefleet.operator.settings import OperatorSettings; "
            "print(OperatorSettings(_cli_parse_args=json.loads(sys.argv[1])).model_dump_json())")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(args or [])],
                            capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "PYTHONSAFEPATH": "1", **env},
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cloud_chart_artifact_settings_reach_the_operator(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    default = operator_settings_from(
        container_env(helm.template(CLOUD, [], namespace), "Deployment"), tmp_path)
    assert default["artifact_file_roots"] == []
    assert default["artifact_allow_private_networks"] is False
    assert default["namespaces"] == [namespace]

    manifests = helm.template(CLOUD, [
        "--set", "artifacts.fileRoots={/srv/models,/srv/more}",
        "--set", "artifacts.allowPrivateNetworks=true",
        "--set", "extraVolumes[0].name=models",
        "--set", "extraVolumes[0].emptyDir.sizeLimit=1Gi",
        "--set", "extraVolumeMounts[0].name=models",
        "--set", "extraVolumeMounts[0].mountPath=/srv/models",
        "--set", "extraVolumeMounts[0].readOnly=true"], namespace)
    settings = operator_settings_from(container_env(manifests, "Deployment"), tmp_path)
    assert settings["artifact_file_roots"] == ["/srv/models", "/srv/more"]
    assert settings["artifact_allow_private_networks"] is True
    pod = the(manifests, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "models", "mountPath": "/srv/models", "readOnly": True} in (
        pod["containers"][0]["volumeMounts"])
    assert "models" in [v["name"] for v in pod["volumes"]]


def test_cloud_chart_serves_enrolment_beside_the_gateway(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    default = helm.template(CLOUD, [], namespace)
    service = the([m for m in default if m["metadata"]["name"].endswith("-gateway")],
                  "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("gateway", 50051, "gateway"), ("enrolment", 50052, "enrolment")]
    container = the(default, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("gateway", 50051), ("enrolment", 50052), ("metrics", 8080)]
    env = container_env(default, "Deployment")
    assert env["EDGEFLEET_ENROLMENT_PORT"] == "50052"
    assert env["EDGEFLEET_INSECURE_PLAINTEXT"] == "false"
    assert env["EDGEFLEET_DEVICE_CERT_VALIDITY"] == "P30D"
    assert "EDGEFLEET_TLS_CERT_FILE" not in env  # the gateway serves from its own CA
    svc = service["metadata"]["name"]
    assert json.loads(env["EDGEFLEET_GATEWAY_DNS_NAMES"]) == [
        svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc"]
    settings = operator_settings_from(env, tmp_path)
    assert (settings["grpc_port"], settings["enrolment_port"]) == (50051, 50052)
    assert settings["insecure_plaintext"] is False
    assert settings["ca_secret_name"] == "edgefleet-gateway-ca"
    assert settings["signing_secret_name"] == "edgefleet-assignment-signing"
    assert settings["device_cert_validity"] == "P30D"
    assert settings["gateway_dns_names"] == json.loads(env["EDGEFLEET_GATEWAY_DNS_NAMES"])
    # The operator's CA and signing Secrets are no objects of the chart: Helm never
    # deletes them.
    assert not [m for m in default if m["kind"] == "Secret"]

    chosen = helm.template(CLOUD, CLOUD_VALUES["identity settings"], namespace)
    env = container_env(chosen, "Deployment")
    settings = operator_settings_from(env, tmp_path)
    assert settings["enrolment_port"] == 8443
    assert settings["device_cert_validity"] == "P1D"  # 86400 seconds, as ISO 8601
    assert settings["gateway_dns_names"][-1] == "gateway.fleet.example"
    assert (settings["ca_secret_name"], settings["signing_secret_name"]) == (
        "fleet-ca", "fleet-signing")

    # Plaintext: no enrolment port anywhere.
    plain = helm.template(CLOUD, ["--set", "gateway.insecurePlaintext=true"], namespace)
    assert operator_settings_from(container_env(plain, "Deployment"), tmp_path)[
        "insecure_plaintext"] is True
    service = the([m for m in plain if m["metadata"]["name"].endswith("-gateway")],
                  "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["gateway"]
    assert rule_ports(the(plain, "NetworkPolicy")["spec"]["ingress"][0]) == {
        ("gateway", "TCP")}


def named(manifests: list[dict], kind: str, name: str) -> dict:
    (manifest,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return manifest


def selects(selector: dict[str, str], pod: dict) -> bool:
    """Whether matchLabels `selector` selects the pods of the workload `pod`."""
    labels = pod["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_cloud_chart_serves_devices_from_the_operator_pod_by_default(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    """gateway.replicas 0: one process decides and serves devices, as before the roles."""
    default = helm.template(CLOUD, [], namespace)
    operator = the(default, "Deployment")  # the only one
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--no-leader-election"]
    settings = operator_settings_from(container_env(default, "Deployment"), tmp_path,
                                      container["args"])
    assert settings["role"] == "all"
    assert [p["name"] for p in container["ports"]] == ["gateway", "enrolment", "metrics"]
    # The operator's own budget alone: no gateway pods.
    assert [m["metadata"]["name"] for m in default if m["kind"] == "PodDisruptionBudget"] == [
        "release-edgefleet"]
    assert not [m for m in default if m["metadata"]["name"].endswith("-gateway-metrics")]
    for service in ("release-edgefleet-gateway", "release-edgefleet-metrics"):
        assert named(default, "Service", service)["spec"]["selector"] == (
            operator["spec"]["selector"]["matchLabels"])
    assert [p["metadata"]["name"] for p in default if p["kind"] == "NetworkPolicy"] == [
        "release-edgefleet"]


def test_cloud_chart_runs_gateway_pods_of_their_own_where_asked(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    """gateway.replicas > 0: a gateway Deployment (--role gateway) behind the gateway
    Service with a PodDisruptionBudget, and the operator as --role controller with no
    gateway port."""
    url = "http://prometheus.monitoring:9090/api/v1/write"
    manifests = helm.template(CLOUD, CLOUD_VALUES["gateway pods"], namespace)
    operator = named(manifests, "Deployment", "release-edgefleet")
    gateways = named(manifests, "Deployment", "release-edgefleet-gateway")
    assert (operator["spec"]["replicas"], gateways["spec"]["replicas"]) == (2, 3)
    # Neither Deployment's selector takes the other's pods.
    for workload, other in ((operator, gateways), (gateways, operator)):
        assert selects(workload["spec"]["selector"]["matchLabels"], workload)
        assert not selects(workload["spec"]["selector"]["matchLabels"], other)

    # The operator decides, leader-elected, and serves no device.
    pod = operator["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["--role", "controller", "--leader-election"]
    assert [p["name"] for p in container["ports"]] == ["metrics"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    settings = operator_settings_from({k: v for k, v in env.items() if v is not None},
                                      tmp_path, container["args"])
    assert (settings["role"], settings["leader_election"]) == ("controller", True)
    assert "EDGEFLEET_METRICS_REMOTE_WRITE_URL" not in env  # it holds no session

    # The gateways: the same image, command and settings, --role gateway, no Lease.
    gateway_pod = gateways["spec"]["template"]["spec"]
    (gateway,) = gateway_pod["containers"]
    assert gateway["image"] == container["image"] and "command" not in gateway
    assert gateway["args"] == ["--role", "gateway", "--no-leader-election"]
    assert {e["name"]: e.get("value") for e in gateway["env"]} == {
        **env, "EDGEFLEET_METRICS_REMOTE_WRITE_URL": url}
    assert [e for e in gateway["env"] if "valueFrom" in e] == [
        e for e in container["env"] if "valueFrom" in e]  # identity: the pod's name
    settings = operator_settings_from(
        {e["name"]: e["value"] for e in gateway["env"] if "value" in e}, tmp_path,
        gateway["args"])
    assert (settings["role"], settings["leader_election"]) == ("gateway", False)
    assert (settings["grpc_port"], settings["enrolment_port"]) == (50051, 50052)
    assert settings["metrics_remote_write_url"] == url
    assert [(p["name"], p["containerPort"]) for p in gateway["ports"]] == [
        ("gateway", 50051), ("enrolment", 50052), ("metrics", 8080)]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert gateway["resources"]["limits"]["memory"] == "2Gi"
    assert gateway["securityContext"] == container["securityContext"]
    assert gateway_pod["serviceAccountName"] == pod["serviceAccountName"]
    # Its own artifact cache, and cert-manager's CA awaited as by the operator.
    volumes = {v["name"]: v for v in gateway_pod["volumes"]}
    assert "emptyDir" in volumes["artifacts"]
    assert volumes["gateway-ca"] == {v["name"]: v for v in pod["volumes"]}["gateway-ca"]
    (spread,) = gateway_pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    term = spread["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == gateways["spec"]["selector"]["matchLabels"]

    # A drain takes one gateway at a time, and no operator pod counts.
    (budget,) = [m for m in manifests if m["kind"] == "PodDisruptionBudget"
                 and m["metadata"]["name"] == "release-edgefleet-gateway"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == (
        gateways["spec"]["selector"]["matchLabels"])
    assert not selects(budget["spec"]["selector"]["matchLabels"], operator)
    # Devices reach the gateway pods alone; each Deployment's metrics are scraped.
    for name, serves in (("release-edgefleet-gateway", gateways),
                         ("release-edgefleet-gateway-metrics", gateways),
                         ("release-edgefleet-metrics", operator)):
        selector = named(manifests, "Service", name)["spec"]["selector"]
        assert selects(selector, serves), name
        assert not selects(selector, operator if serves is gateways else gateways), name
    monitor = the(manifests, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert sorted(m["metadata"]["name"] for m in manifests if m["kind"] == "Service" and all(
        m["metadata"]["labels"].get(k) == v for k, v in monitor.items())) == [
        "release-edgefleet-gateway-metrics", "release-edgefleet-metrics"]
    # Only the gateway pods admit devices and send samples on.
    policies = {p["metadata"]["name"]: p["spec"] for p in manifests
                if p["kind"] == "NetworkPolicy"}
    assert policies["release-edgefleet-gateway"]["podSelector"]["matchLabels"] == (
        gateways["spec"]["selector"]["matchLabels"])
    assert [rule_ports(r) for r in policies["release-edgefleet-gateway"]["ingress"]] == [
        {("gateway", "TCP"), ("enrolment", "TCP")}, {("metrics", "TCP")}]
    assert [rule_ports(r) for r in policies["release-edgefleet"]["ingress"]] == [
        {("metrics", "TCP")}]
    assert (9090, "TCP") in rule_ports(policies["release-edgefleet-gateway"]["egress"][-1])
    assert len(policies["release-edgefleet"]["egress"]) == 3  # DNS, API server, artifacts

    # The budget is optional; the spread is configurable.
    fewer = helm.template(CLOUD, ["--set", "gateway.replicas=1",
                                  "--set", "gateway.podDisruptionBudget.enabled=false",
                                  "--set", "gateway.antiAffinity.mode=required"], namespace)
    assert [m["metadata"]["name"] for m in fewer if m["kind"] == "PodDisruptionBudget"] == [
        "release-edgefleet"]  # the operator's own
    spread = named(fewer, "Deployment", "release-edgefleet-gateway")["spec"]["template"][
        "spec"]["affinity"]["podAntiAffinity"]
    assert list(spread) == ["requiredDuringSchedulingIgnoredDuringExecution"]


def test_cloud_chart_lets_cert_manager_own_the_ca_where_asked(
    helm: Helm, namespace: str,
) -> None:
    cert_manager = ("--api-versions", "cert-manager.io/v1")
    for values, api, renders in (
        ([], cert_manager, False),  # off by default, served or not
        (["--set", "gateway.ca.certManager.enabled=auto"], (), False),
        (["--set", "gateway.ca.certManager.enabled=auto"], cert_manager, True),
        (["--set", "gateway.ca.certManager.enabled=true"], (), True),  # forced
        (["--set", "gateway.ca.certManager.enabled=false"], cert_manager, False),
    ):
        manifests = helm.template(CLOUD, values, namespace, *api)
        pod = the(manifests, "Deployment")["spec"]["template"]["spec"]
        owned = [m for m in manifests if m["apiVersion"] == "cert-manager.io/v1"]
        if not renders:
            assert not owned, (values, api)
            assert "gateway-ca" not in [v["name"] for v in pod["volumes"]]
            continue
        assert kinds(owned) == ["Certificate/release-edgefleet-gateway-ca",
                                "Issuer/release-edgefleet-selfsigned"], (values, api)
        issuer, certificate = the(owned, "Issuer"), the(owned, "Certificate")
        assert issuer["spec"] == {"selfSigned": {}}
        spec = certificate["spec"]
        assert spec["isCA"] is True
        assert spec["secretName"] == "edgefleet-gateway-ca"  # the operator's --ca-secret-name
        assert spec["issuerRef"] == {"name": "release-edgefleet-selfsigned",
                                     "kind": "Issuer", "group": "cert-manager.io"}
        # ECDSA P-256, and the key kept at renewal: the devices' pin never changes.
        assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256,
                                      "rotationPolicy": "Never"}
        assert (spec["duration"], spec["renewBefore"]) == ("87600h", "720h")
        # Uninstall keeps it (and so the Secret) unless told otherwise.
        for kept in (issuer, certificate):
            assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # The pod waits for cert-manager's Secret, mounting its certificate, never its key.
        (volume,) = [v for v in pod["volumes"] if v["name"] == "gateway-ca"]
        assert volume["secret"] == {"secretName": "edgefleet-gateway-ca",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}]}

    not_kept = helm.template(CLOUD, ["--set", "gateway.ca.certManager.enabled=true",
                                     "--set", "gateway.ca.certManager.keepOnUninstall=false"],
                             namespace)
    assert "annotations" not in the(not_kept, "Certificate")["metadata"]


def rule_ports(rule: dict) -> set[tuple[object, str]]:
    return {(p["port"], p["protocol"]) for p in rule["ports"]}


def test_cloud_network_policy_admits_devices_prometheus_and_named_egress_only(
    helm: Helm, namespace: str,
) -> None:
    default = helm.template(CLOUD, [], namespace)
    policy = the(default, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == (
        the(default, "Deployment")["spec"]["selector"]["matchLabels"])
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    gateway, metrics = policy["ingress"]
    # Sessions and enrolment, from anywhere.
    assert rule_ports(gateway) == {("gateway", "TCP"), ("enrolment", "TCP")}
    assert "from" not in gateway
    assert rule_ports(metrics) == {("metrics", "TCP")}
    helm_test = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "release",
                                                 "app.kubernetes.io/component": "helm-test"}}}
    assert metrics["from"] == [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app.kubernetes.io/name": "prometheus"}}}, helm_test]
    dns, api_server, artifacts = policy["egress"]
    assert rule_ports(dns) == {(53, "UDP"), (53, "TCP")}
    assert rule_ports(api_server) == {(443, "TCP"), (6443, "TCP")}
    # Artifacts by default: https to public addresses, never the metadata or private ranges.
    assert rule_ports(artifacts) == {(443, "TCP")}
    v4, v6 = (peer["ipBlock"] for peer in artifacts["to"])
    assert v4["cidr"] == "0.0.0.0/0" and {"169.254.0.0/16", "10.0.0.0/8"} <= set(v4["except"])
    assert v6["cidr"] == "::/0" and "fe80::/10" in v6["except"]

    narrowed = helm.template(CLOUD, [
        "--set", "metrics.remoteWriteUrl=http://prometheus.monitoring:9090/api/v1/write",
        "--set", "networkPolicy.apiServer.to[0].ipBlock.cidr=10.0.0.1/32",
        "--set", "networkPolicy.gatewayFrom[0].ipBlock.cidr=203.0.113.0/24",
        "--set", "networkPolicy.artifactEgress=null"], namespace)
    policy = the(narrowed, "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["from"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}, helm_test]
    dns, api_server, remote_write = policy["egress"]
    assert api_server["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert rule_ports(remote_write) == {(9090, "TCP")}
    assert remote_write["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}

    off = helm.template(CLOUD, ["--set", "networkPolicy.enabled=false"], namespace)
    assert "NetworkPolicy" not in {m["kind"] for m in off}


def edge_settings_from(env: dict[str, str], tmp_path: Path) -> dict:
    """What the edge runtime's `run` settings make of a rendered environment (the
    node's name and the $(...) reference as the kubelet would fill them in), with the
    runtime's own rules between its cloud flags applied as on a node not yet enrolled."""
    env = {name: value.replace("$(EDGEFLEET_EDGE_DEVICE)", "node-1")
           for name, value in env.items()}
    code = ("from edgefleet.edge_runtime.settings import RunSettings; "
            "s = RunSettings(_cli_parse_args=[]); s.check_cloud_link(identity_stored=False); "
            "print(s.model_dump_json())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "PYTHONSAFEPATH": "1",
                                 "EDGEFLEET_EDGE_DEVICE": "node-1", **env},
                            cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_edge_chart_chooses_the_listen_address_and_bounds_requests(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    default = helm.template(EDGE, EDGE_REQUIRED, namespace)
    env = container_env(default, "DaemonSet")
    # The chart sets the address itself; it never falls back to the command's default.
    assert env["EDGEFLEET_EDGE_LISTEN_HOST"] == "0.0.0.0"
    assert "EDGEFLEET_EDGE_AUTH_TOKEN_FILE" not in env
    settings = edge_settings_from(env, tmp_path)
    assert settings["listen_host"] == "0.0.0.0"
    assert settings["max_request_bytes"] == 8 * 2**20
    assert settings["max_concurrent_requests"] == 32
    assert settings["auth_token_file"] is None

    bounded = helm.template(EDGE, [*EDGE_REQUIRED, "--set", "maxRequestBytes=1048576",
                                   "--set", "maxConcurrentRequests=4"], namespace)
    settings = edge_settings_from(container_env(bounded, "DaemonSet"), tmp_path)
    assert (settings["max_request_bytes"], settings["max_concurrent_requests"]) == (2**20, 4)

    # A token from a Secret, mounted read-only; loopback with hostNetwork: the node only,
    # and the probes run inside the container, where loopback is reachable.
    node_only = helm.template(EDGE, [*EDGE_REQUIRED, "--set", "auth.tokenSecretName=inference",
                                     "--set", "auth.tokenKey=bearer", "--set", "hostNetwork=true",
                                     "--set", "listenHost=127.0.0.1"], namespace)
    env = container_env(node_only, "DaemonSet")
    assert env["EDGEFLEET_EDGE_LISTEN_HOST"] == "127.0.0.1"
    assert env["EDGEFLEET_EDGE_AUTH_TOKEN_FILE"] == "/etc/edgefleet/auth/token"
    pod = the(node_only, "DaemonSet")["spec"]["template"]["spec"]
    (auth,) = [v for v in pod["volumes"] if v["name"] == "auth"]
    assert auth["secret"]["secretName"] == "inference"
    assert auth["secret"]["items"] == [{"key": "bearer", "path": "token"}]
    container = pod["containers"][0]
    assert {"name": "auth", "mountPath": "/etc/edgefleet/auth", "readOnly": True} in (
        container["volumeMounts"])
    probe = container["readinessProbe"]["exec"]["command"]
    assert "http://127.0.0.1:8002/v2/health/ready" in probe[-1]  # the metrics port
    token = tmp_path / "etc" / "edgefleet" / "auth" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("s3cret\n")
    env["EDGEFLEET_EDGE_AUTH_TOKEN_FILE"] = str(token)  # where the mount would be
    assert edge_settings_from(env, tmp_path)["auth_token_file"] == str(token)


def test_edge_chart_serves_inference_over_mutual_tls_from_a_secret(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    manifests = helm.template(EDGE, EDGE_VALUES["mutual tls"], namespace)
    pod = the(manifests, "DaemonSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Probes use the metrics port, plain HTTP whatever the inference ports require.
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live",
                                                     "port": "metrics"}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "inference-tls"]
    assert volume["secret"]["secretName"] == "inference-tls"
    assert [i["key"] for i in volume["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    env = container_env(manifests, "DaemonSet")
    mounted = tmp_path / "inference-tls"
    mounted.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (mounted / name).write_text("PEM")
    env = {name: value.replace("/etc/edgefleet/inference-tls", str(mounted))
           for name, value in env.items()}
    settings = edge_settings_from(env, tmp_path)
    assert settings["tls_cert_file"] == str(mounted / "tls.crt")
    assert settings["tls_key_file"] == str(mounted / "tls.key")
    assert settings["tls_client_ca_file"] == str(mounted / "ca.crt")
    # Server TLS alone: no client CA, so any client with the token (if any) is served.
    server_only = helm.template(EDGE, [*EDGE_REQUIRED, "--set",
                                       "inferenceTls.secretName=inference-tls"], namespace)
    assert "EDGEFLEET_EDGE_TLS_CLIENT_CA_FILE" not in container_env(server_only, "DaemonSet")


def pod_of(manifests: list[dict]) -> dict:
    return the(manifests, "DaemonSet")["spec"]["template"]["spec"]


def test_no_edge_pod_can_read_another_nodes_credentials(helm: Helm, namespace: str) -> None:
    """Whatever the values, a pod mounts no Secret that holds per-node tokens: each
    Secret volume projects named keys, none of them a node's, and a node's own token and
    identity live in its data directory, a hostPath only that node's pods see."""
    shared = {"fleet-token": "token", "tls": "ca.crt", "auth": "token",
              "inference-tls": None}  # the only Secret volumes, and what they may hold
    for name, values in EDGE_VALUES.items():
        manifests = helm.template(EDGE, values, namespace)
        pod = pod_of(manifests)
        env = container_env(manifests, "DaemonSet")
        for volume in pod["volumes"]:
            if "secret" not in volume:
                continue
            assert volume["name"] in shared, (name, volume)
            assert volume["secret"].get("items"), (name, volume)  # never a whole Secret
            if shared[volume["name"]]:
                assert [i["key"] for i in volume["secret"]["items"]] == [
                    shared[volume["name"]]], (name, volume)
        assert not [value for value in env.values() if "$(EDGEFLEET_EDGE_DEVICE)" in value], name
        if "EDGEFLEET_EDGE_TOKEN_FILE" in env:
            assert env["EDGEFLEET_EDGE_TOKEN_FILE"] == "/data/bootstrap-token", name
    # The data directory, identity/ included, is the node's own and outlives the pod.
    pod = pod_of(helm.template(EDGE, EDGE_REQUIRED, namespace))
    (data,) = [v for v in pod["volumes"] if v["name"] == "data"]
    assert data["hostPath"] == {"path": "/var/lib/edgefleet", "type": "DirectoryOrCreate"}
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    assert container_env(helm.template(EDGE, EDGE_REQUIRED, namespace), "DaemonSet")[
        "EDGEFLEET_EDGE_DATA_DIR"] == "/data"


def test_edge_chart_enrols_with_the_fleet_token_by_default(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    manifests = helm.template(EDGE, EDGE_VALUES["fleet labels"], namespace)
    env = container_env(manifests, "DaemonSet")
    assert env["EDGEFLEET_EDGE_FLEET_TOKEN_FILE"] == "/etc/edgefleet/fleet-token/token"
    assert "EDGEFLEET_EDGE_TOKEN_FILE" not in env
    assert env["EDGEFLEET_EDGE_CA_CERT_HASH"] == PIN
    pod = pod_of(manifests)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "fleet-token"]
    assert volume["secret"]["secretName"] == "edgefleet-fleet-token"
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert {"name": "fleet-token", "mountPath": "/etc/edgefleet/fleet-token",
            "readOnly": True} in pod["containers"][0]["volumeMounts"]
    settings = edge_settings_from(env, tmp_path)
    assert settings["fleet_token_file"] == "/etc/edgefleet/fleet-token/token"
    assert settings["token_file"] is None
    assert settings["ca_cert_hash"] == PIN
    assert settings["label"] == {"site": "plant-7"}
    assert settings["enrolment_address"] == "enrol.fleet.example:443"
    assert settings["insecure_plaintext"] is False
    # The NetworkPolicy lets the pod reach the enrolment port as well as the sessions'.
    egress = the(manifests, "NetworkPolicy")["spec"]["egress"][1]
    assert rule_ports(egress) == {(50051, "TCP"), (443, "TCP")}

    # A pin alone, and the enrolment port beside the gateway's by default.
    default = helm.template(EDGE, EDGE_REQUIRED, namespace)
    env = container_env(default, "DaemonSet")
    assert "EDGEFLEET_EDGE_LABEL" not in env and "EDGEFLEET_EDGE_TLS_CA_FILE" not in env
    assert edge_settings_from(env, tmp_path)["enrolment_address"] is None
    assert rule_ports(the(default, "NetworkPolicy")["spec"]["egress"][1]) == {
        (50051, "TCP"), (50052, "TCP")}
    # Or the CA bundle from a Secret instead of the pin.
    from_secret = helm.template(EDGE, EDGE_VALUES["ca from a secret"], namespace)
    env = container_env(from_secret, "DaemonSet")
    assert env["EDGEFLEET_EDGE_TLS_CA_FILE"] == "/etc/edgefleet/tls/ca.crt"
    assert "EDGEFLEET_EDGE_CA_CERT_HASH" not in env


def test_edge_chart_reads_a_bootstrap_token_from_the_nodes_own_data_directory(
    helm: Helm, namespace: str, tmp_path: Path,
) -> None:
    manifests = helm.template(EDGE, EDGE_VALUES["bootstrap tokens"], namespace)
    env = container_env(manifests, "DaemonSet")
    assert env["EDGEFLEET_EDGE_TOKEN_FILE"] == "/data/bootstrap-token"
    assert "EDGEFLEET_EDGE_FLEET_TOKEN_FILE" not in env
    pod = pod_of(manifests)
    assert not [v for v in pod["volumes"] if "secret" in v]
    # The file the site put on the node becomes the runtime's, readable by it alone.
    (init,) = pod["initContainers"]
    assert "chown 65532:65532 /data/bootstrap-token" in init["command"][-1]
    settings = edge_settings_from(env, tmp_path)
    assert (settings["token_file"], settings["fleet_token_file"]) == (
        "/data/bootstrap-token", None)

    # Plaintext (development): the bootstrap token on every call, nothing of TLS.
    plain = helm.template(EDGE, [*EDGE_PLAINTEXT, "--set", "tls.caSecretName=gateway-ca"],
                          namespace)
    env = container_env(plain, "DaemonSet")
    assert env["EDGEFLEET_EDGE_INSECURE_PLAINTEXT"] == "true"
    assert not {"EDGEFLEET_EDGE_CA_CERT_HASH", "EDGEFLEET_EDGE_TLS_CA_FILE",
                "EDGEFLEET_EDGE_FLEET_TOKEN_FILE"} & set(env)
    assert edge_settings_from(env, tmp_path)["insecure_plaintext"] is True
    assert rule_ports(the(plain, "NetworkPolicy")["spec"]["egress"][1]) == {(50051, "TCP")}


def test_edge_network_policy_admits_named_callers_and_reaches_only_the_gateway(
    helm: Helm, namespace: str,
) -> None:
    default = helm.template(EDGE, ["--set", "cloud.address=gateway.example:443",
                                   "--set", f"cloud.caCertHash={PIN}",
                                   "--set", "namespace=fleet"], namespace)
    policy = the(default, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    inference, metrics = policy["ingress"]
    assert rule_ports(inference) == {("grpc", "TCP"), ("http", "TCP")}
    # This namespace's pods by default, and the `helm test` pod whatever the list says.
    test_pod = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "release",
                                                "app.kubernetes.io/component": "helm-test"}}}
    assert inference["from"] == [{"podSelector": {}}, test_pod]
    assert metrics["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}
    dns, gateway = policy["egress"]
    assert rule_ports(dns) == {(53, "UDP"), (53, "TCP")}
    # The port of cloud.address, and the enrolment port.
    assert rule_ports(gateway) == {(443, "TCP"), (50052, "TCP")} and "to" not in gateway

    site = helm.template(EDGE, EDGE_VALUES["site network"], namespace)
    policy = the(site, "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["from"] == [{"ipBlock": {"cidr": "192.168.10.0/24"}}, test_pod]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "198.51.100.7/32"}}]
    assert rule_ports(policy["egress"][1]) == {(50051, "TCP"), (50052, "TCP")}
    # A policy cannot bind a pod on the host's network: none is rendered to suggest one.
    for values in (["--set", "hostNetwork=true"], ["--set", "networkPolicy.enabled=false"]):
        manifests = helm.template(EDGE, [*EDGE_REQUIRED, *values], namespace)
        assert "NetworkPolicy" not in {m["kind"] for m in manifests}


@pytest.mark.parametrize(("chart", "values", "says"), [
    (CLOUD, ["--set", "replicas=0"], "at '/replicas': minimum"),
    (CLOUD, ["--set", "gateway.service.type=Public"], "at '/gateway/service/type'"),
    (CLOUD, ["--set", "leaderElection=maybe"], "at '/leaderElection'"),
    (CLOUD, ["--set", "gateway.prot=1"], "additional properties 'prot' not allowed"),
    (EDGE, ["--set", "namespace=fleet", "--set", f"cloud.caCertHash={PIN}"],
     "cloud.address (the gateway's HOST:PORT) is required"),
    (EDGE, [*EDGE_REQUIRED, "--set", "cloud.address=no port"], "at '/cloud/address'"),
    (EDGE, [*EDGE_REQUIRED, "--set", "dataDir.hostPath=relative"], "at '/dataDir/hostPath'"),
    (CLOUD, ["--set", "clusterWide=true", "--set", "watchNamespaces={fleet}"],
     "at '/watchNamespaces': maxItems"),
    (CLOUD, ["--set", "watchNamespaces={Fleet}"], "at '/watchNamespaces/0'"),
    (CLOUD, ["--set", "clusterWide=yes"], "at '/clusterWide'"),
    (CLOUD, ["--set", "artifacts.fileRoots={models}"], "at '/artifacts/fileRoots/0'"),
    (CLOUD, ["--set", "artifacts.fileRoots={/srv/../etc}"], "at '/artifacts/fileRoots/0'"),
    (CLOUD, ["--set", "artifacts.allowPrivateNetworks=sometimes"],
     "at '/artifacts/allowPrivateNetworks'"),
    (CLOUD, ["--set", "networkPolicy.enabled=maybe"], "at '/networkPolicy/enabled'"),
    (CLOUD, ["--set", "networkPolicy.gatewayFrom[0].ipBlock.cidr=anywhere"],
     "at '/networkPolicy/gatewayFrom/0/ipBlock/cidr'"),
    (CLOUD, ["--set", "networkPolicy.artifactEgress[0].ports[0].port=70000"],
     "at '/networkPolicy/artifactEgress/0/ports/0/port'"),
    (CLOUD, ["--set", "networkPolicy.apiServer.ports=null"], "at '/networkPolicy/apiServer'"),
    (EDGE, [*EDGE_REQUIRED, "--set", "listenHost=localhost"], "at '/listenHost'"),
    (EDGE, [*EDGE_REQUIRED, "--set", "auth.tokenSecretName=Bad_Name"],
     "at '/auth/tokenSecretName'"),
    (EDGE, [*EDGE_REQUIRED, "--set", "maxConcurrentRequests=0"], "at '/maxConcurrentRequests'"),
    (EDGE, [*EDGE_REQUIRED, "--set", "maxRequestBytes=10"], "at '/maxRequestBytes'"),
    (EDGE, [*EDGE_REQUIRED, "--set", "networkPolicy.inferenceFrom[0].podSelecter.x=y"],
     "additional properties 'podSelecter' not allowed"),
    (EDGE, [*EDGE_REQUIRED, "--set", "inferenceTls.requireClientCertificates=true"],
     "at '/inferenceTls/secretName': minLength"),
    # TLS needs the gateway CA: its pin or a Secret with it.
    (EDGE, EDGE_CLOUD, "at '/cloud/caCertHash': minLength"),
    (EDGE, [*EDGE_CLOUD, "--set", "tls.caSecretName="], "at '/cloud/caCertHash': minLength"),
    (EDGE, [*EDGE_CLOUD, "--set", "cloud.caCertHash=sha256:ABCD"], "at '/cloud/caCertHash'"),
    (EDGE, [*EDGE_CLOUD, "--set", "insecurePlaintext=true"],
     "at '/enrolment/bootstrapTokens': value must be true"),
    (EDGE, [*EDGE_REQUIRED, "--set", "enrolment.fleetTokenSecretName="],
     "at '/enrolment/fleetTokenSecretName': minLength"),
    (EDGE, [*EDGE_REQUIRED, "--set", "enrolment.labels.bad_=x"],
     "at '/enrolment/labels': additional properties 'bad_' not allowed"),
    (EDGE, [*EDGE_REQUIRED, "--set", "cloud.enrolmentAddress=enrol"],
     "at '/cloud/enrolmentAddress'"),
    # Every node's token in one Secret is gone for good.
    (EDGE, [*EDGE_REQUIRED, "--set", "tokenSecretName=edgefleet-device-tokens"],
     "additional properties 'tokenSecretName' not allowed"),
    (CLOUD, ["--set", "gateway.tlsSecretName=gateway-tls"],
     "additional properties 'tlsSecretName' not allowed"),
    (CLOUD, ["--set", "gateway.deviceCertValidity=30d"], "at '/gateway/deviceCertValidity'"),
    (CLOUD, ["--set", "gateway.ca.certManager.enabled=maybe"],
     "at '/gateway/ca/certManager/enabled'"),
    (CLOUD, ["--set", "gateway.enrolmentPort=50051"],
     "gateway.enrolmentPort must differ from gateway.port"),
    (CLOUD, ["--set", "gateway.dnsNames={Gateway.Example}"], "at '/gateway/dnsNames/0'"),
    (CLOUD, ["--set", "gateway.replicas=-1"], "at '/gateway/replicas': minimum"),
    (CLOUD, ["--set", "gateway.antiAffinity.mode=always"], "at '/gateway/antiAffinity/mode'"),
], ids=["replicas-0", "service-type", "leader-election", "unknown-key", "edge-no-cloud",
        "edge-bad-cloud", "edge-relative-path", "cluster-wide-with-namespaces",
        "namespace-name", "cluster-wide-not-bool", "file-root-relative", "file-root-dotdot",
        "private-networks-not-bool", "policy-not-bool", "cidr", "egress-port",
        "api-server-ports", "edge-listen-host", "edge-token-secret", "edge-concurrency-0",
        "edge-tiny-body-limit", "edge-peer-typo", "edge-client-ca-without-tls",
        "edge-no-pin-nor-ca", "edge-empty-ca-secret", "edge-bad-pin",
        "edge-plaintext-without-bootstrap-tokens", "edge-fleet-without-secret",
        "edge-label-key", "edge-enrolment-address", "edge-shared-token-secret",
        "cloud-tls-secret", "cloud-validity", "cloud-cert-manager", "cloud-same-ports",
        "cloud-dns-name", "cloud-gateway-replicas", "cloud-gateway-spread"])
def test_wrong_values_fail_at_install_naming_the_value(
    helm: Helm, chart: Path, values: list[str], says: str,
) -> None:
    result = helm.run("template", "release", str(chart), *values, check=False)
    assert result.returncode != 0
    assert says in result.stderr, result.stderr


def test_both_charts_install_upgrade_and_uninstall(helm: Helm, kube: Kube,
                                                   namespace: str) -> None:
    notes = helm.run("install", "cloud", str(CLOUD), "--namespace", namespace).stdout
    # The NOTES tell how to get the pin from the CA Secret, kubeadm style, and to give
    # it to the edge chart.
    assert (f"kubectl -n {namespace} get secret edgefleet-gateway-ca -o jsonpath="
            "'{.data.ca\\.crt}' | base64 -d") in notes, notes
    assert "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum" in notes
    assert "ca-cert-hash=sha256:" in notes and "--set cloud.caCertHash=sha256:<hex>" in notes
    apps = client.AppsV1Api(kube.api)
    assert apps.read_namespaced_deployment("cloud-edgefleet", namespace).spec.replicas == 1
    # The gateway CA as the operator creates it on its first start: no object of Helm's.
    ca = kube.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="edgefleet-gateway-ca"),
        string_data={"tls.crt": "CA", "tls.key": "KEY", "ca.crt": "CA"}))
    # Handing that CA to cert-manager would replace it: the upgrade refuses, naming why.
    refused = helm.run("upgrade", "cloud", str(CLOUD), "--namespace", namespace,
                       "--set", "gateway.ca.certManager.enabled=true", check=False)
    assert refused.returncode != 0
    assert "holds a CA the operator created" in refused.stderr, refused.stderr
    helm.run("upgrade", "cloud", str(CLOUD), "--namespace", namespace, "--set", "replicas=2")
    assert apps.read_namespaced_deployment("cloud-edgefleet", namespace).spec.replicas == 2
    notes = helm.run("install", "edge", str(EDGE), "--namespace", namespace,
                     *EDGE_REQUIRED).stdout
    assert f"public key hashes to {PIN}" in notes and "edgefleet.io/approved=true" in notes
    daemonset = apps.read_namespaced_daemon_set("edge-edgefleet-edge", namespace)
    env = {e.name: e for e in daemonset.spec.template.spec.containers[0].env}
    assert env["EDGEFLEET_EDGE_DEVICE"].value_from.field_ref.field_path == "spec.nodeName"
    helm.run("upgrade", "edge", str(EDGE), "--namespace", namespace, *EDGE_REQUIRED,
             "--set", "heartbeatSeconds=5")
    assert "edge" in helm.run("list", "--namespace", namespace, "--short").stdout.split()
    # Both NetworkPolicies exist for real, as the API server stored them.
    networking = client.NetworkingV1Api(kube.api)
    policies = {p.metadata.name: p for p in
                networking.list_namespaced_network_policy(namespace).items}
    assert sorted(policies) == ["cloud-edgefleet", "edge-edgefleet-edge"]
    assert [port.port for rule in policies["cloud-edgefleet"].spec.ingress
            for port in rule.ports] == ["gateway", "enrolment", "metrics"]

    # Gateway pods of their own: the operator's Deployment (its selector immutable) stays.
    helm.run("upgrade", "cloud", str(CLOUD), "--namespace", namespace, "--set", "replicas=2",
             "--set", "gateway.replicas=2")
    assert apps.read_namespaced_deployment("cloud-edgefleet-gateway", namespace).spec.replicas == 2
    assert client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget(
        "cloud-edgefleet-gateway", namespace).spec.max_unavailable == 1

    helm.run("uninstall", "edge", "--namespace", namespace)
    helm.run("uninstall", "cloud", "--namespace", namespace)
    assert not apps.list_namespaced_deployment(namespace).items
    assert not apps.list_namespaced_daemon_set(namespace).items
    assert not networking.list_namespaced_network_policy(namespace).items
    rbac = client.RbacAuthorizationV1Api(kube.api)
    assert "cloud-edgefleet" not in [r.metadata.name for r in rbac.list_cluster_role().items]
    # Upgrades and the uninstall kept the CA, so a reinstall serves the same one and
    # every enrolled device still trusts the gateway.
    kept = kube.core.read_namespaced_secret("edgefleet-gateway-ca", namespace)
    assert (kept.metadata.uid, kept.data) == (ca.metadata.uid, ca.data)


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
    """With the default values (the release namespace), the API server itself lets the
    operator's account read Secrets there, for its credential cache, and nowhere else."""
    helm.run("install", "cloud", str(CLOUD), "--namespace", namespace,
             "--set", "leaderElection=true")
    kubeconfig = service_account_kubeconfig(kube, namespace, "cloud-edgefleet",
                                            tmp_path / "operator.kubeconfig")
    account = f"system:serviceaccount:{namespace}:cloud-edgefleet"

    def can(verb: str, resource: str, *where: str) -> str:
        return kube.kubectl("auth", "can-i", verb, resource, *where, "--as", account,
                            check=False).stdout.strip()

    for verb in ("get", "list", "watch"):
        assert can(verb, "secrets", "-n", namespace) == "yes", verb
        for elsewhere in ("default", "kube-system"):
            assert can(verb, "secrets", "-n", elsewhere) == "no", (verb, elsewhere)
        assert can(verb, "secrets", "--all-namespaces") == "no", verb
    for verb, resource in (("delete", "edgemodels.edgefleet.io"), ("create", "pods"),
                           ("create", "jobs.batch"),
                           ("create", "edgemodels.edgefleet.io"),
                           ("update", "secrets/another-secret"),
                           ("delete", "secrets/edgefleet-gateway-ca"),
                           ("list", "edgemodels.edgefleet.io")):
        where = ("-n", namespace) if verb != "list" else ("-n", "default")
        assert can(verb, resource, *where) == "no", f"{verb} {resource}"
    # Its CA and signing Secrets: created if absent in its own namespace, and only
    # those two updated; EdgeDevices created for fleet enrolment where it serves.
    assert can("create", "secrets", "-n", namespace) == "yes"
    assert can("create", "secrets", "-n", "default") == "no"
    for name in ("edgefleet-gateway-ca", "edgefleet-assignment-signing"):
        for verb in ("get", "update"):
            assert can(verb, f"secrets/{name}", "-n", namespace) == "yes", (verb, name)
    assert can("create", "edgedevices.edgefleet.io", "-n", namespace) == "yes"
    assert can("create", "edgedevices.edgefleet.io", "-n", "default") == "no"

    operator = start_operator("--lease-namespace", namespace, kubeconfig=kubeconfig)
    # It made its CA and signing key on that RBAC, and logs the pin devices need.
    pin = eventually(lambda: re.search(r"ca-cert-hash=(sha256:[0-9a-f]{64})", operator.log()),
                     what="the pin in the operator's log").group(1)
    secret = kube.core.read_namespaced_secret("edgefleet-gateway-ca", namespace)
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret.data)
    assert kube.core.read_namespaced_secret("edgefleet-assignment-signing", namespace).data
    # The pin is what the cloud chart's NOTES compute from the Secret.
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret.data["ca.crt"]))
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pin == "sha256:" + hashlib.sha256(spki).hexdigest()
    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    kube.create("edgemodels", namespace, model_body("digits", version="1.0.0"))
    wait_status(kube, "edgedevices", namespace, "cam-1", {"phase": "Pending"})
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/1"}, timeout=60)
    eventually(lambda: kube.kubectl("get", "lease", "-n", namespace, "-o", "name").stdout,
               what="the operator's Lease in the release namespace")
