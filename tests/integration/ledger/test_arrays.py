"""The batch's array literals (ledger/arrays.py) read back exactly in real PostgreSQL, and hostile text
travels through the engine unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

import ledger as L
from ledger import arrays

HOSTILE = [
    "",
    "NULL",
    "null",
    '"',
    '\\"',
    "\\",
    "\\\\x00",
    "{}",
    "{a,b}",
    "a,b",
    " leading and trailing ",
    "tab\tnew\nline\rcarriage",
    "ünïcødé ✓ 漢字 🎬",
    "'single' \"double\" `back`",
    "None",
]


async def test_literals_read_back_exactly(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(
        "SELECT $1::text::text[] AS texts, $2::text::text[] AS optional, $3::text::bigint[] AS ints,"
        " $4::text::bytea[] AS byteas",
        arrays.texts(HOSTILE),
        arrays.optional_texts([*HOSTILE, None]),
        arrays.bigints([0, -1, None, 2**63 - 1, -(2**63)]),
        arrays.byteas([b"", b'\x00\\"', bytes(range(256))]),
    )
    assert row is not None
    assert row["texts"] == HOSTILE
    assert row["optional"] == [*HOSTILE, None]
    assert row["ints"] == [0, -1, None, 2**63 - 1, -(2**63)]
    assert row["byteas"] == [b"", b'\x00\\"', bytes(range(256))]


async def test_hostile_text_is_stored_as_given_and_replays(pool: asyncpg.Pool) -> None:
    async with L.Ledger(pool) as led:
        credits = [
            L.Credit(
                key=f"k{index}{text}",
                user_id=f"u{index}{text}" if text else "u-empty",
                actor=f"support:{text}",
                reason=text,
                reference=text or None,
                amount=1,
                kind="grant",
                category="promotional",
            )
            for index, text in enumerate(HOSTILE)
        ]
        # All at once, so that they share batches: columns of many rows, not one.
        results = await asyncio.gather(*(led.submit(credit) for credit in credits))
        rows: list[Any] = await pool.fetch(
            "SELECT idempotency_key, user_id, actor, reason, reference FROM ledger_transactions ORDER BY id"
        )
        assert sorted(
            (r["idempotency_key"], r["user_id"], r["actor"], r["reason"], r["reference"]) for r in rows
        ) == sorted((c.key, c.user_id, c.actor, c.reason, c.reference) for c in credits)
        for credit in credits:
            assert await led.balances(credit.user_id) == L.Balances(available=1, held=0, owed=0)
        # The stored request hash is the one each request makes again: the same request replays.
        for credit, first in zip(credits, results, strict=True):
            again = await led.submit(credit)
            assert again.replayed
            assert again.transaction_id == first.transaction_id
        assert (await led.audit()).ok
