"""The operator's artifact path attacked as a namespace tenant would (issue 10, items 1,
2, 3, 7 and 11), against a real API server and operator process started with the
fixture's defaults: file:// below the test's own directory only, http(s) to public
addresses only. Each attack is refused with its own condition reason and an Event,
nothing it was after shows up in status, Events or the operator's log, and the operator
goes on serving the models that are in order."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import testmodels
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from onnx import TensorProto, helper

from tests.conftest import Fleet, Kube, OperatorProcess, StartOperator
from tests.helpers import eventually
from tests.integration.test_edge_cloud_link import edge_model, publish, reported

pytestmark = pytest.mark.integration

PASSWD = Path("/etc/passwd")


def artifact_condition(kube: Kube, namespace: str, name: str,
                       status: str = "False") -> dict[str, Any] | None:
    for condition in kube.get("edgemodels", namespace, name).get("status", {}).get(
            "conditions", []):
        if condition["type"] == "ArtifactReady" and condition["status"] == status:
            return condition
    return None


def refused(kube: Kube, namespace: str, name: str, reason: str) -> str:
    """The message of the model's ArtifactReady=False condition and of its Event."""
    condition = eventually(lambda: artifact_condition(kube, namespace, name), timeout=60,
                           what=f"{name}: ArtifactReady=False")
    assert condition["reason"] == reason, condition
    events = eventually(lambda: [e for e in kube.events(namespace, name)
                                 if e.reason == f"Artifact{reason}"],
                        what=f"{name}: an Artifact{reason} Event")
    assert events[0].type == "Warning" and events[0].message == condition["message"]
    assert "artifact" not in kube.get("edgemodels", namespace, name).get("status", {})
    return str(condition["message"])


def shown_anywhere(kube: Kube, namespace: str, operator: OperatorProcess) -> str:
    """Everything the operator has said: every EdgeModel's status, every Event of the
    namespace and its own log."""
    models = kube.custom.list_namespaced_custom_object("edgefleet.io", "v1alpha1", namespace,
                                                       "edgemodels")["items"]
    events = kube.core.list_namespaced_event(namespace).items
    return "\n".join([json.dumps([m.get("status", {}) for m in models]),
                      *(e.message or "" for e in events), operator.log()])


def still_serving(kube: Kube, namespace: str, root: Path) -> None:
    """A model in order, created after the attacks, is verified."""
    uri, sha = publish(root, testmodels.scaled(9.0))
    kube.create("edgemodels", namespace, edge_model("in-order", "1", uri, sha, site="x"))
    eventually(lambda: artifact_condition(kube, namespace, "in-order", "True"), timeout=60,
               what="a model in order to be verified")


def test_file_sources_outside_the_roots_are_refused_and_tell_nothing(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    """Item 1: any file on the operator's host, to any model author."""
    operator = start_operator()
    passwd_sha = hashlib.sha256(PASSWD.read_bytes()).hexdigest()
    (tmp_path / "innocent.onnx").symlink_to(PASSWD)
    outside = {
        "passwd": (PASSWD.as_uri(), "0" * 64),
        "passwd-with-its-digest": (PASSWD.as_uri(), passwd_sha),
        "token": ("file:///var/run/secrets/kubernetes.io/serviceaccount/token", "0" * 64),
        "missing": ("file:///etc/no-such-file", "0" * 64),
        "dot-dot": (f"file://{tmp_path}{'/..' * 12}/etc/passwd", "0" * 64),
        "symlink": ((tmp_path / "innocent.onnx").as_uri(), passwd_sha),
    }
    for name, (uri, sha) in outside.items():
        kube.create("edgemodels", namespace, edge_model(name, "1", uri, sha, site="x"))
    # Below a root: a wrong digest (the file's name tells nothing of it either), and a
    # file that is not there.
    content = testmodels.scaled(1.0)
    real_sha = hashlib.sha256(content).hexdigest()
    (tmp_path / "model.onnx").write_bytes(content)
    uri = (tmp_path / "model.onnx").as_uri()
    kube.create("edgemodels", namespace, edge_model("mismatch", "1", uri, "f" * 64, site="x"))
    kube.create("edgemodels", namespace, edge_model(
        "not-there", "1", (tmp_path / "not-there.onnx").as_uri(), "0" * 64, site="x"))

    messages = {name: refused(kube, namespace, name, "SourceNotAllowed") for name in outside}
    # The same words whether the file exists, is a secret, or is not there at all.
    assert len({message.replace(outside[name][0], "URI")
                for name, message in messages.items()}) == 1, messages
    assert messages["passwd"].endswith(
        "is not below a directory the operator may read artifacts from (--artifact-file-roots)")
    assert refused(kube, namespace, "mismatch", "DigestMismatch") == (
        f"{uri} does not match the digest in the spec")
    assert refused(kube, namespace, "not-there", "Unreachable").endswith("was not found")

    said = shown_anywhere(kube, namespace, operator)
    assert passwd_sha not in said and real_sha not in said
    assert "No such file" not in said
    still_serving(kube, namespace, tmp_path)


@dataclass
class CountingServer:
    """A loopback HTTP server answering from a table of paths, counting connections."""

    host: str
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    connections: int = 0
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


@pytest.fixture
def servers() -> Iterator[tuple[CountingServer, CountingServer]]:
    """One server on 127.0.0.1 and one on 127.0.0.2 (another host)."""
    started = []
    made = (CountingServer("127.0.0.1"), CountingServer("127.0.0.2"))
    for served in made:
        class Handler(http.server.BaseHTTPRequestHandler):
            table = served

            def do_GET(self) -> None:
                status, headers, body = self.table.routes.get(self.path.split("?")[0],
                                                              (404, {}, b""))
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Counting(http.server.ThreadingHTTPServer):
            table = served

            def process_request(self, request: Any, client_address: Any) -> None:
                self.table.connections += 1
                super().process_request(request, client_address)

        server = Counting((served.host, 0), Handler)
        served.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    yield made
    for server in started:
        server.shutdown()
        server.server_close()


def test_network_sources_reach_no_internal_address_by_default(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
    servers: tuple[CountingServer, CountingServer],
) -> None:
    """Items 1 and 11: fetches of in-cluster services and metadata addresses, and a URI
    carrying credentials and a presigned query."""
    operator = start_operator()
    local, _ = servers
    model = testmodels.scaled(1.0)
    sha = hashlib.sha256(model).hexdigest()
    local.routes["/model.onnx"] = (200, {}, model)
    sources = {
        "loopback": local.url("/model.onnx"),
        "localhost": f"http://localhost:{local.port}/model.onnx",
        "mapped": f"http://[::ffff:127.0.0.1]:{local.port}/model.onnx",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "with-secrets": (f"http://admin:hunter2@127.0.0.1:{local.port}/model.onnx"
                         "?X-Amz-Signature=s3cr3t"),
    }
    for name, uri in sources.items():
        kube.create("edgemodels", namespace, edge_model(name, "1", uri, sha, site="x"))
    for name in sources:
        message = refused(kube, namespace, name, "SourceNotAllowed")
        assert message.endswith("which the operator does not fetch from "
                                "(--artifact-allow-private-networks)"), message
    assert local.connections == 0  # refused before connecting: no traffic left
    said = shown_anywhere(kube, namespace, operator)
    assert "hunter2" not in said and "s3cr3t" not in said
    assert f"http://<redacted>@127.0.0.1:{local.port}/model.onnx?<redacted>" in said
    still_serving(kube, namespace, tmp_path)


def test_redirects_never_leave_the_source_even_where_private_networks_are_allowed(
    kube: Kube, namespace: str, start_operator: StartOperator,
    servers: tuple[CountingServer, CountingServer],
) -> None:
    """Item 1: http(s) fetches followed redirects anywhere (here the admin allows
    private networks, as for an in-cluster model server); and item 11 on a mismatch."""
    operator = start_operator("--artifact-allow-private-networks")
    local, other_host = servers
    model = testmodels.scaled(1.0)
    sha = hashlib.sha256(model).hexdigest()
    other_host.routes["/model.onnx"] = local.routes["/model.onnx"] = (200, {}, model)
    local.routes["/moved"] = (301, {"Location": "/model.onnx"}, b"")
    local.routes["/elsewhere"] = (302, {"Location": other_host.url("/model.onnx")}, b"")
    local.routes["/metadata"] = (307, {"Location": "http://169.254.169.254/latest/"}, b"")
    kube.create("edgemodels", namespace, edge_model("elsewhere", "1", local.url("/elsewhere"),
                                                    sha, site="x"))
    kube.create("edgemodels", namespace, edge_model("metadata", "1", local.url("/metadata"),
                                                    sha, site="x"))
    secret_uri = (f"http://admin:hunter2@127.0.0.1:{local.port}/model.onnx"
                  "?X-Amz-Signature=s3cr3t")
    kube.create("edgemodels", namespace, edge_model("with-secrets", "1", secret_uri, "e" * 64,
                                                    site="x"))
    kube.create("edgemodels", namespace, edge_model("moved", "1", local.url("/moved"), sha,
                                                    site="x"))

    assert refused(kube, namespace, "elsewhere", "SourceNotAllowed") == (
        f"{local.url('/elsewhere')} redirected to {other_host.url('/model.onnx')}: redirects "
        "may not leave the source's scheme, host and port")
    assert "redirected to http://169.254.169.254/latest/" in refused(
        kube, namespace, "metadata", "SourceNotAllowed")
    assert refused(kube, namespace, "with-secrets", "DigestMismatch") == (
        f"http://<redacted>@127.0.0.1:{local.port}/model.onnx?<redacted> does not match the "
        "digest in the spec")
    assert other_host.connections == 0
    # A redirect within the source's origin is followed: the operator still serves.
    eventually(lambda: artifact_condition(kube, namespace, "moved", "True"), timeout=60,
               what="a redirect within the origin to be followed")
    said = shown_anywhere(kube, namespace, operator)
    assert "hunter2" not in said and "s3cr3t" not in said


def unsafe_model() -> bytes:
    """A valid ONNX model whose initializer ONNX Runtime would read from etc/hostname,
    relative to the device's working directory."""
    weights = helper.make_tensor("W", TensorProto.FLOAT, [2], [0.0, 0.0])
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "etc/hostname"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["y"])], "leak", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             ).SerializeToString()


def test_a_model_that_names_a_file_on_the_device_is_refused_before_any_device_gets_it(
    fleet: Fleet,
) -> None:
    """Item 3 (the operator's side): models that read the device."""
    kube, namespace = fleet.kube, fleet.namespace
    fleet.add_device("cam-1", site="plant-7")
    fleet.start("cam-1")
    uri, sha = publish(fleet.root, unsafe_model())
    kube.create("edgemodels", namespace, edge_model("leak", "1", uri, sha, site="plant-7"))
    message = refused(kube, namespace, "leak", "UnsafeModel")
    assert message == (f"{uri} is an ONNX model that names other files, which devices would "
                       "read: graph 'leak' > initializer[0] 'W': external data at "
                       "'etc/hostname'")
    assert kube.get("edgemodels", namespace, "leak")["status"]["phase"] == "Pending"
    # The device is served a model in order, and never the unsafe one.
    safe_uri, safe_sha = publish(fleet.root, testmodels.scaled(2.0))
    kube.create("edgemodels", namespace, edge_model("safe", "1", safe_uri, safe_sha,
                                                    site="plant-7"))
    eventually(lambda: [(m["name"], m["state"]) for m in reported(kube, namespace, "cam-1")]
               == [("safe", "Ready")], timeout=60, what="cam-1 serving the safe model only")


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    """A second tenant's namespace."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    kube.core.delete_namespace(name)


def test_a_tenant_that_knows_another_tenants_digest_gets_none_of_its_bytes(
    kube: Kube, namespace: str, other_namespace: str, start_operator: StartOperator,
    tmp_path: Path,
) -> None:
    """Item 7: tenants shared the cache; B, with a bogus URI and A's digest, got A's bytes."""
    operator = start_operator("--namespaces", other_namespace)
    uri, sha = publish(tmp_path, testmodels.scaled(3.0))
    kube.create("edgemodels", namespace, edge_model("private", "1", uri, sha, site="x"))
    eventually(lambda: artifact_condition(kube, namespace, "private", "True"), timeout=60,
               what="tenant A's model verified")
    bogus = (tmp_path / "bogus.onnx").as_uri()
    kube.create("edgemodels", other_namespace, edge_model("stolen", "1", bogus, sha,
                                                          site="x"))
    assert refused(kube, other_namespace, "stolen", "Unreachable") == f"{bogus} was not found"
    assert operator.is_ready()
    assert kube.get("edgemodels", namespace, "private")["status"]["artifact"]["digest"] == (
        f"sha256:{sha}")


def test_a_digest_that_is_a_path_is_refused_by_the_api_server(
    kube: Kube, namespace: str, start_operator: StartOperator, tmp_path: Path,
) -> None:
    """Item 2: a status patch with '..' in status.artifact.digest made the gateway stream
    a file outside the cache."""
    operator = start_operator()
    uri, sha = publish(tmp_path, testmodels.scaled(4.0))
    kube.create("edgemodels", namespace, edge_model("digits", "1", uri, sha, site="x"))
    eventually(lambda: artifact_condition(kube, namespace, "digits", "True"), timeout=60,
               what="the model verified")
    escape = "sha256:../../../var/run/secrets/kubernetes.io/serviceaccount/token"
    for status in ({"artifact": {"version": "1", "digest": escape, "sizeBytes": 5}},
                   {"stableArtifact": {"version": "1", "digest": escape, "sizeBytes": 5}}):
        with pytest.raises(ApiException) as caught:
            kube.patch_status("edgemodels", namespace, "digits", status)
        assert caught.value.status == 422
        assert f"status.{next(iter(status))}.digest" in str(caught.value.body)
    kube.create("edgedevices", namespace, {
        "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
        "metadata": {"name": "cam-1"}, "spec": {"bootstrapTokenSecretRef": {"name": "t"}}})
    with pytest.raises(ApiException) as caught:
        kube.patch_status("edgedevices", namespace, "cam-1", {"models": [
            {"name": "digits", "version": "1", "digest": "sha256:../../x", "state": "Ready"}]})
    assert "status.models[0].digest" in str(caught.value.body)
    assert kube.get("edgemodels", namespace, "digits")["status"]["artifact"]["digest"] == (
        f"sha256:{sha}")
    assert operator.is_ready()
