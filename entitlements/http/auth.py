"""The role guard: who may call what.

Every route declares the roles that may call it in `opt["roles"]` (admin may call everything) or
`opt["public"]`; a route that declares neither is refused, so a forgotten declaration fails closed.

The console's routes (`opt["session"]`) authenticate by their session cookie instead of a bearer key, and
declare the API operations they show or act through (`opt["mirrors"]`): they allow exactly the roles those
operations allow, read from the API's own routes, so the console can never let a role do more than the API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.routes import HTTPRoute

from entitlements.console import CONSOLE_ROLES, session_of
from entitlements.errors import Forbidden, Unauthorized
from entitlements.keys import Caller

AUTHORIZATION_HEADER_CHARS_MAX = 512
OPENAPI_PATH_PREFIX = "/schema"
SESSION_COOKIE = "moments_console"
_OPERATION_ROLES = "operation_roles"


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


def operation_roles(app: Litestar) -> Mapping[str, tuple[str, ...]]:
    """Every API operation's allowed roles, by operation id (built once per app, from its routes)."""
    found: dict[str, tuple[str, ...]] | None = app.state.get(_OPERATION_ROLES)
    if found is None:
        found = {}
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                for handler, _ in route.route_handler_map.values():
                    if isinstance(handler.operation_id, str) and not handler.opt.get("session"):
                        found[handler.operation_id] = allowed_roles(handler)
        app.state[_OPERATION_ROLES] = found
    return found


def mirrored_roles(app: Litestar, operation_ids: Iterable[str]) -> tuple[str, ...]:
    """The roles that may use a console route: those that may call any operation it mirrors, and sign in."""
    roles = operation_roles(app)
    allowed = {role for operation_id in operation_ids for role in roles[operation_id]}
    return tuple(sorted(allowed & CONSOLE_ROLES))


def may(app: Litestar, caller: Caller, operation_ids: Iterable[str]) -> frozenset[str]:
    """The operations, of those named, this caller's role may call through the API."""
    roles = operation_roles(app)
    return frozenset(operation_id for operation_id in operation_ids if caller.role in roles[operation_id])


async def role_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    # The OpenAPI document and its viewer are public; everything else declares its roles.
    path = connection.scope["path"]
    if handler.opt.get("public") or path == OPENAPI_PATH_PREFIX or path.startswith(OPENAPI_PATH_PREFIX + "/"):
        return
    if handler.opt.get("session"):
        settings = connection.app.state.settings.console
        session = await session_of(connection.app.state.pool, connection.cookies.get(SESSION_COOKIE), settings)
        connection.state.console_session = session
        caller = session.caller
        allowed = mirrored_roles(connection.app, handler.opt["mirrors"])
    else:
        token = bearer_token(connection)
        if token is None:
            raise Unauthorized("a bearer API key is required (Authorization: Bearer <key>)")
        found = await connection.app.state.key_cache.find(connection.app.state.pool, token)
        if found is None:
            raise Unauthorized("unknown or revoked API key")
        caller = found
        allowed = allowed_roles(handler)
    connection.scope[CALLER_SCOPE_KEY] = caller  # type: ignore[literal-required]
    structlog.contextvars.bind_contextvars(key_id=caller.key_id, role=caller.role)
    if caller.role not in allowed:
        raise Forbidden(f"role {caller.role} may not call this endpoint; allowed: {', '.join(allowed)}")
