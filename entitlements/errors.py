"""RFC 9457 problem+json: every error the API returns, each with a stable machine `code`."""

from __future__ import annotations

import re
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.types import ExceptionHandlersMap

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://moments.invalid/problems/"

log = structlog.get_logger("moments.errors")


class ProblemError(Exception):
    """An expected failure, answered as problem+json. `extra` adds members (e.g. required, available)."""

    def __init__(self, status: int, code: str, detail: str, *, title: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.extra = extra


class ValidationFailed(ProblemError):
    def __init__(self, field: str, message: str, **extra: Any) -> None:
        detail = message if message.startswith(field) else f"{field}: {message}"
        super().__init__(422, "validation_failed", detail, errors=[{"field": field, "message": message}], **extra)
        self.field = field


class NotFound(ProblemError):
    def __init__(self, detail: str) -> None:
        super().__init__(404, "not_found", detail)


class Conflict(ProblemError):
    def __init__(self, detail: str, code: str = "conflict") -> None:
        super().__init__(409, code, detail)


def problem_response(problem: ProblemError, request: Request[Any, Any, Any] | None = None) -> Response[Any]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + problem.code,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
    }
    if request is not None:
        body["instance"] = request.url.path
    body.update(problem.extra)
    return Response(body, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE)


_BACKTICKED = re.compile(r"`([^`]+)`")


def _validation_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        field = str(item.get("key") or "body")
        message = str(item.get("message") or "invalid")
        source = item.get("source")
        if field == "data":
            # Litestar names the whole body "data"; name the field itself where msgspec said it.
            unknown = _BACKTICKED.search(message) if "unknown field" in message else None
            if unknown:
                field = unknown.group(1)
                message = "unknown field (not part of this request)"
            elif message.strip("'") == "data":
                field, message = "body", "a JSON body is required"
            else:
                field = "body"
        elif source in {"query", "path", "header"}:
            field = f"{field}"
        errors.append({"field": field, "message": message})
    return errors or [{"field": "body", "message": str(exc.detail)}]


def handle_problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[Any]:
    return problem_response(exc, request)


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(ProblemError(422, "validation_failed", detail, errors=errors), request)
    if isinstance(exc, NotAuthorizedException):
        return problem_response(ProblemError(401, "unauthorized", str(exc.detail)), request)
    if isinstance(exc, PermissionDeniedException):
        return problem_response(ProblemError(403, "forbidden", str(exc.detail)), request)
    if isinstance(exc, NotFoundException):
        return problem_response(ProblemError(404, "not_found", str(exc.detail)), request)
    if exc.status_code == 413:
        return problem_response(ProblemError(413, "payload_too_large", str(exc.detail)), request)
    if exc.status_code == 405:
        return problem_response(ProblemError(405, "method_not_allowed", str(exc.detail)), request)
    if isinstance(exc, ClientException):
        # Malformed JSON and other unreadable bodies: the client's input, so a validation failure.
        detail = str(exc.detail)
        return problem_response(
            ProblemError(422, "validation_failed", f"body: {detail}", errors=[{"field": "body", "message": detail}]),
            request,
        )
    if exc.status_code >= 500:
        log.error("http_exception", status=exc.status_code, detail=str(exc.detail))
        return problem_response(ProblemError(exc.status_code, "internal_error", "internal error"), request)
    return problem_response(ProblemError(exc.status_code, "http_error", str(exc.detail)), request)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled_exception", error_type=type(exc).__name__)
    return problem_response(
        ProblemError(500, "internal_error", "internal error; the request id identifies it in the logs"),
        request,
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ProblemError: handle_problem,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_MEDIA_TYPE",
    "Conflict",
    "NotFound",
    "ProblemError",
    "ValidationFailed",
    "problem_response",
]
