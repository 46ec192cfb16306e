"""Two operator processes on one API server: exactly one acts; when it dies, the other
takes over."""

from __future__ import annotations

import base64
import uuid

import grpc
import pytest
from kubernetes import client

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb
from edgefleet.protocol.identity import GATEWAY_SERVER_NAME
from tests.conftest import Kube, OperatorProcess, StartOperator
from tests.helpers import eventually
from tests.integration.test_operator import device_body, model_body, wait_status

pytestmark = pytest.mark.integration


def reconciles(operator: OperatorProcess) -> float:
    return sum(operator.metric("edgefleet_operator_reconciles_total", outcome=outcome,
                               resource=resource) or 0
               for outcome in ("updated", "unchanged", "error")
               for resource in ("EdgeModel", "EdgeDevice"))


def test_only_the_lease_holder_acts_and_a_standby_takes_over_when_it_dies(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    lease = f"edgefleet-shared-{uuid.uuid4().hex[:8]}"
    first = start_operator(lease=lease)
    second = start_operator(lease=lease, wait_ready=False)
    eventually(lambda: second.get("/healthz")[0] == 200, what="standby serving /healthz")

    kube.create("edgedevices", namespace, device_body("cam-1", site="plant-7"))
    kube.create("edgemodels", namespace, model_body("digits"))
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/1"})
    assert first.metric("edgefleet_operator_leader") == 1
    assert second.metric("edgefleet_operator_leader") == 0
    assert reconciles(first) >= 2
    assert reconciles(second) == 0
    assert second.get("/readyz")[0] == 503
    holder = kube.kubectl("get", "lease", lease, "-n", namespace,
                          "-o", "jsonpath={.spec.holderIdentity}").stdout
    assert holder and holder in first.log()

    first.kill()  # a crash: the lease is not released and must expire
    eventually(second.is_ready, timeout=30, what=f"standby to lead; log:\n{second.log()}")
    assert second.metric("edgefleet_operator_leader") == 1
    kube.create("edgedevices", namespace, device_body("cam-2", site="plant-7"))
    wait_status(kube, "edgemodels", namespace, "digits", {"readySummary": "0/2"})
    assert reconciles(second) >= 1


def test_a_cleanly_stopped_leader_releases_the_lease_at_once(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    lease = f"edgefleet-shared-{uuid.uuid4().hex[:8]}"
    leader = start_operator("--lease-duration-seconds", "600", lease=lease)
    standby = start_operator("--lease-duration-seconds", "600", lease=lease, wait_ready=False)
    eventually(lambda: standby.get("/healthz")[0] == 200, what="standby serving /healthz")

    def lease_spec() -> dict[str, object]:
        return kube.api.sanitize_for_serialization(
            client.CoordinationV1Api(kube.api).read_namespaced_lease(lease, namespace).spec)

    assert lease_spec()["leaseDurationSeconds"] == 600
    leader_identity = lease_spec()["holderIdentity"]
    # The gateway has answered a call (gRPC's own tasks are running) when it stops.
    ca = base64.b64decode(kube.core.read_namespaced_secret(
        "edgefleet-gateway-ca", namespace).data["ca.crt"])
    with grpc.secure_channel(f"127.0.0.1:{leader.enrolment_port}",
                             grpc.ssl_channel_credentials(ca),
                             options=[("grpc.ssl_target_name_override",
                                       GATEWAY_SERVER_NAME)]) as channel:
        enroll = channel.unary_unary("/edgefleet.v1.FleetGateway/Enroll",
                                     request_serializer=pb.EnrollRequest.SerializeToString,
                                     response_deserializer=pb.EnrollResponse.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            enroll(pb.EnrollRequest(namespace=namespace, device="nobody"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no CSR
    assert leader.stop() == 0, leader.log()[-3000:]
    # A 10-minute lease cannot have expired: the standby leads because it was released.
    eventually(standby.is_ready, timeout=30, what="standby to lead after a clean stop")
    assert lease_spec()["holderIdentity"] not in (None, "", leader_identity)


def test_a_leader_that_loses_its_lease_stops_acting_and_exits(
    kube: Kube, namespace: str, start_operator: StartOperator
) -> None:
    lease = f"edgefleet-shared-{uuid.uuid4().hex[:8]}"
    leader = start_operator("--lease-duration-seconds", "30", lease=lease)
    coordination = client.CoordinationV1Api(kube.api)
    taken = coordination.read_namespaced_lease(lease, namespace)
    taken.spec.holder_identity = "another-replica"
    coordination.replace_namespaced_lease(lease, namespace, taken)

    assert leader.process.wait(timeout=30) == 1
    assert "leadership lost" in leader.log()
