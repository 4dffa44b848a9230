"""Structured logs (one canonical line per request, never a secret) and Prometheus metrics."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUEST_ID_HEADER = b"x-request-id"
# Set by http_semantics on a HEAD request it answers as its GET: the log and the metrics still say HEAD.
HEAD_SCOPE_KEY = "moments.head"
_REQUEST_ID_PATTERN = re.compile(rb"[A-Za-z0-9._-]{1,64}")

REQUESTS = Counter("moments_http_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram("moments_http_request_seconds", "HTTP request latency", ["method", "route"])
# The ledger's group commit: how many operations a committed batch carried, and BEGIN to COMMIT.
LEDGER_BATCH_SIZE = Histogram(
    "moments_ledger_batch_operations",
    "Operations per committed ledger batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
LEDGER_COMMIT_SECONDS = Histogram(
    "moments_ledger_batch_seconds",
    "Ledger batch transaction time, BEGIN to COMMIT",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_ledger_batch(size: int, seconds: float) -> None:
    LEDGER_BATCH_SIZE.observe(size)
    LEDGER_COMMIT_SECONDS.observe(seconds)


def metrics_text() -> bytes:
    return generate_latest()


def request_logging_middleware(app: ASGIApp) -> ASGIApp:
    """Binds a request id, answers it in `X-Request-Id`, and logs one line when the request ends."""
    log = structlog.get_logger("moments.request")

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER, b"")
        request_id = incoming.decode() if _REQUEST_ID_PATTERN.fullmatch(incoming) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            elapsed_s = time.perf_counter() - started
            route = scope.get("path_template") or _route_of(scope)
            method = "HEAD" if scope.get(HEAD_SCOPE_KEY) else scope.get("method", "")
            # A label value per invented method would let anyone grow /metrics (and this module's cache).
            method_label = method if method in METHOD_LABELS else "OTHER"
            counter, histogram = _series(method_label, route, status)
            counter.inc()
            histogram.observe(elapsed_s)
            # Only the path: query strings may carry cursors, never keys, but stay terse anyway.
            log.info(
                "request",
                method=method,
                path=scope.get("path"),
                status=status,
                duration_ms=round(elapsed_s * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()

    return middleware


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request's counter and histogram, looked up once per (method, route, status): `labels()` costs
    more than the increment itself."""
    key = (method, route, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (REQUESTS.labels(method, route, str(status)), REQUEST_SECONDS.labels(method, route))
    return found


def _route_of(scope: Scope) -> str:
    handler = scope.get("route_handler")
    paths = getattr(handler, "paths", None)
    if paths:
        return str(sorted(paths)[0])
    return "unmatched"
