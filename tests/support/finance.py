"""Ledger set-ups for finance's tests: users, and transactions dated in the past."""

from __future__ import annotations

import hashlib
from datetime import datetime

import asyncpg

import ledger as L


async def backdated_purchase(pool: asyncpg.Pool, user_id: str, amount: int, created_at: datetime, key: str) -> None:
    """A purchase dated in the past, written with plain SQL (as only a database superuser could: the service
    always dates a transaction by its database transaction's start). The database's own checks still apply."""
    async with pool.acquire() as connection, connection.transaction():
        accounts = dict(await connection.fetch("SELECT code, id FROM ledger_accounts"))
        # Its month may be long past: the sweeper creates only the months ahead.
        await connection.execute("SELECT ledger_create_month_partitions($1)", created_at)
        transaction_id = await connection.fetchval(
            "WITH t AS (INSERT INTO ledger_transactions"
            " (kind, idempotency_key, request_hash, user_id, actor, result, created_at)"
            " VALUES ('purchase', $1, $2, $3, 'test', '{}', $4) RETURNING id, idempotency_key, created_at),"
            " k AS (INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at)"
            " SELECT idempotency_key, id, created_at FROM t)"
            " SELECT id FROM t",
            key,
            hashlib.sha256(key.encode()).digest(),
            user_id,
            created_at,
        )
        await connection.executemany(
            "INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at) VALUES ($1, $2, $3, $4)",
            [
                (transaction_id, accounts["system:sales"], -amount, created_at),
                (transaction_id, accounts[f"user:{user_id}:available"], amount, created_at),
            ],
        )


async def a_user(pool: asyncpg.Pool, user_id: str) -> None:
    async with L.Ledger(pool) as led:
        await led.submit(
            L.Credit(
                key=f"open-{user_id}", user_id=user_id, actor="test", amount=1, kind="grant", category="promotional"
            )
        )
