"""The role guard: who may call what.

Every route declares the roles that may call it in `opt["roles"]` (admin may call everything) or
`opt["public"]`; a route that declares neither is refused, so a forgotten declaration fails closed.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from entitlements.errors import Forbidden, Unauthorized

AUTHORIZATION_HEADER_CHARS_MAX = 512
OPENAPI_PATH_PREFIX = "/schema"


# Where the role check leaves the caller for the handler's `caller` dependency: in the ASGI scope itself,
# which costs nothing to read (Litestar builds a State object each time `connection.state` is read).
CALLER_SCOPE_KEY = "moments.caller"


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    # Straight from the scope's raw headers: this runs on every request.
    raw = next((value for name, value in connection.scope["headers"] if name == b"authorization"), None)
    if raw is None or len(raw) > AUTHORIZATION_HEADER_CHARS_MAX:
        return None
    header = raw.decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def allowed_roles(handler: BaseRouteHandler) -> tuple[str, ...]:
    """The roles that may call a route, admin last: what its 403 and its OpenAPI description name."""
    declared = tuple(role for role in handler.opt.get("roles", ()) if role != "admin")
    return (*declared, "admin")


async def role_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    # The OpenAPI document and its viewer are public; everything else declares its roles.
    path = connection.scope["path"]
    if handler.opt.get("public") or path == OPENAPI_PATH_PREFIX or path.startswith(OPENAPI_PATH_PREFIX + "/"):
        return
    token = bearer_token(connection)
    if token is None:
        raise Unauthorized("a bearer API key is required (Authorization: Bearer <key>)")
    caller = await connection.app.state.key_cache.find(connection.app.state.pool, token)
    if caller is None:
        raise Unauthorized("unknown or revoked API key")
    connection.scope[CALLER_SCOPE_KEY] = caller  # type: ignore[literal-required]
    structlog.contextvars.bind_contextvars(key_id=caller.key_id, role=caller.role)
    allowed = allowed_roles(handler)
    if caller.role not in allowed:
        raise Forbidden(f"role {caller.role} may not call this endpoint; allowed: {', '.join(allowed)}")
