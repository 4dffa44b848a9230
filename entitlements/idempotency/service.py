"""API-level idempotency: the first answer to a (caller, Idempotency-Key) is stored in the same database
transaction as its effect and replayed for the same request; another request under that key is refused.

Concurrent requests with one key serialise on the record's primary key: the second INSERT waits for the
first transaction and then finds its answer (or, if it rolled back, proceeds itself). Each operation
answers with one status, which its route declares, so only the body is stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import asyncpg
import msgspec

import ledger
from entitlements.errors import IdempotencyKeyReused
from entitlements.idempotency import queries

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
# Whether the request being served was answered from a stored record (a replay, or the 409 of a key reused
# for another request): the rate limits give back what such a request took of a lease (http/limits.py).
_answered_from_record: ContextVar[bool] = ContextVar("moments_answered_from_record", default=False)


def forget_answered_from_record() -> None:
    """At the start of a request."""
    _answered_from_record.set(False)


def mark_answered_from_record() -> None:
    _answered_from_record.set(True)


def answered_from_record() -> bool:
    return _answered_from_record.get()


def request_hash(operation: str, *parts: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode([operation, *parts])).digest()


async def claim(
    connection: ledger.Connection, *, caller_key_id: int, key: str, operation: str, fingerprint: bytes, answer: type[T]
) -> T | None:
    """Inside the caller's transaction: None if this request is the first with the key (go ahead and
    store your answer), else the stored answer to replay. A different request under the key is refused."""
    if await connection.fetchval(queries.CLAIM, caller_key_id, key, operation, fingerprint):
        return None
    row = await connection.fetchrow(queries.STORED, caller_key_id, key)
    assert row is not None, "the conflicting claim committed, so its row is visible"
    assert row["response_body"] is not None, "a committed claim always has its answer"
    return replayed(row, operation=operation, fingerprint=fingerprint, answer=answer)


def replayed(row: asyncpg.Record, *, operation: str, fingerprint: bytes, answer: type[T]) -> T:
    """A stored answer to replay for this request, or IdempotencyKeyReused if the key served another."""
    mark_answered_from_record()
    if row["operation"] != operation or bytes(row["request_hash"]) != fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was already used for a different request")
    decoder = _decoders.get(answer)
    if decoder is None:
        decoder = _decoders[answer] = msgspec.json.Decoder(answer)
    decoded: T = decoder.decode(row["response_body"])
    return decoded


async def stored_answers(
    connection: ledger.Connection, claims: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], asyncpg.Record]:
    """The stored records of many (caller key id, Idempotency-Key) claims, by claim (a batch's replays)."""
    rows = await connection.fetch(
        queries.STORED_MANY, [caller_key_id for caller_key_id, _ in claims], [key for _, key in claims]
    )
    return {(row["caller_key_id"], row["idempotency_key"]): row for row in rows}


async def store(connection: ledger.Connection, *, caller_key_id: int, key: str, answer: msgspec.Struct) -> None:
    await connection.execute(queries.STORE, caller_key_id, key, _encoder.encode(answer).decode())


async def once(
    pool: asyncpg.Pool,
    *,
    caller_key_id: int,
    key: str,
    operation: str,
    fingerprint: bytes,
    answer: type[S],
    work: Callable[[ledger.Connection], Awaitable[S]],
) -> S:
    """`work` and its stored answer in one transaction, or the answer stored by the first request with
    this key. Whatever `work` raises rolls back its effect and the claim together."""
    async with pool.acquire() as connection, connection.transaction():
        stored = await claim(
            connection,
            caller_key_id=caller_key_id,
            key=key,
            operation=operation,
            fingerprint=fingerprint,
            answer=answer,
        )
        if stored is not None:
            return stored
        response = await work(connection)
        await store(connection, caller_key_id=caller_key_id, key=key, answer=response)
    return response


USERS_OF_KEY_MAX = 20


async def users_of_key(pool: asyncpg.Pool, key: str) -> list[tuple[str, str]]:
    """(user id, operation) of every stored answer under this Idempotency-Key, at most USERS_OF_KEY_MAX."""
    rows = await pool.fetch(queries.USERS_OF_KEY, key, USERS_OF_KEY_MAX)
    return [(row["user_id"], row["operation"]) for row in rows]


async def dry_run(pool: asyncpg.Pool, work: Callable[[ledger.Connection], Awaitable[T]]) -> T:
    """`work` in a transaction that is always rolled back: what it would do, with the same code and the
    same locks and checks, and nothing kept (ids it drew from sequences are skipped, as gaps are fine)."""
    async with pool.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            return await work(connection)
        finally:
            await transaction.rollback()
