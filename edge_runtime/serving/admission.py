"""What the inference servers let in, decided once for both transports: the bearer
token (when one is configured), the request's size and the number of inference requests
in flight; and where a large request is decoded.

Each refusal is an InferenceError (UNAUTHENTICATED/401, RESOURCE_EXHAUSTED/413 for size,
RESOURCE_EXHAUSTED/429 for load) and is counted in
`edgefleet_edge_requests_rejected_total{reason}`, reason one of REJECTIONS.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from edgefleet.edge_runtime import telemetry
from edgefleet.edge_runtime.errors import InferenceError

T = TypeVar("T")
UNAUTHENTICATED, TOO_LARGE, OVERLOADED = "unauthenticated", "too_large", "overloaded"
REJECTIONS = (UNAUTHENTICATED, TOO_LARGE, OVERLOADED)
# A request this small decodes on the event loop: the hop to a thread and back costs
# more (~95 us) than decoding it.
INLINE_DECODE_BYTES = 64 * 1024


class Admission:
    def __init__(self, token: str | None, max_request_bytes: int,
                 max_concurrent_requests: int) -> None:
        self._token = token.encode() if token else None
        self.max_request_bytes = max_request_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self.in_flight = 0
        # One thread: at most one large request decodes at a time, so the memory that
        # decoding takes beyond the body (a JSON number becomes a Python object first,
        # up to ~10x the body) is bounded by one request, whatever the load.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self._rejected = {reason: telemetry.REQUESTS_REJECTED.labels(reason)
                          for reason in REJECTIONS}

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    def authenticate(self, authorization: str | None) -> None:
        """Checks an `Authorization: Bearer <token>` value (HTTP header or gRPC
        metadata); passes everything when no token is configured."""
        if self._token is None:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        # compare_digest: the time taken says nothing about how much of a guess matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(),
                                                                 self._token):
            self._rejected[UNAUTHENTICATED].inc()
            raise InferenceError.unauthenticated(
                "authorization: a valid bearer token is required (Authorization: Bearer "
                "<token>); " + ("none was given" if not authorization else "this one is wrong"))

    def check_size(self, size: int) -> None:
        if size > self.max_request_bytes:
            raise self.too_large(f"{size} bytes")

    def too_large(self, size: str) -> InferenceError:
        """Counts a request refused for its size; the error to raise."""
        self._rejected[TOO_LARGE].inc()
        return InferenceError.too_large(
            f"request size: {size} is above the limit of {self.max_request_bytes} bytes "
            "(--max-request-bytes)")

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Holds one of the inference request slots; refuses when all are taken."""
        if self.in_flight >= self.max_concurrent_requests:
            self._rejected[OVERLOADED].inc()
            raise InferenceError.overloaded(
                f"concurrency: all {self.max_concurrent_requests} inference request slots "
                "are busy (--max-concurrent-requests); retry later")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def decode(self, size: int, decode: Callable[..., T], *args: object) -> T:
        """Runs `decode(*args)` for a request of `size` bytes: inline when small, else
        in the one decoding thread, off the event loop."""
        if size <= INLINE_DECODE_BYTES:
            return decode(*args)
        decoded, refusal = await asyncio.get_running_loop().run_in_executor(
            self._decoder, _refusal_apart, decode, *args)
        if refusal is not None:
            raise refusal
        return decoded

    def close(self) -> None:
        self._decoder.shutdown(wait=True)


def _refusal_apart(decode: Callable[..., T], *args: object) -> tuple[T | None,
                                                                      InferenceError | None]:
    """Runs `decode` in the decoding thread and returns its refusal as a value, a copy
    without the traceback: a raised one would keep the decoding frames, and the parsed
    body in them (~10x its size), alive until the request's answer is sent, and a decode
    of each waiting request would then add its own."""
    try:
        return decode(*args), None
    except InferenceError as error:
        return None, InferenceError(error.code, error.message)
