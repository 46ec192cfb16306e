"""The one error type of the serving path. Each carries a code that the transports map
to a gRPC status and an HTTP status, in one place: ErrorCode."""

from __future__ import annotations

from enum import Enum


class ErrorCode(Enum):
    # value: (gRPC status name, HTTP status)
    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 400)
    NOT_FOUND = ("NOT_FOUND", 404)
    UNAUTHENTICATED = ("UNAUTHENTICATED", 401)
    RESOURCE_EXHAUSTED = ("RESOURCE_EXHAUSTED", 413)  # the request is too large
    OVERLOADED = ("RESOURCE_EXHAUSTED", 429)  # too many requests in flight: retry later
    UNAVAILABLE = ("UNAVAILABLE", 503)
    FAILED_PRECONDITION = ("FAILED_PRECONDITION", 409)  # not while the runtime is in this mode
    INTERNAL = ("INTERNAL", 500)

    @property
    def grpc_status_name(self) -> str:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class InferenceError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The version that was serving the request when it failed, once one was chosen.
        self.version: str | None = None

    @classmethod
    def invalid(cls, message: str) -> InferenceError:
        return cls(ErrorCode.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> InferenceError:
        return cls(ErrorCode.NOT_FOUND, message)

    @classmethod
    def internal(cls, message: str) -> InferenceError:
        return cls(ErrorCode.INTERNAL, message)

    @classmethod
    def unauthenticated(cls, message: str) -> InferenceError:
        return cls(ErrorCode.UNAUTHENTICATED, message)

    @classmethod
    def too_large(cls, message: str) -> InferenceError:
        return cls(ErrorCode.RESOURCE_EXHAUSTED, message)

    @classmethod
    def overloaded(cls, message: str) -> InferenceError:
        return cls(ErrorCode.OVERLOADED, message)

    @classmethod
    def unavailable(cls, message: str) -> InferenceError:
        return cls(ErrorCode.UNAVAILABLE, message)

    @classmethod
    def failed_precondition(cls, message: str) -> InferenceError:
        return cls(ErrorCode.FAILED_PRECONDITION, message)
