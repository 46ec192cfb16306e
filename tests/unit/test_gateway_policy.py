"""What the gateway lets a device claim and cost (gateway/policy.py): caps per message
kind, counts that can be true, session budgets, and the throttles for strangers and for
what is told about a device. Pure policy, on a fake clock; and which certificate a
replica's view of the fleet accepts (directory.py, FleetGateway._authenticate)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from edgefleet.edge_runtime.capture import encode_record
from edgefleet.operator import pki
from edgefleet.operator.credentials import CredentialStore, secret_token
from edgefleet.operator.gateway.directory import DeviceAccess, DeviceDirectory
from edgefleet.operator.gateway.policy import (
    ByteBudget,
    GatewayLimits,
    PeerThrottle,
    Refusal,
    SessionBudget,
    StatsBaseline,
    Throttle,
    TokenBucket,
    check_data_batch,
    check_hello,
    check_metrics_batch,
    check_models,
    check_stats,
    peer_address,
    with_assigned_digests,
)
from edgefleet.operator.gateway.server import FleetGateway
from edgefleet.operator.planner import Assignment, Capture
from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

LIMITS = GatewayLimits()
DIGEST = "sha256:" + "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(call: Any, *args: Any) -> Refusal:
    with pytest.raises(Refusal) as raised:
        call(*args)
    return raised.value


def model(**fields: Any) -> pb.ModelState:
    return pb.ModelState(**{"name": "digits", "version": "1", "digest": DIGEST,
                            "state": pb.ModelState.READY, **fields})


def stats(requests: int = 10, errors: int = 1, **fields: Any) -> pb.VersionStats:
    return pb.VersionStats(**{"model": "digits", "version": "1", "requests": requests,
                              "errors": errors, "latency_bounds_seconds": [0.01, 0.1],
                              "latency_counts": [5, 4, 1], **fields})


def test_what_a_runtime_sends_passes() -> None:
    check_models("report", [model(), model(name="other", variant="int8",
                                           execution_providers=["CPUExecutionProvider"])],
                 LIMITS)
    check_stats("report", [stats(), stats(version="2", top_class_counts=[1, 2])], LIMITS)
    check_hello(pb.Hello(capabilities=pb.Capabilities(
        arch="x86_64", cpus=2, execution_providers=["CPUExecutionProvider"]),
        models=[model()], runtime_version="0.1.0"), LIMITS)


@pytest.mark.parametrize(("models", "field", "reason", "said"), [
    ([model()] * 65, "report.models", "TooLarge", "65 entries, at most 64"),
    ([model(name="Not A Name!")], "report.models[0].name", "Malformed", "not a Kubernetes"),
    ([model(version="v" * 257)], "report.models[0].version", "TooLarge", "257 characters"),
    ([model(message="m" * 2049)], "report.models[0].message", "TooLarge", "at most 2048"),
    ([model(digest="sha256:../../x")], "report.models[0].digest", "Malformed", "sha256:"),
    ([model(digest="")], "report.models[0].digest", "Malformed", "sha256:"),
    ([model(state=42)], "report.models[0].state", "Malformed", "42 is not a known"),
    ([model(variant="../int8")], "report.models[0].variant", "Malformed", "not a variant"),
    ([model(execution_providers=["P"] * 17)], "report.models[0].execution_providers",
     "TooLarge", "17 entries, at most 16"),
    ([model(execution_providers=["P" * 257])], "report.models[0].execution_providers[0]",
     "TooLarge", "257 characters"),
])
def test_model_lists_are_capped_and_each_entry_checked(
    models: list[pb.ModelState], field: str, reason: str, said: str,
) -> None:
    refused = refusal(check_models, "report", models, LIMITS)
    assert (refused.kind, refused.field, refused.reason) == ("report", field, reason)
    assert said in str(refused) and field in str(refused)


def test_a_version_the_runtime_refused_is_reported_with_the_digest_it_was_assigned() -> None:
    refused = model(digest="", state=pb.ModelState.FAILED,
                    message="refused the assignment from the gateway: ...")
    stranger = model(name="other", digest="", state=pb.ModelState.FAILED)
    filled = with_assigned_digests([refused, stranger, model(digest="")],
                                   {("digits", "1"): DIGEST})
    assert [(m.name, m.digest, m.message) for m in filled] == [
        ("digits", DIGEST, refused.message), ("other", "", ""), ("digits", "", "")]
    check_models("report", filled[:1], LIMITS)
    assert refusal(check_models, "report", filled, LIMITS).field == "report.models[1].digest"


@pytest.mark.parametrize(("entries", "field", "reason"), [
    ([stats(version=str(i)) for i in range(65)], "heartbeat.stats", "TooLarge"),
    ([stats(), stats()], "heartbeat.stats[1]", "Malformed"),
    ([stats(latency_counts=[1, 2])], "heartbeat.stats[0].latency_counts", "Malformed"),
    ([stats(latency_bounds_seconds=[0.1, 0.01])],
     "heartbeat.stats[0].latency_bounds_seconds", "Malformed"),
    ([stats(latency_bounds_seconds=[0.1] * 33, latency_counts=[])],
     "heartbeat.stats[0].latency_bounds_seconds", "TooLarge"),
    ([stats(top_class_counts=[1] * 65)], "heartbeat.stats[0].top_class_counts", "TooLarge"),
    ([stats(requests=10, errors=10**6)], "heartbeat.stats[0].errors", "Implausible"),
    ([stats(requests=2**64 - 1, errors=0)], "heartbeat.stats[0]", "Implausible"),
    ([stats(labelled=5, correct=6)], "heartbeat.stats[0].correct", "Implausible"),
    ([stats(labelled=2**63, correct=0)], "heartbeat.stats[0]", "Implausible"),
])
def test_statistics_that_cannot_be_stored_or_be_true_are_refused(
    entries: list[pb.VersionStats], field: str, reason: str,
) -> None:
    refused = refusal(check_stats, "heartbeat", entries, LIMITS)
    assert (refused.field, refused.reason) == (field, reason)


def test_a_hello_is_capped_like_a_report() -> None:
    hello = pb.Hello(capabilities=pb.Capabilities(execution_providers=["x"] * 17))
    assert refusal(check_hello, hello, LIMITS).field == (
        "hello.capabilities.execution_providers")
    assert refusal(check_hello, pb.Hello(models=[model()] * 65), LIMITS).field == "hello.models"


def test_metrics_batches_are_capped_as_a_whole() -> None:
    now_ms = 1_700_000_000_000
    too_many = pb.MetricsBatch(sequence=1, timestamp_ms=now_ms, samples=[
        pb.MetricSample(name="edgefleet_cloud_connected", value=1)] * 5001)
    assert refusal(check_metrics_batch, too_many, LIMITS, now_ms).reason == "TooLarge"
    future = pb.MetricsBatch(sequence=2, timestamp_ms=now_ms + 3_600_000)
    refused = refusal(check_metrics_batch, future, LIMITS, now_ms)
    assert (refused.field, refused.reason, refused.sequence) == (
        "metrics.timestamp_ms", "Malformed", 2)
    assert refusal(check_metrics_batch, pb.MetricsBatch(), LIMITS, now_ms).field == (
        "metrics.sequence")


def test_counts_may_grow_only_as_fast_as_a_device_can_answer() -> None:
    baseline = StatsBaseline(LIMITS)
    baseline.check("heartbeat", [stats(requests=10, errors=0)], now=100.0)
    # The issue's figures: one device reporting 2^62 requests, or a million errors,
    # a second after it reported ten requests.
    for forged in (stats(requests=2**62, errors=0), stats(requests=10**6, errors=10**6)):
        refused = refusal(baseline.check, "heartbeat", [forged], 101.0)
        assert refused.reason == "Implausible" and "a device answers at most 50000" in str(
            refused)
    baseline.check("heartbeat", [stats(requests=10 + 50_000, errors=0)], now=101.0)


def test_the_first_report_of_a_session_is_bounded_by_a_month_of_answers() -> None:
    baseline = StatsBaseline(LIMITS)
    assert refusal(baseline.check, "hello", [stats(requests=2**62, errors=0)],
                   0.0).reason == "Implausible"
    baseline.check("report", [stats(requests=10**9, errors=0)], now=0.0)


def test_counts_never_go_down_within_a_session_but_a_reloaded_version_starts_afresh() -> None:
    baseline = StatsBaseline(LIMITS)
    baseline.check("heartbeat", [stats(requests=100, errors=5)], now=0.0)
    refused = refusal(baseline.check, "heartbeat", [stats(requests=90, errors=5)], 1.0)
    assert refused.reason == "Implausible" and "went down" in str(refused)
    baseline.check("heartbeat", [], now=2.0)  # unloaded
    baseline.check("heartbeat", [stats(requests=3, errors=0)], now=3.0)  # loaded again


def test_a_version_loaded_within_a_session_counts_no_more_than_the_session_lasted() -> None:
    baseline = StatsBaseline(LIMITS)
    baseline.check("heartbeat", [], now=0.0)
    baseline.check("heartbeat", [stats(version="2", requests=10, errors=0)], now=10.0)
    baseline.check("heartbeat", [], now=20.0)  # gone, and back with a month's worth
    refused = refusal(baseline.check, "heartbeat", [stats(version="2", requests=10**9)], 30.0)
    assert refused.reason == "Implausible" and "in 30 s" in str(refused)


def test_a_session_over_its_budget_is_read_more_slowly() -> None:
    clock = Clock()
    budget = SessionBudget(LIMITS, ByteBudget(LIMITS.gateway_queue_bytes), clock)
    assert budget.read(1000) == 0.0
    # 1,024 batches of 16 MiB: past the 8 MiB burst, each waits for its bytes.
    waits = [budget.read(16 * 2**20) for _ in range(3)]
    assert waits == pytest.approx([8.0, 24.0, 40.0], abs=0.01)
    clock.now += 40
    assert budget.read(0) == pytest.approx(0.0, abs=0.01)


def test_queued_metrics_are_bounded_per_session_and_for_the_gateway() -> None:
    shared = ByteBudget(6 * 2**20)
    first, second = SessionBudget(LIMITS, shared), SessionBudget(LIMITS, shared)
    assert first.try_queue(4 * 2**20) and not first.try_queue(1)
    assert second.try_queue(2 * 2**20) and not second.try_queue(1)  # the gateway's is full
    first.dequeue(2**20)
    assert second.try_queue(2**20)
    first.close()
    second.close()
    assert shared.held == 0


def test_failed_authentications_are_throttled_per_peer_address() -> None:
    clock = Clock()
    throttle = PeerThrottle(LIMITS, clock)
    attacker, device = peer_address("ipv4:10.0.0.7:51234"), peer_address("ipv6:[::1]:4000")
    assert (attacker, device) == ("ipv4:10.0.0.7", "ipv6:[::1]")
    for _ in range(LIMITS.auth_failure_burst):
        assert throttle.allows(attacker)
        throttle.failed(attacker)
    assert not throttle.allows(attacker) and throttle.allows(device)
    clock.now += 1 / LIMITS.auth_failures_per_second
    assert throttle.allows(attacker)


def test_the_throttle_tracks_a_bounded_number_of_peers() -> None:
    clock = Clock()
    throttle = PeerThrottle(GatewayLimits(max_tracked_peers=100), clock)
    for i in range(1000):
        throttle.failed(f"ipv4:10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100


def test_what_is_told_about_a_device_is_throttled_and_counts_what_was_held() -> None:
    clock = Clock()
    told = Throttle(60, clock)
    assert told.due("fleet/cam-1/Implausible") == 0
    assert [told.due("fleet/cam-1/Implausible") for _ in range(5)] == [None] * 5
    assert told.due("fleet/cam-2/Implausible") == 0
    clock.now += 60
    assert told.due("fleet/cam-1/Implausible") == 5


def test_what_is_told_forgets_devices_quiet_for_an_interval() -> None:
    clock = Clock()
    told = Throttle(60, clock)
    for i in range(5000):  # devices that misbehaved once, each, and went away
        told.due(f"fleet/cam-{i}/Implausible")
        clock.now += 0.1
    assert len(told) < 2048
    assert told.due("fleet/cam-4999/Implausible") is None  # still within its interval


def test_token_buckets_refill_up_to_their_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=4, clock=clock)
    bucket.take(4)
    assert not bucket.available()
    clock.now += 100
    assert bucket.full and bucket.reserve(4) == 0 and bucket.reserve(2) == 1.0


def test_credentials_hold_only_a_hash_and_answer_alike_for_unknown_and_wrong() -> None:
    store = CredentialStore()
    store.remember("fleet", "cam-1-token", b"s3cret")
    assert store.verify("fleet", "cam-1-token", "s3cret")
    assert not store.verify("fleet", "cam-1-token", "guess")
    assert not store.verify("other", "cam-1-token", "s3cret")  # namespaces are apart
    assert not store.verify("fleet", "", "")
    assert b"s3cret" not in repr(vars(store)).encode()
    store.forget("fleet", "cam-1-token")
    assert not store.verify("fleet", "cam-1-token", "s3cret")
    assert secret_token({"token": "czNjcmV0"}) == b"s3cret"
    assert secret_token({"token": "not base64!"}) is None and secret_token(None) is None


# ---------------------------------------------------------------- certificates not seen yet


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class PresentedCertificate:
    """The servicer context of a call over mutual TLS with this client certificate."""

    def __init__(self, pem: bytes) -> None:
        self._pem = pem

    def peer(self) -> str:
        return "ipv4:10.0.0.7:51234"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


CA_PEM, CA_KEY = pki.new_ca(datetime(2026, 1, 1, tzinfo=UTC))
CA = pki.CertificateAuthority(CA_PEM, CA_KEY, CA_PEM)


def issue(at: datetime) -> pki.IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    return CA.issue_device(csr, "fleet", "cam-1", timedelta(days=30), now=at)


def gateway_knowing(recorded: pki.IssuedCertificate | None) -> FleetGateway:
    directory = DeviceDirectory()
    directory.publish("fleet", "cam-1", "cam-1-token", [], DeviceAccess(
        serial=recorded.serial if recorded else "",
        not_before=recorded.not_before if recorded else None))
    return FleetGateway(directory, None, client.ApiClient(), 60,  # type: ignore[arg-type]
                        credentials=CredentialStore(), keystore=object())  # type: ignore[arg-type]


def authenticate(gateway: FleetGateway, certificate: pki.IssuedCertificate) -> str:
    """The serial the gateway accepts, or how it ends the call."""
    try:
        _, serial = asyncio.run(gateway._authenticate(  # type: ignore[arg-type]
            PresentedCertificate(certificate.pem)))
    except Aborted as aborted:
        return f"{aborted.code.name}: {aborted.details}"
    return serial


def test_a_certificate_newer_than_this_replica_knows_is_told_to_retry_not_to_enrol() -> None:
    older, recorded, newer = (issue(datetime(2026, 3, day, tzinfo=UTC)) for day in (1, 2, 3))
    gateway = gateway_knowing(recorded)
    assert authenticate(gateway, recorded) == recorded.serial
    # Renewed or enrolled again at another replica, not yet seen here: retry.
    answer = authenticate(gateway, newer)
    assert answer.startswith("UNAVAILABLE: ") and answer.endswith("retry")
    # Superseded: the device has a newer one, or this one is stolen.
    assert authenticate(gateway, older).startswith("UNAUTHENTICATED: ")
    # A view that records no date keeps the answer it always gave.
    assert authenticate(gateway_knowing(None), newer).startswith("UNAUTHENTICATED: ")


def test_a_replica_keeps_its_own_record_of_a_certificate_until_a_newer_one_is_watched() -> None:
    issued_here, renewed_elsewhere = (issue(datetime(2026, 3, day, tzinfo=UTC)) for day in (2, 3))
    stale = issue(datetime(2026, 3, 1, tzinfo=UTC))
    directory = DeviceDirectory()
    entry = directory.publish("fleet", "cam-1", "t", [], DeviceAccess())
    directory.issued(entry, issued_here.serial, "f" * 64, issued_here.not_before)
    # The watch still delivers an older EdgeDevice: this replica's record stands.
    directory.publish("fleet", "cam-1", "t", [], DeviceAccess(serial=stale.serial,
                                                             not_before=stale.not_before))
    assert entry.access.serial == issued_here.serial
    # Another replica renewed the certificate since: its record wins.
    directory.publish("fleet", "cam-1", "t", [], DeviceAccess(
        serial=renewed_elsewhere.serial, not_before=renewed_elsewhere.not_before))
    assert (entry.access.serial, entry.access.not_before) == (
        renewed_elsewhere.serial, renewed_elsewhere.not_before)


def test_data_batches_are_taken_only_for_collecting_models_in_sequence() -> None:
    collecting = [Assignment("digits", "1", "sha256:" + "a" * 64, 1,
                             capture=Capture(1.0, 0.0, False, 2**20, 2**20))]
    data = encode_record([({"kind": "sample", "id": "r1", "model": "digits",
                            "version": "1"}, {})])
    batch = pb.DataBatch(model="digits", records=[pb.DataRecord(sequence=1, data=data),
                                                  pb.DataRecord(sequence=2, data=data)])
    assert [r.sequence for r in check_data_batch(batch, collecting, LIMITS)] == [1, 2]
    cases = [
        (pb.DataBatch(model="other", records=batch.records), [], "data.model", "NotAllowed"),
        (batch, [Assignment("digits", "1", "sha256:" + "a" * 64, 1)], "data.model",
         "NotAllowed"),  # assigned, but collecting nothing
        (pb.DataBatch(model="digits", records=[batch.records[1], batch.records[0]]),
         collecting, "data.records[1].sequence", "Malformed"),
        (pb.DataBatch(model="digits", records=[pb.DataRecord(sequence=1, data=b"x")]),
         collecting, "data.records[0]", "Malformed"),
        (pb.DataBatch(model="digits", records=[batch.records[0]] * 257), collecting,
         "data.records", "TooLarge"),
    ]
    for refused_batch, assignments, field, reason in cases:
        refused = refusal(check_data_batch, refused_batch, assignments, LIMITS)
        assert (refused.field, refused.reason) == (field, reason)
