"""RFC 9457 problem+json: the one place where a failure becomes an HTTP status.

`STATUS_BY_CODE` is the table: every domain error's and ledger refusal's `code` and the status it is
answered with. Litestar's own exceptions (routing, body limits, parameter validation) are translated to
the same codes, so a client sees one error shape whatever refused it.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.types import ExceptionHandlersMap

import ledger
from entitlements.database import is_unavailable
from entitlements.errors import DomainError, ValidationFailed, one_of
from entitlements.http.body import closed_set
from entitlements.http.params import HEADER_FIELDS
from entitlements.http.strict import with_head

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://moments.invalid/problems/"

STATUS_BY_CODE: dict[str, int] = {
    "idempotency_key_required": 400,
    "invalid_signature": 400,
    "livemode_mismatch": 400,
    "unauthorized": 401,
    "insufficient_moments": 402,
    "in_debt": 402,
    "forbidden": 403,
    "tier_required": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "idempotency_key_reused": 409,
    "not_refundable": 409,
    "not_sealed": 409,
    "video_unavailable": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_failed": 422,
    "rate_limited": 429,
    "concurrency_limited": 429,
    "internal_error": 500,
    "stripe_error": 502,
    "unavailable": 503,
    "not_ready": 503,
    "stripe_not_configured": 503,
    "stripe_unavailable": 503,
}
# Statuses Litestar raises by itself, and the code each is answered with.
CODE_BY_LITESTAR_STATUS = {405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}

# What a 503 tells the client to wait before trying again, unless the refusal knows better (admission).
RETRY_AFTER_S_DEFAULT = 1
UNAVAILABLE_DETAIL = "the database did not answer in time; retry shortly (with the same Idempotency-Key)"

log = structlog.get_logger("moments.errors")


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """The problem+json body (members a particular code adds, such as `required`, come beside these)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


def problem_response(
    code: str,
    detail: str,
    request: Request[Any, Any, Any] | None = None,
    *,
    retry_after_s: int | None = None,
    **extra: Any,
) -> Response[Any]:
    status = STATUS_BY_CODE[code]
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(extra)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        # Every 503 is temporary: say when to come back (RFC 9110 section 10.2.3).
        headers["Retry-After"] = str(retry_after_s or RETRY_AFTER_S_DEFAULT)
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers or None)


def ledger_error_extra(error: ledger.LedgerRuleError) -> dict[str, Any]:
    if isinstance(error, ledger.InsufficientMoments):
        return {"required": error.required, "available": error.available}
    if isinstance(error, ledger.InDebt):
        return {"owed": error.owed}
    return {}


_BACKTICKED = re.compile(r"`([^`]+)`")
_MISSING = re.compile(r"[Mm]issing required (?:query |header |path |cookie )?parameter '([^']+)'")


def _validation_errors(request: Request[Any, Any, Any], exc: ValidationException) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    parameters = request.route_handler.parsed_fn_signature.parameters
    for item in exc.extra if isinstance(exc.extra, list) else []:
        field = str(item.get("key") or "body")
        field = HEADER_FIELDS.get(field, field)
        message = str(item.get("message") or "invalid")
        declared = parameters.get(field)
        allowed = closed_set(declared.annotation) if declared is not None and "enum" in message else None
        if allowed is not None:
            errors.append({"field": field, "message": one_of(allowed), "allowed": list(allowed)})
            continue
        if field == "data":
            # Litestar names the whole body "data"; name the field itself where msgspec said it.
            unknown = _BACKTICKED.search(message) if "unknown field" in message else None
            if unknown:
                field, message = unknown.group(1), "unknown field (not part of this request)"
            elif message.strip("'") == "data":
                field, message = "body", "a JSON body is required"
            else:
                field = "body"
        errors.append({"field": field, "message": message})
    missing = _MISSING.search(str(exc.detail))
    if not errors and missing:
        # Litestar names a missing required parameter only in its detail.
        return [{"field": HEADER_FIELDS.get(missing.group(1), missing.group(1)), "message": "is required"}]
    return errors or [{"field": "body", "message": str(exc.detail)}]


def handle_domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    return problem_response(exc.code, exc.detail, request, retry_after_s=exc.retry_after_s, **exc.extra)


def log_database_fault(exc: BaseException) -> None:
    # The type and SQLSTATE only: a database message may quote the row (and so the request's content).
    log.warning("database_unavailable", error_type=type(exc).__name__, sqlstate=getattr(exc, "sqlstate", None))


def handle_database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The database down, restarting, stalled, or out of connections: 503, never 500; anything else raised
    by the driver is a bug, and answered as one."""
    if not is_unavailable(exc):
        return handle_unexpected(request, exc)
    log_database_fault(exc)
    return problem_response("unavailable", UNAVAILABLE_DETAIL, request)


def public_detail(error: ledger.LedgerRuleError) -> str:
    """A ledger refusal in the client's words: the ledger's own messages name its internal keys and hold ids
    (`generation:…:hold`, `grant:12:…`), which are no business of the client's and stay in the logs."""
    if isinstance(error, ledger.IdempotencyConflict):
        return "this Idempotency-Key was already used for a different request"
    if isinstance(error, ledger.HoldNotOpen):
        return f"the generation's hold is {error.status}, not open"
    if isinstance(error, ledger.HoldNotFound):
        return "the generation's hold does not exist"
    return str(error)


def handle_ledger_refusal(request: Request[Any, Any, Any], exc: ledger.LedgerRuleError) -> Response[Any]:
    code = exc.code if exc.code in STATUS_BY_CODE else "conflict"
    return problem_response(code, public_detail(exc), request, **ledger_error_extra(exc))


def handle_ledger_unavailable(request: Request[Any, Any, Any], exc: ledger.LedgerUnavailable) -> Response[Any]:
    return problem_response(
        "unavailable", "the ledger could not complete the operation; retry with the same key", request
    )


def handle_invalid_cursor(request: Request[Any, Any, Any], exc: ledger.InvalidCursor) -> Response[Any]:
    return handle_domain_error(request, ValidationFailed("cursor", str(exc)))


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException):
        errors = _validation_errors(request, exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        allowed = next((e["allowed"] for e in errors if "allowed" in e), None)
        extra = {"allowed": allowed} if allowed is not None else {}
        return problem_response("validation_failed", detail, request, errors=errors, **extra)
    if isinstance(exc, NotAuthorizedException):
        return problem_response("unauthorized", str(exc.detail), request)
    if isinstance(exc, PermissionDeniedException):
        return problem_response("forbidden", str(exc.detail), request)
    if isinstance(exc, NotFoundException):
        return problem_response("not_found", str(exc.detail), request)
    code = CODE_BY_LITESTAR_STATUS.get(exc.status_code)
    if code is not None:
        extra_headers = {name.lower(): value for name, value in (exc.headers or {}).items()}
        if "allow" in extra_headers:
            extra_headers["allow"] = with_head([method.strip() for method in extra_headers["allow"].split(",")])
        response = problem_response(code, str(exc.detail), request)
        response.headers.update(extra_headers)
        return response
    if exc.status_code < 500:
        # Malformed JSON and other unreadable bodies: the client's input, so a validation failure.
        failed = ValidationFailed("body", str(exc.detail))
        return problem_response(failed.code, failed.detail, request, **failed.extra)
    log.error("http_exception", status=exc.status_code, detail=str(exc.detail))
    return problem_response("internal_error", "internal error", request)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Bad input and unavailable dependencies have answers of their own; what reaches here is a bug. The
    # line carries the request id (bound for the whole request) the client's 500 points to.
    log.exception("unhandled_exception", bug=True, error_type=type(exc).__name__)
    return problem_response("internal_error", "internal error; the request id identifies it in the logs", request)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    DomainError: handle_domain_error,
    ledger.LedgerRuleError: handle_ledger_refusal,
    ledger.LedgerUnavailable: handle_ledger_unavailable,
    ledger.InvalidCursor: handle_invalid_cursor,
    HTTPException: handle_http_exception,
    asyncpg.PostgresError: handle_database_error,
    asyncpg.InterfaceError: handle_database_error,
    OSError: handle_database_error,
    TimeoutError: handle_database_error,
    Exception: handle_unexpected,
}
