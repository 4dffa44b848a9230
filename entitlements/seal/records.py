"""Rows of the seal's queries as the format's values (entitlements/seal/offline.py), and the ledger read
in commit order for sealing and verifying."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg

import ledger
from entitlements.seal import queries
from entitlements.seal.offline import Checkpoint, SealedTransaction, SignedCheckpoint


async def state_row(connection: ledger.Connection | asyncpg.Pool, query: str, *args: object) -> asyncpg.Record:
    """A statement over the seal's one state row (the migration inserts it; nothing may delete it)."""
    row = await connection.fetchrow(query, *args)
    assert row is not None, "migrations/0010_seal.sql inserts the state row"
    return row


def sealed_transaction(row: asyncpg.Record) -> SealedTransaction:
    return SealedTransaction(
        transaction_id=row["id"],
        kind=row["kind"],
        idempotency_key=row["idempotency_key"],
        user_id=row["user_id"],
        reference=row["reference"],
        reverses_transaction_id=row["reverses_transaction_id"],
        actor=row["actor"],
        reason=row["reason"],
        created_at=row["created_at"],
        postings=tuple(zip(row["accounts"], row["amounts"], strict=True)),
    )


def signed_checkpoint(row: asyncpg.Record) -> SignedCheckpoint:
    return SignedCheckpoint(
        checkpoint=Checkpoint(
            number=row["number"],
            first_position=row["first_position"],
            last_position=row["last_position"],
            first_transaction_id=row["first_transaction_id"],
            last_transaction_id=row["last_transaction_id"],
            previous_head=bytes(row["previous_head"]),
            head=bytes(row["head"]),
            merkle_root=bytes(row["merkle_root"]),
            created_at=row["created_at"],
            key_id=row["key_id"],
        ),
        signature=bytes(row["signature"]),
    )


async def transactions_after(
    connection: ledger.Connection, after: ledger.CommitPosition, limit: int
) -> list[tuple[ledger.CommitPosition, SealedTransaction]]:
    """At most `limit` transactions committed after `after`, in commit order, each with its position."""
    rows = await connection.fetch(queries.TRANSACTIONS_AFTER, str(after.xid), after.transaction_id, limit)
    return [
        (ledger.CommitPosition(xid=int(row["xid"]), transaction_id=row["id"]), sealed_transaction(row)) for row in rows
    ]


async def every_transaction_after(
    connection: ledger.Connection, after: ledger.CommitPosition, *, page: int
) -> AsyncIterator[SealedTransaction]:
    """Every transaction committed after `after`, in commit order, read `page` at a time."""
    while True:
        rows = await transactions_after(connection, after, page)
        for _, transaction in rows:
            yield transaction
        if len(rows) < page:
            return
        after = rows[-1][0]
