"""The local control plane is a real, secured Kubernetes of the pinned release."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from kubernetes import client

import localcluster
from tests.conftest import Kube
from tests.helpers import eventually

pytestmark = pytest.mark.integration
PINNED = re.search(r"k8s.io/kubernetes (v\S+)",
                   (Path(__file__).parents[2] / "hack/testbin/go.mod").read_text())


@pytest.mark.skipif("EDGEFLEET_TEST_KUBECONFIG" in os.environ,
                    reason="an existing cluster runs whatever release it runs")
def test_api_server_reports_the_pinned_release(kube: Kube) -> None:
    assert PINNED
    assert client.VersionApi(kube.api).get_code().git_version == PINNED.group(1)


def test_rbac_denies_an_identity_without_bindings(kube: Kube) -> None:
    answer = kube.kubectl("auth", "can-i", "list", "pods",
                          "--as=system:serviceaccount:default:nobody", check=False)
    assert answer.stdout.strip() == "no"
    assert kube.kubectl("auth", "can-i", "list", "pods").stdout.strip() == "yes"


def test_deleted_namespace_goes_away(kube: Kube) -> None:
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="doomed")))
    kube.core.create_namespaced_config_map("doomed", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="content")))
    kube.core.delete_namespace("doomed")
    eventually(lambda: "doomed" not in {ns.metadata.name
                                        for ns in kube.core.list_namespace().items},
               what="the namespace controller to finish deleting it")


def test_cluster_down_leaves_no_process_behind(tmp_path: Path) -> None:
    started = localcluster.up(tmp_path / "cluster")
    pids = [int((started.state_dir / f"{name}.pid").read_text())
            for name in localcluster.COMPONENTS]
    localcluster.down(started.state_dir)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not started.state_dir.exists()
