"""PostgreSQL enforces the ledger's rules on its own (migrations/0002_ledger.sql).

Every test first creates real rows through the Ledger API, then attacks them with raw SQL that bypasses
Python on purpose, and expects the database to refuse with the right message. One test shows that a valid
raw zero-sum transaction is accepted, so that the refusals are not vacuous.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import ledger as L

HASH = bytes(32)
_keys = itertools.count(1)


@pytest.fixture
async def led(pool: asyncpg.Pool) -> AsyncIterator[L.Ledger]:
    async with L.Ledger(pool) as started:
        yield started


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[Any]:
    async with pool.acquire() as connection:
        yield connection


async def credited(led: L.Ledger, user_id: str = "u1", amount: int = 370) -> L.Result:
    return await led.submit(
        L.Credit(
            key=f"credit-{user_id}", user_id=user_id, actor="test", amount=amount, kind="purchase", category="paid"
        )
    )


async def account_id(conn: Any, code: str) -> int:
    found = await conn.fetchval("SELECT id FROM ledger_accounts WHERE code = $1", code)
    assert found is not None, code
    return int(found)


async def insert_transaction(
    conn: Any, kind: str = "grant", user_id: str = "u1", *, hold_id: int | None = None, reverses: int | None = None
) -> int:
    """A raw ledger_transactions row (no postings yet); a hold's or settlement's result names its hold."""
    return int(
        await conn.fetchval(
            "WITH t AS (INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, user_id, actor, result, "
            "reverses_transaction_id) VALUES ($1, $2, $3, $4, 'raw-sql', json_build_object('hold_id', $5::bigint), $6) "
            "RETURNING id, idempotency_key, created_at), "
            "k AS (INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at) "
            "SELECT idempotency_key, id, created_at FROM t) "
            "SELECT id FROM t",
            kind,
            f"raw-{next(_keys)}",
            HASH,
            user_id,
            hold_id,
            reverses,
        )
    )


async def insert_postings(conn: Any, transaction_id: int, *legs: tuple[int, int]) -> None:
    await conn.executemany(
        "INSERT INTO ledger_postings (transaction_id, account_id, amount) VALUES ($1, $2, $3)",
        [(transaction_id, account, amount) for account, amount in legs],
    )


async def ledger_counts(conn: Any) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM ledger_transactions) AS transactions,"
        " (SELECT count(*) FROM ledger_postings) AS postings"
    )
    return row["transactions"], row["postings"]


async def assert_audit_ok(led: L.Ledger) -> None:
    report = await led.audit()
    assert report.ok, [check for check in report.checks if not check.ok]


def check_violation(match: str) -> Any:
    return pytest.raises(asyncpg.exceptions.CheckViolationError, match=match)


# --- the control: a valid raw transaction is accepted -----------------------------------------------------


async def test_a_valid_raw_zero_sum_transaction_is_accepted(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    promotions = await account_id(conn, "system:promotions")
    available = await account_id(conn, "user:u1:available")
    async with conn.transaction():
        transaction_id = await insert_transaction(conn, "grant")
        await insert_postings(conn, transaction_id, (promotions, -5), (available, 5))
        # Keep the ledger's other invariants, as the engine would: a lot and the cached balance.
        await conn.execute(
            "INSERT INTO ledger_lots (user_id, category, amount, remaining, source_transaction_id) "
            "VALUES ('u1', 'promotional', 5, 5, $1)",
            transaction_id,
        )
        await conn.execute("UPDATE ledger_balances SET available = available + 5 WHERE user_id = 'u1'")
    assert await conn.fetchval("SELECT count(*) FROM ledger_postings WHERE transaction_id = $1", transaction_id) == 2
    assert await led.balances("u1") == L.Balances(available=375, held=0, owed=0)
    await assert_audit_ok(led)
    # ... and the engine keeps working on top of it: the raw lot is spendable (promotional, spent first).
    hold = await led.submit(
        L.Hold(key="h", user_id="u1", actor="test", amount=375, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    )
    assert (hold.available, hold.held) == (0, 375)
    await assert_audit_ok(led)


async def test_a_raw_clawback_may_create_debt(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    debt = await account_id(conn, "user:u1:debt")
    clawback = await account_id(conn, "system:clawback")
    async with conn.transaction():
        transaction_id = await insert_transaction(conn, "clawback")
        await insert_postings(conn, transaction_id, (debt, -7), (clawback, 7))
    assert await conn.fetchval("SELECT count(*) FROM ledger_postings WHERE transaction_id = $1", transaction_id) == 2


# --- unbalanced transactions ----------------------------------------------------------------------------


async def test_an_unbalanced_transaction_is_refused_at_commit(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    before = await ledger_counts(conn)
    promotions = await account_id(conn, "system:promotions")
    available = await account_id(conn, "user:u1:available")
    transaction = conn.transaction()
    await transaction.start()
    transaction_id = await insert_transaction(conn)
    # Each statement is accepted: the check is deferred to COMMIT.
    await insert_postings(conn, transaction_id, (promotions, -5), (available, 6))
    with check_violation(rf"ledger transaction {transaction_id} is unbalanced: 2 postings summing to 1"):
        await transaction.commit()
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)


async def test_an_unbalanced_transaction_is_refused_by_the_context_manager_too(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    sales = await account_id(conn, "system:sales")
    available = await account_id(conn, "user:u1:available")
    with check_violation("unbalanced: 2 postings summing to -1"):
        async with conn.transaction():
            transaction_id = await insert_transaction(conn, "purchase")
            await insert_postings(conn, transaction_id, (sales, -1000), (available, 999))
    await assert_audit_ok(led)


async def test_a_transaction_with_a_single_posting_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    available = await account_id(conn, "user:u1:available")
    with check_violation("unbalanced: 1 postings summing to 5"):
        async with conn.transaction():
            transaction_id = await insert_transaction(conn)
            await insert_postings(conn, transaction_id, (available, 5))
    await assert_audit_ok(led)


async def test_a_transaction_with_no_posting_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    with check_violation("unbalanced: 0 postings summing to 0"):
        async with conn.transaction():
            await insert_transaction(conn)
    await assert_audit_ok(led)


async def test_checking_balance_immediately_does_not_skip_it(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    with check_violation("unbalanced: 0 postings"):
        async with conn.transaction():
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            await insert_transaction(conn)


async def test_a_zero_posting_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    available = await account_id(conn, "user:u1:available")
    with check_violation("ledger_postings_amount_check"):
        async with conn.transaction():
            transaction_id = await insert_transaction(conn)
            await insert_postings(conn, transaction_id, (available, 0))


# --- append-only ----------------------------------------------------------------------------------------


async def test_update_of_a_posting_is_refused(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    with check_violation("ledger_postings is append-only: UPDATE refused"):
        await conn.execute(
            "UPDATE ledger_postings SET amount = amount * 2 WHERE transaction_id = $1", credit.transaction_id
        )
    # Even a zero-sum rewrite of both legs, in one statement.
    with check_violation("ledger_postings is append-only: UPDATE refused"):
        await conn.execute(
            "UPDATE ledger_postings SET amount = -amount WHERE transaction_id = $1", credit.transaction_id
        )
    await assert_audit_ok(led)


async def test_delete_of_a_posting_is_refused(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    before = await ledger_counts(conn)
    with check_violation("ledger_postings is append-only: DELETE refused"):
        await conn.execute("DELETE FROM ledger_postings WHERE transaction_id = $1", credit.transaction_id)
    with check_violation("ledger_postings is append-only: DELETE refused"):
        await conn.execute("DELETE FROM ledger_postings")
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)


async def test_update_of_a_transaction_is_refused(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    with check_violation("ledger_transactions is append-only: UPDATE refused"):
        await conn.execute("UPDATE ledger_transactions SET kind = 'clawback' WHERE id = $1", credit.transaction_id)
    with check_violation("ledger_transactions is append-only: UPDATE refused"):
        await conn.execute("UPDATE ledger_transactions SET reason = 'edited' WHERE id = $1", credit.transaction_id)
    assert (
        await conn.fetchval("SELECT kind FROM ledger_transactions WHERE id = $1", credit.transaction_id) == "purchase"
    )


async def test_delete_of_a_transaction_is_refused(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    before = await ledger_counts(conn)
    # Its postings reference it; deleting them first is refused as well (see above). Try a fresh
    # transaction with no references too: the trigger, not only the foreign key, refuses.
    with check_violation("ledger_transactions is append-only: DELETE refused"):
        await conn.execute("DELETE FROM ledger_transactions WHERE id = $1", credit.transaction_id)
    assert await ledger_counts(conn) == before


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE ledger_postings",
        "TRUNCATE ledger_postings CASCADE",
        "TRUNCATE ledger_transactions CASCADE",
        "TRUNCATE ledger_postings, ledger_transactions, ledger_lots, ledger_holds CASCADE",
    ],
)
async def test_truncate_is_refused(led: L.Ledger, conn: Any, statement: str) -> None:
    await credited(led)
    before = await ledger_counts(conn)
    with check_violation(r"is append-only: TRUNCATE refused"):
        await conn.execute(statement)
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)


# --- balances, debt, committed transactions, holds, lots --------------------------------------------------


async def test_a_negative_user_balance_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    with check_violation("ledger_balances_available_check"):
        await conn.execute("UPDATE ledger_balances SET available = -1 WHERE user_id = 'u1'")
    with check_violation("ledger_balances_held_check"):
        await conn.execute("UPDATE ledger_balances SET held = -1 WHERE user_id = 'u1'")
    with check_violation("ledger_balances_owed_check"):
        await conn.execute("UPDATE ledger_balances SET owed = -1 WHERE user_id = 'u1'")
    assert await led.balances("u1") == L.Balances(available=370, held=0, owed=0)


@pytest.mark.parametrize("kind", ["grant", "purchase", "refund", "void", "expiry", "clawback_reversal"])
async def test_debiting_a_debt_account_outside_a_clawback_is_refused(led: L.Ledger, conn: Any, kind: str) -> None:
    await credited(led)
    debt = await account_id(conn, "user:u1:debt")
    promotions = await account_id(conn, "system:promotions")
    before = await ledger_counts(conn)
    written: list[int] = []
    with check_violation(r"ledger transaction (\d+) creates debt but is not a clawback") as refused:
        async with conn.transaction():
            written.append(await insert_transaction(conn, kind))
            # Zero-sum, so only the debt rule can refuse it; refused at the INSERT, not at COMMIT.
            await insert_postings(conn, written[0], (debt, -5), (promotions, 5))
            written.append(-1)
    assert written[1:] == []
    assert f"ledger transaction {written[0]} " in str(refused.value)
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)


async def test_adding_balanced_postings_to_a_committed_transaction_is_refused(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    assert credit.transaction_id is not None
    promotions = await account_id(conn, "system:promotions")
    expired = await account_id(conn, "system:expired")
    before = await ledger_counts(conn)
    with check_violation(f"ledger transaction {credit.transaction_id} is committed: postings may not be added"):
        async with conn.transaction():
            await insert_postings(conn, credit.transaction_id, (promotions, -5), (expired, 5))
    # Also in one multi-row statement, alongside a valid new transaction's postings.
    with check_violation(f"ledger transaction {credit.transaction_id} is committed: postings may not be added"):
        async with conn.transaction():
            fresh = await insert_transaction(conn)
            await conn.execute(
                "INSERT INTO ledger_postings (transaction_id, account_id, amount) VALUES "
                "($1, $3, -1), ($1, $4, 1), ($2, $3, -5), ($2, $4, 5)",
                fresh,
                credit.transaction_id,
                promotions,
                expired,
            )
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)


@pytest.mark.parametrize(
    ("end", "new_status", "refusal"),
    [
        # A captured hold set to voided or open also breaks a CHECK of the row, which PostgreSQL tests first.
        ("capture", "voided", "ledger_holds_check"),
        ("capture", "open", "ledger_holds_check"),
        ("void", "captured", "already ended as voided"),
        ("void", "expired", "already ended as voided"),
        ("expire", "voided", "already ended as expired"),
    ],
)
async def test_a_hold_cannot_change_status_after_it_ended(
    led: L.Ledger, conn: Any, end: str, new_status: str, refusal: str
) -> None:
    await credited(led)
    hold = await led.submit(
        L.Hold(key="h", user_id="u1", actor="test", amount=10, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    )
    assert hold.hold_id is not None
    if end == "capture":
        await led.submit(L.Capture(key="c", user_id="u1", actor="test", hold_id=hold.hold_id))
    else:
        await led.submit(L.Void(key="v", user_id="u1", actor="test", hold_id=hold.hold_id, expired=end == "expire"))
    status = await conn.fetchval("SELECT status FROM ledger_holds WHERE id = $1", hold.hold_id)
    with check_violation(refusal):
        await conn.execute("UPDATE ledger_holds SET status = $2 WHERE id = $1", hold.hold_id, new_status)
    assert await conn.fetchval("SELECT status FROM ledger_holds WHERE id = $1", hold.hold_id) == status
    await assert_audit_ok(led)


async def test_a_hold_cannot_be_rewritten(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    hold = await led.submit(
        L.Hold(key="h", user_id="u1", actor="test", amount=10, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    )
    await led.submit(L.Capture(key="c", user_id="u1", actor="test", hold_id=hold.hold_id, amount=6))
    await led.submit(L.Refund(key="r", user_id="u1", actor="test", hold_id=hold.hold_id, amount=2, reason="test"))
    for assignment in (
        "amount = 11",
        "user_id = 'u2'",
        "captured = 5",
        "refunded = 1",
        "hold_transaction_id = hold_transaction_id + 1",
        "settle_transaction_id = hold_transaction_id",
    ):
        with check_violation(rf"hold {hold.hold_id} may not be rewritten"):
            await conn.execute(f"UPDATE ledger_holds SET {assignment} WHERE id = $1", hold.hold_id)
    await assert_audit_ok(led)


async def test_a_lot_cannot_hold_more_than_its_amount(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    (lot_id,) = credit.lot_ids
    with check_violation("ledger_lots_check"):
        await conn.execute("UPDATE ledger_lots SET remaining = amount + 1 WHERE id = $1", lot_id)
    with check_violation("ledger_lots_remaining_check"):
        await conn.execute("UPDATE ledger_lots SET remaining = -1 WHERE id = $1", lot_id)
    with check_violation("ledger_lots_check"):
        # An expired lot keeps nothing.
        await conn.execute("UPDATE ledger_lots SET expired_at = now() WHERE id = $1", lot_id)
    assert await conn.fetchval("SELECT remaining FROM ledger_lots WHERE id = $1", lot_id) == 370
    await assert_audit_ok(led)


async def test_a_refund_beyond_the_capture_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    hold = await led.submit(
        L.Hold(key="h", user_id="u1", actor="test", amount=10, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    )
    await led.submit(L.Capture(key="c", user_id="u1", actor="test", hold_id=hold.hold_id, amount=6))
    with check_violation("ledger_holds_check"):
        await conn.execute("UPDATE ledger_holds SET refunded = 7 WHERE id = $1", hold.hold_id)
    with check_violation(rf"shares of hold {hold.hold_id} give back and refund more than they drew"):
        await conn.execute(
            "UPDATE ledger_holds SET share_returned = share_drawn, share_refunded = share_drawn WHERE id = $1",
            hold.hold_id,
        )
    await assert_audit_ok(led)


# --- the ledger's state rows are never removed --------------------------------------------------------------

STATE_TABLES = ["ledger_balances", "ledger_lots", "ledger_holds", "ledger_accounts"]


async def user_with_a_hold(led: L.Ledger) -> L.Result:
    await credited(led)
    return await led.submit(
        L.Hold(key="h", user_id="u1", actor="test", amount=10, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    )


async def state_counts(conn: Any) -> list[int]:
    return [await conn.fetchval(f"SELECT count(*) FROM {table}") for table in STATE_TABLES]


@pytest.mark.parametrize("table", STATE_TABLES)
async def test_truncate_of_the_ledgers_state_is_refused(led: L.Ledger, conn: Any, table: str) -> None:
    await user_with_a_hold(led)
    before = await state_counts(conn)
    with check_violation("is append-only: TRUNCATE refused"):
        await conn.execute(f"TRUNCATE {table} CASCADE")
    assert await state_counts(conn) == before
    await assert_audit_ok(led)


@pytest.mark.parametrize("table", STATE_TABLES)
async def test_delete_of_the_ledgers_state_is_refused(led: L.Ledger, conn: Any, table: str) -> None:
    await user_with_a_hold(led)
    before = await state_counts(conn)
    with check_violation(f"{table} is append-only: DELETE refused"):
        await conn.execute(f"DELETE FROM {table}")
    assert await state_counts(conn) == before
    await assert_audit_ok(led)


async def test_update_of_an_account_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    with check_violation("ledger_accounts is append-only: UPDATE refused"):
        await conn.execute("UPDATE ledger_accounts SET code = code || ':x' WHERE user_id = 'u1'")


async def test_the_audit_notices_moments_whose_user_rows_are_gone(led: L.Ledger, conn: Any) -> None:
    """The second line of defence: if the guards were bypassed (here by a superuser turning triggers and
    foreign keys off), the audit still sees postings on accounts that no balance row accounts for."""
    await user_with_a_hold(led)
    postings = await ledger_counts(conn)
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for table in ("ledger_holds", "ledger_lots", "ledger_balances"):
            await conn.execute(f"DELETE FROM {table}")
    assert await ledger_counts(conn) == postings
    report = await led.audit()
    assert not report.ok
    failed = {check.name for check in report.checks if not check.ok}
    assert "user_accounts_have_balance_rows" in failed, failed
    assert "user:u1:available" in next(
        check.detail for check in report.checks if check.name == "user_accounts_have_balance_rows"
    )


# --- the set-based stand-ins for the postings' foreign keys -------------------------------------------------


async def test_a_posting_to_an_account_that_does_not_exist_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    promotions = await account_id(conn, "system:promotions")
    before = await ledger_counts(conn)
    with pytest.raises(asyncpg.exceptions.ForeignKeyViolationError, match="account 999999 which does not exist"):  # noqa: PT012 - the refusal comes at the second statement of the transaction
        async with conn.transaction():
            transaction_id = await insert_transaction(conn)
            await conn.execute(
                "INSERT INTO ledger_postings (transaction_id, account_id, amount) VALUES ($1, $2, -5), ($1, 999999, 5)",
                transaction_id,
                promotions,
            )
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)


async def test_a_posting_for_a_transaction_that_does_not_exist_is_refused(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    promotions = await account_id(conn, "system:promotions")
    expired = await account_id(conn, "system:expired")
    before = await ledger_counts(conn)
    with pytest.raises(asyncpg.exceptions.ForeignKeyViolationError, match="transaction 888888 which does not exist"):
        async with conn.transaction():
            await insert_postings(conn, 888_888, (promotions, -5), (expired, 5))
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)


# --- the set-based stand-ins for the state tables' foreign keys ---------------------------------------------


def foreign_key_violation(match: str) -> Any:
    return pytest.raises(asyncpg.exceptions.ForeignKeyViolationError, match=match)


@pytest.mark.parametrize(
    ("user_id", "source", "refusal"),
    [
        ("nobody", "credit", "names a user with no balance row"),
        ("u1", "missing", "names a source transaction which does not exist"),
        ("u2", "credit", "names a source transaction of another user"),
    ],
)
async def test_a_lot_must_name_its_user_and_source_transaction(
    led: L.Ledger, conn: Any, user_id: str, source: str, refusal: str
) -> None:
    credit = await credited(led)
    await credited(led, "u2")
    source_id = credit.transaction_id if source == "credit" else 777_777
    before = await conn.fetchval("SELECT count(*) FROM ledger_lots")
    with foreign_key_violation(refusal):
        await conn.execute(
            "INSERT INTO ledger_lots (user_id, category, amount, remaining, source_transaction_id) "
            "VALUES ($1, 'promotional', 5, 5, $2)",
            user_id,
            source_id,
        )
    assert await conn.fetchval("SELECT count(*) FROM ledger_lots") == before
    # What other rows point at never changes.
    (lot_id,) = credit.lot_ids
    for assignment in ("user_id = 'nobody'", "id = 999999", "source_transaction_id = 777777", "amount = 371"):
        with check_violation("ledger_lots row .* may not change its identity or origin"):
            await conn.execute(f"UPDATE ledger_lots SET {assignment} WHERE id = $1", lot_id)
    await assert_audit_ok(led)


async def test_a_hold_must_name_its_user_and_transactions(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    hold = await led.submit(
        L.Hold(key="h", user_id="u1", actor="test", amount=10, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    )
    insert = (
        "INSERT INTO ledger_holds (user_id, amount, status, expires_at, hold_transaction_id, share_lot_ids, "
        "share_drawn, share_returned, share_refunded) VALUES ($1, 10, 'open', now(), $2, $3, '{10}', '{0}', '{0}')"
    )
    with foreign_key_violation("names a user with no balance row"):
        await conn.execute(insert, "nobody", credit.transaction_id, credit.lot_ids)
    with foreign_key_violation("names a hold transaction which does not exist"):
        await conn.execute(insert, "u1", 777_777, credit.lot_ids)
    with foreign_key_violation("names a settle transaction which does not exist"):
        await conn.execute(
            "UPDATE ledger_holds SET status = 'voided', settle_transaction_id = 777777, settled_at = now() "
            "WHERE id = $1",
            hold.hold_id,
        )
    assert await conn.fetchval("SELECT status FROM ledger_holds WHERE id = $1", hold.hold_id) == "open"
    await assert_audit_ok(led)


async def test_a_holds_shares_name_lots_of_its_user_once_and_draw_its_amount(led: L.Ledger, conn: Any) -> None:
    credit = await credited(led)
    other = await credited(led, "u2")
    hold = await led.submit(
        L.Hold(key="h", user_id="u1", actor="test", amount=10, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    )
    (lot_id,) = credit.lot_ids

    async def insert_hold(lot_ids: list[int], drawn: list[int]) -> None:
        """With a hold transaction of its own, as the engine writes it; the error rolls both back."""
        async with conn.transaction():
            new_hold_id = await conn.fetchval("SELECT nextval('ledger_holds_id_seq')")
            await conn.execute(
                "INSERT INTO ledger_holds (id, user_id, amount, status, expires_at, hold_transaction_id, "
                "share_lot_ids, share_drawn, share_returned, share_refunded) "
                "VALUES ($1, 'u1', 10, 'open', now(), $2, $3, $4, $5, $5)",
                new_hold_id,
                await insert_transaction(conn, "hold", hold_id=new_hold_id),
                lot_ids,
                drawn,
                [0] * len(lot_ids),
            )

    before = await conn.fetchval("SELECT count(*) FROM ledger_holds")
    with foreign_key_violation("names lot 777777 which does not exist"):
        await insert_hold([777_777], [10])
    with foreign_key_violation(rf"names lot {other.lot_ids[0]} of another user"):
        await insert_hold([other.lot_ids[0]], [10])
    with check_violation("drew 9, not the hold's amount"):
        await insert_hold([lot_id], [9])
    with check_violation("name a lot twice"):
        await insert_hold([lot_id, lot_id], [5, 5])
    for lot_ids, drawn in (([], []), ([lot_id], [10, 0]), ([lot_id], [None]), ([lot_id], [-10])):
        with check_violation("ledger_holds_shares_check"):
            await insert_hold(lot_ids, drawn)  # type: ignore[arg-type]
    assert await conn.fetchval("SELECT count(*) FROM ledger_holds") == before
    # What a hold drew from never changes.
    with check_violation(rf"hold {hold.hold_id} may not be rewritten"):
        await conn.execute("UPDATE ledger_holds SET share_lot_ids = $2 WHERE id = $1", hold.hold_id, other.lot_ids)
    with check_violation(rf"hold {hold.hold_id} may not be rewritten"):
        await conn.execute("UPDATE ledger_holds SET share_drawn = '{9}' WHERE id = $1", hold.hold_id)
    await assert_audit_ok(led)


async def test_a_ledger_transaction_creates_or_settles_one_hold_only(led: L.Ledger, conn: Any) -> None:
    """What unique indexes on a hold's transactions would guarantee, the holds' statement checks do: a
    hold's transaction is a hold that names it, its settlement a capture or void that names it."""
    credit = await credited(led)
    first, second = [
        await led.submit(
            L.Hold(key=key, user_id="u1", actor="test", amount=10, expires_at=datetime.now(UTC) + timedelta(minutes=5))
        )
        for key in ("h1", "h2")
    ]
    assert first.hold_id is not None
    assert second.hold_id is not None
    captured = await led.submit(L.Capture(key="c1", user_id="u1", actor="test", hold_id=first.hold_id))
    before = await conn.fetchval("SELECT count(*) FROM ledger_holds")
    for hold_transaction_id in (first.transaction_id, credit.transaction_id):
        with foreign_key_violation("names a ledger transaction which is not its own hold or settlement"):
            await conn.execute(
                "INSERT INTO ledger_holds (user_id, amount, status, expires_at, hold_transaction_id, share_lot_ids, "
                "share_drawn, share_returned, share_refunded) VALUES ('u1', 10, 'open', now(), $1, $2, '{10}', "
                "'{0}', '{0}')",
                hold_transaction_id,
                credit.lot_ids,
            )
    assert await conn.fetchval("SELECT count(*) FROM ledger_holds") == before
    # Settled by the first hold's capture, or by a transaction that settles nothing.
    for settle_transaction_id in (captured.transaction_id, credit.transaction_id):
        with foreign_key_violation("names a settle transaction which is not its capture or void"):
            await conn.execute(
                "UPDATE ledger_holds SET status = 'voided', settle_transaction_id = $2, settled_at = now() "
                "WHERE id = $1",
                second.hold_id,
                settle_transaction_id,
            )
    assert await conn.fetchval("SELECT status FROM ledger_holds WHERE id = $1", second.hold_id) == "open"
    await assert_audit_ok(led)


@pytest.mark.parametrize(
    ("reversed_transaction", "refusal"),
    [
        ("missing", "reverses a transaction which does not exist"),
        ("other_user", "reverses a transaction of another user"),
    ],
)
async def test_a_ledger_transaction_reverses_an_existing_one_of_its_user(
    led: L.Ledger, conn: Any, reversed_transaction: str, refusal: str
) -> None:
    await credited(led)
    other = await credited(led, "u2")
    before = await ledger_counts(conn)
    reverses = 777_777 if reversed_transaction == "missing" else other.transaction_id
    with foreign_key_violation(refusal):
        await insert_transaction(conn, "refund", reverses=reverses)
    assert await ledger_counts(conn) == before


# --- the deferred balance check covers every ledger transaction of the database transaction -----------------


@pytest.mark.parametrize(
    "between",
    [
        pytest.param([], id="same_check"),
        # SET CONSTRAINTS ... IMMEDIATE fires the queued check before commit; a ledger transaction written
        # after it must queue its own.
        pytest.param(
            [
                "SET CONSTRAINTS ledger_transactions_balanced IMMEDIATE",
                "SET CONSTRAINTS ledger_transactions_balanced DEFERRED",
            ],
            id="after_a_check_fired_early",
        ),
    ],
)
async def test_an_unbalanced_transaction_after_a_balanced_one_is_refused(
    led: L.Ledger, conn: Any, between: list[str]
) -> None:
    await credited(led)
    promotions = await account_id(conn, "system:promotions")
    available = await account_id(conn, "user:u1:available")
    before = await ledger_counts(conn)
    with check_violation("unbalanced: 2 postings summing to 1"):
        async with conn.transaction():
            balanced = await insert_transaction(conn)
            await insert_postings(conn, balanced, (promotions, -5), (available, 5))
            for statement in between:
                await conn.execute(statement)
            unbalanced = await insert_transaction(conn)
            await insert_postings(conn, unbalanced, (promotions, -5), (available, 6))
    assert await ledger_counts(conn) == before


async def test_a_ledger_transaction_cannot_claim_another_writer(led: L.Ledger, conn: Any) -> None:
    """Postings may join only a ledger transaction of their own database transaction, known by
    written_by_xid; a row naming another writer would escape that."""
    await credited(led)
    before = await ledger_counts(conn)
    with check_violation("names another database transaction as its writer"):
        await conn.execute(
            "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, user_id, actor, result, "
            "written_by_xid) VALUES ('grant', 'forged', $1, 'u1', 'raw-sql', '{}', '1')",
            HASH,
        )
    assert await ledger_counts(conn) == before


async def test_a_forged_marker_does_not_skip_the_balance_check(led: L.Ledger, conn: Any) -> None:
    await credited(led)
    with check_violation("unbalanced: 0 postings"):
        async with conn.transaction():
            await conn.execute("INSERT INTO ledger_balance_checks (transaction_ids) VALUES ('{}')")
            await conn.execute("DELETE FROM ledger_balance_checks")
            await insert_transaction(conn)
            # Emptying the marker the insert queued does not empty the check: it reads the marker as inserted.
            await conn.execute("UPDATE ledger_balance_checks SET transaction_ids = '{}'")
            await conn.execute("DELETE FROM ledger_balance_checks")


async def test_balance_rows_and_holds_keep_their_keys(led: L.Ledger, conn: Any) -> None:
    hold = await user_with_a_hold(led)
    for assignment in ("user_id = 'zz'", "available_account_id = held_account_id"):
        with check_violation("ledger_balances row .* may not change its identity or origin"):
            await conn.execute(f"UPDATE ledger_balances SET {assignment} WHERE user_id = 'u1'")
    with check_violation("ledger_holds row .* may not change its identity or origin"):
        await conn.execute("UPDATE ledger_holds SET id = 999999 WHERE id = $1", hold.hold_id)
    await assert_audit_ok(led)


async def insert_transaction_in_a_rolled_back_savepoint(conn: Any) -> None:
    savepoint = conn.transaction()
    await savepoint.start()
    await insert_transaction(conn)
    await savepoint.rollback()


async def test_the_balance_check_survives_a_rolled_back_savepoint(led: L.Ledger, conn: Any) -> None:
    """The first ledger transaction queues the check; if its savepoint rolls back, the check goes with it
    and the next ledger transaction must queue it again."""
    await credited(led)
    promotions = await account_id(conn, "system:promotions")
    available = await account_id(conn, "user:u1:available")
    before = await ledger_counts(conn)
    with check_violation("unbalanced: 1 postings summing to 5"):
        async with conn.transaction():
            await insert_transaction_in_a_rolled_back_savepoint(conn)
            unbalanced = await insert_transaction(conn)
            await insert_postings(conn, unbalanced, (available, 5))
    assert await ledger_counts(conn) == before
    await assert_audit_ok(led)
    # And a balanced one after a rolled-back savepoint commits.
    async with conn.transaction():
        await insert_transaction_in_a_rolled_back_savepoint(conn)
        balanced = await insert_transaction(conn)
        await insert_postings(conn, balanced, (promotions, -5), (available, 5))
        await conn.execute(
            "INSERT INTO ledger_lots (user_id, category, amount, remaining, source_transaction_id) "
            "VALUES ('u1', 'promotional', 5, 5, $1)",
            balanced,
        )
        await conn.execute("UPDATE ledger_balances SET available = available + 5 WHERE user_id = 'u1'")
    await assert_audit_ok(led)


async def test_a_large_call_written_in_two_statements_adds_up(led: L.Ledger, pool: asyncpg.Pool) -> None:
    """A call of at least SPLIT_OPERATIONS_MIN operations is written in two statements: lots created by
    the first are drawn from by holds of the second, which must update rows the first inserted."""
    from ledger.engine import SPLIT_OPERATIONS_MIN

    credits = [
        L.Credit(key=f"c{n}", user_id="u1", actor="test", amount=1, kind="grant", category="promotional")
        for n in range(40)
    ]
    holds = [
        L.Hold(key=f"h{n}", user_id="u1", actor="test", amount=1, expires_at=datetime.now(UTC) + timedelta(minutes=5))
        for n in range(40)
    ]
    assert len(credits) + len(holds) >= SPLIT_OPERATIONS_MIN
    async with pool.acquire() as connection, connection.transaction():
        outcomes = await led.execute_in(connection, [*credits, *holds])
    assert all(isinstance(outcome, L.Result) for outcome in outcomes)
    assert await led.balances("u1") == L.Balances(available=0, held=40, owed=0)
    assert await pool.fetchval("SELECT sum(remaining) FROM ledger_lots WHERE user_id = 'u1'") == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_holds WHERE user_id = 'u1'") == 40
    await assert_audit_ok(led)
