"""One error envelope for every error the service returns.

Every non-2xx answer has the body ``{"error": {"code": "...", "message": "..."}}``: ``code``
is stable (clients branch on it), ``message`` says what to fix. Library errors are mapped
here, in one table, so an endpoint only raises.

>>> from twostage.server.errors import ApiError
>>> err = ApiError(422, "k_out_of_range", "k must be in 1..1000, not 0")
>>> err.body()
{'error': {'code': 'k_out_of_range', 'message': 'k must be in 1..1000, not 0'}}
"""

from __future__ import annotations

from typing import Any

from twostage import errors as E


class ApiError(Exception):
    """An error answer: HTTP status, stable code, a message that says what to fix."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON envelope."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class BodyTooLarge(ApiError):
    """The request body is over ``max_body_bytes`` (raised while it is read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", f"the request body is over the limit of {limit} bytes"
        )


class Overloaded(ApiError):
    """503 ``overloaded``: refused without running (a full queue, or its deadline passed while
    it waited); ``Retry-After`` says when to try again. ``reason`` labels the shed metric."""

    def __init__(self, message: str, *, reason: str, retry_after_s: int) -> None:
        super().__init__(
            503, "overloaded", message, headers={"Retry-After": str(max(1, retry_after_s))}
        )
        self.reason = reason


# Most specific first: the first class an error is an instance of decides.
_LIBRARY: list[tuple[type[BaseException], int, str]] = [
    (E.KeyNotFound, 404, "not_found"),
    (E.ModelNotFound, 404, "model_not_found"),
    (E.InvalidModel, 422, "model_rejected"),
    (E.ProviderUnavailable, 422, "model_rejected"),
    (E.EncoderMismatch, 409, "encoder_mismatch"),
    (E.CollectionLocked, 409, "collection_locked"),
    (E.ReadOnlyCollection, 409, "read_only"),
    (E.DimensionMismatch, 422, "invalid_argument"),
    (E.InvalidVector, 422, "invalid_argument"),
    (E.DuplicateKey, 422, "invalid_argument"),
    (E.InvalidArgument, 422, "invalid_argument"),
    (E.VersionConflict, 409, "conflict"),
    (E.CorruptIndex, 500, "storage_error"),
    (E.CorruptStore, 500, "storage_error"),
    (E.ReadOnlyIndex, 500, "storage_error"),
]

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal",
    503: "not_ready",
}


def from_library(exc: BaseException) -> ApiError:
    """The answer for an exception a library call raised; unknown ones are ``internal``."""
    if isinstance(exc, ApiError):
        return exc
    for cls, status, code in _LIBRARY:
        if isinstance(exc, cls):
            return ApiError(status, code, str(exc))
    if isinstance(exc, E.TwostageError):
        return ApiError(500, "internal", f"{type(exc).__name__}: {exc}")
    # Never leak a stack or an internal repr of an unexpected error: the log has it.
    return ApiError(500, "internal", "internal error; the server log has the details")


__all__ = ["STATUS_CODES", "ApiError", "BodyTooLarge", "Overloaded", "from_library"]
