"""API keys and the role guard.

A key is `mk_` + 256 random bits; only its SHA-256 is stored. Every route declares the roles that may
call it in `opt["roles"]` (admin may call everything) or `opt["public"]`; a route that declares
neither is refused, so a forgotten declaration fails closed.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Literal

import asyncpg
import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler

Role = Literal["service", "support", "finance", "admin"]
ROLES: tuple[Role, ...] = ("service", "support", "finance", "admin")
KEY_PREFIX = "mk_"
KEY_BYTES = 32
AUTHORIZATION_HEADER_CHARS_MAX = 512
OPENAPI_PATH_PREFIX = "/schema"


class Caller:
    """Who is calling: the key's id, name and role. `actor` is what the ledger records."""

    __slots__ = ("key_id", "name", "role")

    def __init__(self, key_id: int, name: str, role: Role) -> None:
        self.key_id = key_id
        self.name = name
        self.role = role

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}:{self.name}"


def hash_key(raw_key: str) -> bytes:
    return hashlib.sha256(raw_key.encode()).digest()


async def create_key(pool: asyncpg.Pool | asyncpg.Connection, *, role: str, name: str) -> tuple[int, str]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not 1 <= len(name) <= 200:
        raise ValueError("name must be 1-200 characters")
    raw_key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    key_id = await pool.fetchval(
        "INSERT INTO api_keys (name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4) RETURNING id",
        name,
        role,
        hash_key(raw_key),
        raw_key[:10],
    )
    return int(key_id), raw_key


async def find_caller(pool: asyncpg.Pool, raw_key: str) -> Caller | None:
    row = await pool.fetchrow(
        "SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(raw_key)
    )
    if row is None:
        return None
    return Caller(row["id"], row["name"], row["role"])


def _bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization")
    if not header or len(header) > AUTHORIZATION_HEADER_CHARS_MAX:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def role_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    # The OpenAPI document and its viewer are public; everything else declares its roles.
    path = connection.scope["path"]
    if handler.opt.get("public") or path == OPENAPI_PATH_PREFIX or path.startswith(OPENAPI_PATH_PREFIX + "/"):
        return
    token = _bearer_token(connection)
    if token is None:
        raise NotAuthorizedException("a bearer API key is required (Authorization: Bearer <key>)")
    caller = await find_caller(connection.app.state.pool, token)
    if caller is None:
        raise NotAuthorizedException("unknown or revoked API key")
    connection.state.caller = caller
    structlog.contextvars.bind_contextvars(key_id=caller.key_id, role=caller.role)
    allowed: tuple[str, ...] = tuple(handler.opt.get("roles", ()))
    if caller.role == "admin" or caller.role in allowed:
        return
    raise PermissionDeniedException(
        f"role {caller.role!r} may not call this endpoint; allowed: {', '.join(allowed) or 'admin'}"
    )


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    caller = connection.state.get("caller")
    assert isinstance(caller, Caller), "role_guard runs before every non-public handler"
    return caller
