"""Outgoing HTTP: a webhook POST and what the receiver's answer means, for the deliverer.

The HTTP layer is the one place that reads status codes, so the verdict is decided here: any 2xx is
delivered, 410 Gone means the receiver wants no more (the endpoint is disabled), anything else (another
status, a refused connection, a timeout) is a failure to retry. Redirects are not followed: a receiver
that moved is told so by a failure, and a redirect cannot lead the service to an address it refuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Literal

import httpx
import msgspec

Verdict = Literal["delivered", "gone", "failed"]
ERROR_CHARS_MAX = 500


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    verdict: Verdict
    status: int | None
    latency_ms: int
    error: str | None


async def post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
) -> Answer:
    """One attempt, bounded by `timeout_s` in all (httpx's own timeouts are per read). Only the status is
    read: the receiver's body is never downloaded."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, content=body, headers=dict(headers), timeout=timeout_s) as response:
                code = response.status_code
    except (httpx.HTTPError, TimeoutError) as error:
        latency_ms = round((time.perf_counter() - started) * 1000)
        reason = "timed out" if isinstance(error, TimeoutError | httpx.TimeoutException) else str(error)
        message = f"{type(error).__name__}: {reason}"[:ERROR_CHARS_MAX]
        return Answer(verdict="failed", status=None, latency_ms=latency_ms, error=message)
    latency_ms = round((time.perf_counter() - started) * 1000)
    if 200 <= code < 300:
        return Answer(verdict="delivered", status=code, latency_ms=latency_ms, error=None)
    verdict: Verdict = "gone" if code == 410 else "failed"
    return Answer(verdict=verdict, status=code, latency_ms=latency_ms, error=f"the receiver answered {code}")


def refused(message: str) -> Answer:
    """An attempt the service refused to make (the address is not one it sends to)."""
    return Answer(verdict="failed", status=None, latency_ms=0, error=message[:ERROR_CHARS_MAX])
