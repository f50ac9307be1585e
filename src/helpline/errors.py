"""Errors a shopper or operator can cause, each with its HTTP status and stable code (the contract's error shape)."""

from __future__ import annotations


class HelplineError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(HelplineError):
    status = 400
    code = "bad_request"


class Unauthorized(HelplineError):
    status = 401
    code = "unauthorized"


class Forbidden(HelplineError):
    status = 403
    code = "forbidden"


class NotFound(HelplineError):
    status = 404
    code = "not_found"


class UnsupportedMediaType(HelplineError):
    status = 415
    code = "unsupported_media_type"


class InvalidInput(HelplineError):
    status = 422
    code = "validation_error"


class TooManyRequests(HelplineError):
    status = 429
    code = "rate_limited"


class ServiceUnavailable(HelplineError):
    """A store the request needs did not answer; the request can be retried as it is."""

    status = 503
    code = "unavailable"
