"""Every failure leaves as ``{"error": {"code", "message", "request_id"}}``; never a stack trace."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from helpline.api.middleware import current_request_id
from helpline.api.responses import JsonResponse
from helpline.errors import HelplineError

log = structlog.get_logger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    body = {"error": {"code": code, "message": message, "request_id": current_request_id()}}
    return JsonResponse(body, status_code=status, headers=headers)


async def _helpline_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, HelplineError)  # noqa: S101 - registered for this type only
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg", "invalid"))


async def _validation_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, "invalid_json", "request body is not valid JSON")
    return error_response(422, "validation_error", "; ".join(_describe(error) for error in errors[:5]))


async def _unexpected(_request: Request, exc: Exception) -> JsonResponse:
    log.exception("unhandled_error", error_type=type(exc).__name__)
    return error_response(500, "internal_error", "something went wrong on our side; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HelplineError, _helpline_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
