"""What the inference servers let in: the bearer token, the size limit and the
concurrency limit, each refusal typed for both transports and counted by reason."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from edgefleet.edge_runtime.errors import ErrorCode, InferenceError
from edgefleet.edge_runtime.serving.admission import INLINE_DECODE_BYTES, REJECTIONS, Admission


@pytest.fixture
def admission() -> Iterator[Admission]:
    made = Admission("s3cret", max_request_bytes=1000, max_concurrent_requests=2)
    yield made
    made.close()


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value("edgefleet_edge_requests_rejected_total",
                                      {"reason": reason})
    assert value is not None, f"no series for reason {reason}"
    return value


def test_every_rejection_reason_is_exported_from_the_start(admission: Admission) -> None:
    assert REJECTIONS == ("unauthenticated", "too_large", "overloaded")
    assert all(rejected(reason) >= 0 for reason in REJECTIONS)


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer wrong", "Basic s3cret", "s3cret", "Bearer s3cret2",
])
def test_anything_but_the_bearer_token_is_unauthenticated(admission: Admission,
                                                          authorization: str | None) -> None:
    before = rejected("unauthenticated")
    with pytest.raises(InferenceError) as caught:
        admission.authenticate(authorization)
    assert caught.value.code is ErrorCode.UNAUTHENTICATED
    assert caught.value.code.http_status == 401
    assert "s3cret" not in caught.value.message  # the token is never echoed
    assert rejected("unauthenticated") == before + 1


def test_the_token_passes_in_either_case_of_the_scheme(admission: Admission) -> None:
    admission.authenticate("Bearer s3cret")
    admission.authenticate("bearer s3cret")


def test_without_a_token_configured_everyone_passes() -> None:
    open_admission = Admission(None, 1000, 1)
    try:
        open_admission.authenticate(None)
        assert not open_admission.requires_token
    finally:
        open_admission.close()


def test_a_request_above_the_limit_is_too_large_and_says_the_limit(admission: Admission) -> None:
    admission.check_size(1000)
    before = rejected("too_large")
    with pytest.raises(InferenceError) as caught:
        admission.check_size(1001)
    assert (caught.value.code.grpc_status_name, caught.value.code.http_status) == \
        ("RESOURCE_EXHAUSTED", 413)
    assert "1001 bytes is above the limit of 1000 bytes" in caught.value.message
    assert rejected("too_large") == before + 1


def test_slots_beyond_the_limit_are_refused_and_freed_when_requests_end(
    admission: Admission,
) -> None:
    before = rejected("overloaded")
    with admission.slot(), admission.slot():
        with pytest.raises(InferenceError) as caught, admission.slot():
            pass
        assert (caught.value.code.grpc_status_name, caught.value.code.http_status) == \
            ("RESOURCE_EXHAUSTED", 429)
        assert "all 2 inference request slots are busy" in caught.value.message
    assert admission.in_flight == 0
    with pytest.raises(InferenceError), admission.slot():
        raise InferenceError.invalid("a request that fails still frees its slot")
    assert admission.in_flight == 0
    assert rejected("overloaded") == before + 1


def test_small_requests_decode_inline_and_large_ones_in_the_one_decoding_thread(
    admission: Admission,
) -> None:
    def where() -> str:
        return threading.current_thread().name

    async def decode_both() -> tuple[str, str, str]:
        return (await admission.decode(INLINE_DECODE_BYTES, where),
                await admission.decode(INLINE_DECODE_BYTES + 1, where),
                await admission.decode(10**9, where))

    inline, large, larger = asyncio.run(decode_both())
    assert inline == threading.current_thread().name
    assert large == larger and large.startswith("decode")
