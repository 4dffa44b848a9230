"""A webhook receiver on loopback for the outgoing-webhook tests, and a verifier written from the
Standard Webhooks specification alone (not the `standardwebhooks` package).

The receiver is a small HTTP/1.1 server on asyncio streams: it records every request (headers, the
body's bytes, when it came) and answers what the test's `answer` decides: a status, after an optional
delay. `stop()` takes it down (connections refused) and `start()` brings it back on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook

HEADER_BYTES_MAX = 64 * 1024
TOLERANCE_S = 300
WAIT_S_MAX = 60.0


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.time)

    @property
    def event(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


Answer = Callable[[Request], Awaitable[int]]


async def accept(_request: Request) -> int:
    return 204


class Receiver:
    def __init__(self, answer: Answer = accept) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        # The requests answered 2xx: what the receiver has accepted.
        self.accepted: list[Request] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > HEADER_BYTES_MAX:
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(headers=headers, body=body)
                self.requests.append(request)
                status = await self.answer(request)
                if 200 <= status < 300:
                    self.accepted.append(request)
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def wait_for(self, count: int, timeout_s: float = WAIT_S_MAX) -> list[Request]:
        """At least `count` accepted requests (a test's bound on a wait, not an assertion on speed)."""
        deadline = time.monotonic() + timeout_s
        while len(self.accepted) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.accepted)} of {count} webhooks accepted within {timeout_s} s")
            await asyncio.sleep(0.02)
        return self.accepted


@contextlib.asynccontextmanager
async def receiving(answer: Answer = accept) -> Any:
    receiver = Receiver(answer)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def spec_verify(
    secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None, parse: bool = True
) -> dict[str, Any]:
    """Standard Webhooks, from the specification: HMAC-SHA256 keyed with the base64 part of the secret
    (after `whsec_`) over `{webhook-id}.{webhook-timestamp}.{body}`, base64, sent as `v1,<signature>`,
    several separated by spaces; the timestamp within 5 minutes. Raises ValueError when it fails."""
    message_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs((now or time.time()) - int(timestamp)) > TOLERANCE_S:
        raise ValueError("timestamp outside the tolerance")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for signature in headers["webhook-signature"].split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            decoded: dict[str, Any] = json.loads(body) if parse else {}
            return decoded
    raise ValueError("no signature matches")


def verify_both_ways(secret: str, request: Request) -> dict[str, Any]:
    """The delivery verified by the package's own `Webhook.verify` and by the specification's rules."""
    by_package = Webhook(secret).verify(request.body, request.headers)
    by_spec = spec_verify(secret, request.headers, request.body)
    assert by_package == by_spec
    return by_spec
