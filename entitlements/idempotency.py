"""API-level idempotency: the first answer to a (caller, Idempotency-Key) is stored in the same database
transaction as its effect and replayed for the same request; another request under that key is 409.

Concurrent requests with one key serialise on the record's primary key: the second INSERT waits for the
first transaction and then finds its answer (or, if it rolled back, proceeds itself).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from entitlements.errors import ProblemError
from ledger.engine import Connection


class StoredResponse(msgspec.Struct, frozen=True):
    status_code: int
    body: Any


def request_hash(operation: str, *parts: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode([operation, *parts])).digest()


async def claim(
    connection: Connection, *, caller_key_id: int, key: str, operation: str, fingerprint: bytes
) -> StoredResponse | None:
    """Inside the caller's transaction: None if this request is the first with the key (go ahead and
    store your answer), else the stored answer to replay. A different request under the key is 409."""
    inserted = await connection.fetchval(
        """
        INSERT INTO api_idempotency (caller_key_id, idempotency_key, operation, request_hash)
        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true
        """,
        caller_key_id,
        key,
        operation,
        fingerprint,
    )
    if inserted:
        return None
    row = await connection.fetchrow(
        "SELECT operation, request_hash, status_code, response_body FROM api_idempotency "
        "WHERE caller_key_id = $1 AND idempotency_key = $2",
        caller_key_id,
        key,
    )
    assert row is not None, "the conflicting claim committed, so its row is visible"
    assert row["status_code"] is not None, "a committed claim always has its answer"
    if row["operation"] != operation or bytes(row["request_hash"]) != fingerprint:
        raise ProblemError(
            409, "idempotency_key_reused", "this Idempotency-Key was already used for a different request"
        )
    return StoredResponse(row["status_code"], msgspec.json.decode(row["response_body"]))


async def store(connection: Connection, *, caller_key_id: int, key: str, status_code: int, body: bytes) -> None:
    await connection.execute(
        "UPDATE api_idempotency SET status_code = $3, response_body = $4 "
        "WHERE caller_key_id = $1 AND idempotency_key = $2",
        caller_key_id,
        key,
        status_code,
        body.decode(),
    )
