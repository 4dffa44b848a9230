"""API keys: create, list, revoke, rotate, and find the caller of a request.

A key is `mk_` + 256 random bits; only its SHA-256 is stored, so a fast hash suffices (no stretching)
and a request finds its key by one index probe. Each process caches the keys it has seen and forgets a
key the moment any process changes it (`cache.py`), so a revoked key is refused everywhere at once.
"""

from __future__ import annotations

import hashlib
import secrets

import asyncpg

import ledger
from entitlements.errors import Conflict, NotFound
from entitlements.keys import queries
from entitlements.keys.schemas import KeyCreated, KeyOut, KeysPage, Role

KEY_PREFIX = "mk_"
KEY_BYTES = 32
KEY_PREFIX_CHARS = 10
# A key's use is stamped at most this often: a write per minute per key, not per request.
LAST_USED_RESOLUTION_S = 60
KEYS_CURSOR = "k1"


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


def _key_out(row: asyncpg.Record) -> KeyOut:
    return KeyOut(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        prefix=row["key_prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


async def create_key(connection: ledger.Connection | asyncpg.Pool, *, role: Role, name: str) -> KeyCreated:
    raw_key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    row = await connection.fetchrow(queries.INSERT_KEY, name, role, hash_key(raw_key), raw_key[:KEY_PREFIX_CHARS])
    assert row is not None
    return KeyCreated(key=raw_key, api_key=_key_out(row))


def row_to_caller(row: asyncpg.Record) -> Caller:
    return Caller(row["id"], row["name"], row["role"])


async def find_caller(pool: asyncpg.Pool, raw_key: str) -> Caller | None:
    """The caller of a raw key, read from PostgreSQL (requests go through the process's KeyCache)."""
    row = await pool.fetchrow(queries.FIND_CALLER, hash_key(raw_key), LAST_USED_RESOLUTION_S)
    return None if row is None else row_to_caller(row)


async def list_keys(pool: asyncpg.Pool, *, limit: int, cursor: str | None) -> KeysPage:
    after = ledger.decode_id_cursor(cursor, KEYS_CURSOR)
    rows = await pool.fetch(queries.LIST_KEYS, after, limit + 1)
    items = [_key_out(row) for row in rows[:limit]]
    next_cursor = ledger.encode_id_cursor(KEYS_CURSOR, items[-1].id) if len(rows) > limit else None
    return KeysPage(items=items, next_cursor=next_cursor)


async def revoke_key(pool: asyncpg.Pool, key_id: int) -> KeyOut:
    """Revoking a revoked key changes nothing and answers the same: revoke is safe to repeat."""
    row = await pool.fetchrow(queries.REVOKE_KEY, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} does not exist")
    return _key_out(row)


async def rotate_key(pool: asyncpg.Pool, key_id: int) -> KeyCreated:
    """A new key with the same name and role; the old one is revoked in the same transaction."""
    async with pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow(queries.LOCK_KEY, key_id)
        if row is None:
            raise NotFound(f"API key {key_id} does not exist")
        if row["revoked_at"] is not None:
            raise Conflict(f"API key {key_id} is revoked; a revoked key cannot be rotated")
        await connection.execute(queries.REVOKE_KEY, key_id)
        return await create_key(connection, role=row["role"], name=row["name"])


async def is_active_key_of_role(connection: ledger.Connection, raw_key: str, role: Role) -> bool:
    found = await connection.fetchval(queries.ROLE_OF_ACTIVE_KEY, hash_key(raw_key))
    return bool(found == role)
