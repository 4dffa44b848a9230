"""Monthly partitions of the ledger (migrations/0014_ledger_partitions.sql, ledger/partitions.py).

PostgreSQL's now() cannot be moved, and the ledger dates its rows by now(); so the month's edge is tested
with rows dated explicitly (as a superuser's SQL may), in months created the way the sweeper creates them,
by `ledger_ensure_partitions` from a given instant. The database's checks apply to them all the same.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

import ledger as L
from entitlements.app import sweeper_for
from entitlements.settings import GenerationSettings, LedgerSettings, StripeSettings

HASH = bytes(32)
_keys = itertools.count(1)
# Far enough ahead that no other test's rows, nor the sweeper's months, are there.
LAST_INSTANT_OF_JANUARY = datetime(2031, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)
FIRST_INSTANT_OF_FEBRUARY = datetime(2031, 2, 1, tzinfo=UTC)


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[Any]:
    async with pool.acquire() as connection:
        yield connection


async def partitions(conn: Any, parent: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = $1::regclass", parent
    )
    return {row["name"] for row in rows}


async def dated_grant(conn: Any, created_at: datetime, *, key: str | None = None, amount: int = 5) -> tuple[int, str]:
    """A balanced transaction between two system accounts dated `created_at` (no user balance moves, so the
    audit stays clean), committed; its id and the partition its row landed in."""
    key = key or f"dated-{next(_keys)}"
    accounts = dict(await conn.fetch("SELECT code, id FROM ledger_accounts WHERE kind = 'system'"))
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            WITH t AS (
                INSERT INTO ledger_transactions
                    (kind, idempotency_key, request_hash, user_id, actor, result, created_at)
                VALUES ('grant', $1, $2, 'partition-user', 'test', '{}', $3)
                RETURNING id, idempotency_key, created_at, tableoid::regclass::text AS partition
            ), k AS (
                INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at)
                SELECT idempotency_key, id, created_at FROM t
            )
            SELECT id, partition FROM t
            """,
            key,
            HASH,
            created_at,
        )
        await conn.executemany(
            "INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at) VALUES ($1, $2, $3, $4)",
            [
                (row["id"], accounts["system:promotions"], -amount, created_at),
                (row["id"], accounts["system:expired"], amount, created_at),
            ],
        )
    return int(row["id"]), str(row["partition"])


async def test_a_write_on_the_first_instant_of_a_month_lands_in_the_month_created_ahead(
    pool: asyncpg.Pool, conn: Any
) -> None:
    # The sweeper on the last instant of January, one month ahead: February exists before it begins.
    assert (
        await conn.fetchval(
            "SELECT ledger_ensure_partitions($1::timestamptz, $1::timestamptz + interval '1 month')",
            LAST_INSTANT_OF_JANUARY,
        )
        == 4
    )
    assert {"ledger_transactions_2031_01", "ledger_transactions_2031_02"} <= await partitions(
        conn, "ledger_transactions"
    )
    assert {"ledger_postings_2031_01", "ledger_postings_2031_02"} <= await partitions(conn, "ledger_postings")

    january_id, january = await dated_grant(conn, LAST_INSTANT_OF_JANUARY)
    february_id, february = await dated_grant(conn, FIRST_INSTANT_OF_FEBRUARY)
    assert (january, february) == ("ledger_transactions_2031_01", "ledger_transactions_2031_02")
    postings = await conn.fetch(
        "SELECT transaction_id, tableoid::regclass::text AS partition FROM ledger_postings"
        " WHERE transaction_id = ANY($1::bigint[])",
        [january_id, february_id],
    )
    assert {(row["transaction_id"], row["partition"]) for row in postings} == {
        (january_id, "ledger_postings_2031_01"),
        (february_id, "ledger_postings_2031_02"),
    }
    async with L.Ledger(pool) as led:
        report = await led.audit()
    assert report.ok, report


async def test_a_month_without_its_partition_refuses_the_write(conn: Any) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="no partition of relation"):
        await dated_grant(conn, datetime(2040, 6, 1, tzinfo=UTC))


async def test_the_sweeper_keeps_the_months_ahead_created(pool: asyncpg.Pool, conn: Any) -> None:
    months = await conn.fetch(
        "SELECT to_char(date_trunc('month', (now() AT TIME ZONE 'UTC') + make_interval(months => m)), 'YYYY_MM') AS m"
        " FROM generate_series(0, 3) m"
    )
    wanted = {f"ledger_transactions_{row['m']}" for row in months}
    assert not wanted <= await partitions(conn, "ledger_transactions")
    async with L.Ledger(pool) as led:
        sweeper = sweeper_for(
            pool,
            led,
            GenerationSettings.from_env(),
            StripeSettings.from_env(),
            ledger_settings=LedgerSettings(batch_size_max=512, committers=1, partitions_ahead_months=3),
        )
        swept = await sweeper.sweep_once()
        assert swept["ledger_partitions"] > 0
        assert wanted <= await partitions(conn, "ledger_transactions")
        assert {name.replace("transactions", "postings") for name in wanted} <= await partitions(
            conn, "ledger_postings"
        )
        # Made once: the next sweep finds them.
        assert (await sweeper.sweep_once())["ledger_partitions"] == 0


async def test_a_partition_is_written_only_through_its_parent_and_never_changed(pool: asyncpg.Pool, conn: Any) -> None:
    async with L.Ledger(pool) as led:
        credit = await led.submit(
            L.Credit(key="p-credit", user_id="u1", actor="test", amount=10, kind="grant", category="promotional")
        )
    partition = await conn.fetchval(
        "SELECT tableoid::regclass::text FROM ledger_transactions WHERE id = $1", credit.transaction_id
    )
    postings_partition = partition.replace("transactions", "postings")
    with pytest.raises(asyncpg.CheckViolationError, match=f"{partition} is a partition: write to ledger_transactions"):
        await conn.execute(
            f"INSERT INTO {partition} (kind, idempotency_key, request_hash, user_id, actor, result)"
            " VALUES ('grant', 'direct', $1, 'u1', 'test', '{}')",
            HASH,
        )
    with pytest.raises(asyncpg.CheckViolationError, match="ledger_postings is append-only: UPDATE refused"):
        await conn.execute(f"UPDATE {postings_partition} SET amount = amount + 1")
    with pytest.raises(asyncpg.CheckViolationError, match="ledger_transactions is append-only: DELETE refused"):
        await conn.execute(f"DELETE FROM {partition}")
    # CASCADE: the Stripe tables' foreign keys would refuse it first otherwise.
    for table in (partition, postings_partition, "ledger_idempotency_keys"):
        with pytest.raises(asyncpg.CheckViolationError, match="TRUNCATE refused"):
            await conn.execute(f"TRUNCATE {table} CASCADE")
    with pytest.raises(asyncpg.CheckViolationError, match="ledger_idempotency_keys is append-only: UPDATE refused"):
        await conn.execute("UPDATE ledger_idempotency_keys SET created_at = created_at")


async def test_an_idempotency_key_is_unique_across_months(pool: asyncpg.Pool, conn: Any) -> None:
    await conn.fetchval("SELECT ledger_ensure_partitions($1::timestamptz, $1::timestamptz)", LAST_INSTANT_OF_JANUARY)
    await dated_grant(conn, LAST_INSTANT_OF_JANUARY, key="january-key")
    # The same key this month: the key table refuses it, whatever month the first one is in.
    with pytest.raises(asyncpg.UniqueViolationError, match="ledger_idempotency_keys_pkey"):
        await dated_grant(conn, datetime.now(UTC), key="january-key")
    # The ledger finds it too: the same key with another request is a conflict, not a second transaction.
    async with L.Ledger(pool) as led:
        outcome = await led.outcome(
            L.Credit(key="january-key", user_id="u1", actor="test", amount=10, kind="grant", category="promotional")
        )
    assert isinstance(outcome, L.IdempotencyConflict)


async def test_a_transaction_and_its_key_row_name_each_other(conn: Any) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="not the one ledger_idempotency_keys names for its key"):
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, user_id, actor, result)"
                " VALUES ('grant', 'no-key-row', $1, 'u1', 'test', '{}')",
                HASH,
            )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="names no ledger transaction with that key"):
        await conn.execute(
            "INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at)"
            " VALUES ('orphan', 1, now())"
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="not the one ledger_idempotency_keys names"):
        async with conn.transaction():
            await conn.execute(
                """
                WITH t AS (
                    INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, user_id, actor, result)
                    VALUES ('grant', 'mismatched', $1, 'u1', 'test', '{}') RETURNING id, created_at
                )
                INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at)
                SELECT 'mismatched', id, created_at - interval '1 second' FROM t
                """,
                HASH,
            )


async def test_postings_must_carry_their_transactions_time(conn: Any) -> None:
    accounts = dict(await conn.fetch("SELECT code, id FROM ledger_accounts WHERE kind = 'system'"))
    async with conn.transaction():
        transaction_id = await conn.fetchval(
            """
            WITH t AS (
                INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, user_id, actor, result)
                VALUES ('grant', 'posting-time', $1, 'u1', 'test', '{}') RETURNING id, idempotency_key, created_at
            ), k AS (
                INSERT INTO ledger_idempotency_keys SELECT idempotency_key, id, created_at FROM t
            )
            SELECT id FROM t
            """,
            HASH,
        )
        with pytest.raises(asyncpg.CheckViolationError, match="are not dated at its time"):
            await conn.execute(
                "INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)"
                " VALUES ($1, $2, -5, now() - interval '1 second'), ($1, $3, 5, now() - interval '1 second')",
                transaction_id,
                accounts["system:promotions"],
                accounts["system:expired"],
            )
