"""HTTP as RFC 9110 and caches expect it, around the whole app (unrouted answers included):

- HEAD is answered on every GET route: the GET's status and headers, no body (Litestar routes HEAD only
  where a handler declares it);
- every response to an authenticated request (a bearer key or the console's session cookie) carries
  `Cache-Control: no-store`: balances, ledgers and keys must not sit in a shared or browser cache;
- a response of a rate-limited class carries the `RateLimit-Policy` and `RateLimit` headers, and a 429
  `Retry-After` (entitlements/http/limits.py leaves the decision in the scope).
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from entitlements import limits
from entitlements.http.auth import CALLER_SCOPE_KEY, SESSION_COOKIE
from entitlements.http.limits import RATE_LIMIT_SCOPE_KEY, give_back_if_answered_from_record
from entitlements.http.observability import HEAD_SCOPE_KEY

NO_STORE = (b"cache-control", b"no-store")
_SESSION_COOKIE = SESSION_COOKIE.encode() + b"="


def _authenticated(scope: Scope) -> bool:
    if scope.get(CALLER_SCOPE_KEY) is not None:
        return True
    for name, value in scope["headers"]:
        if name == b"authorization" or (name == b"cookie" and _SESSION_COOKIE in value):
            return True
    return False


def http_semantics(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope["method"] = "GET"
            scope[HEAD_SCOPE_KEY] = True  # type: ignore[literal-required]

        async def send_completed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                if _authenticated(scope):
                    headers = [header for header in headers if header[0].lower() != b"cache-control"]
                    headers.append(NO_STORE)
                decision = scope.get(RATE_LIMIT_SCOPE_KEY)
                if isinstance(decision, limits.Decision):
                    headers += decision.headers()
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await app(scope, receive, send_completed)
        await give_back_if_answered_from_record(scope)

    return middleware
