"""ClawbackUnspent against real PostgreSQL: a share of what one lot still holds, from that lot only, never
debt; replayed by its key; exact while holds draw from the same lot concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import ledger as L

ACTOR = "test"


@pytest.fixture
async def led(pool: asyncpg.Pool) -> AsyncIterator[L.Ledger]:
    async with L.Ledger(pool) as started:
        yield started


def later(minutes: int = 60) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


async def allowance(led: L.Ledger, user: str, amount: int) -> int:
    granted = await led.submit(
        L.Credit(
            key=f"allowance-{user}",
            user_id=user,
            actor=ACTOR,
            amount=amount,
            kind="subscription_grant",
            category="subscription",
            expires_at=later(),
        )
    )
    (lot_id,) = granted.lot_ids
    return lot_id


def share(user: str, lot_id: int, numerator: int, denominator: int, key: str = "refund") -> L.ClawbackUnspent:
    return L.ClawbackUnspent(
        key=f"{key}-{user}", user_id=user, actor=ACTOR, lot_id=lot_id, numerator=numerator, denominator=denominator
    )


async def test_a_share_of_the_unspent_lot_is_taken_once_and_replayed(led: L.Ledger, pool: asyncpg.Pool) -> None:
    lot_id = await allowance(led, "u1", 3000)
    await led.submit(L.Credit(key="paid-u1", user_id="u1", actor=ACTOR, amount=500, kind="purchase", category="paid"))
    first = await led.submit(share("u1", lot_id, 1, 3))
    assert (first.amount, first.kind, first.available, first.owed) == (1000, "clawback", 2500, 0)
    again = await led.submit(share("u1", lot_id, 1, 3))
    assert again.replayed
    assert again.transaction_id == first.transaction_id
    assert await pool.fetchval("SELECT remaining FROM ledger_lots WHERE id = $1", lot_id) == 2000
    # All of the rest: the paid lot is untouched and nothing is owed.
    rest = await led.submit(share("u1", lot_id, 1, 1, key="rest"))
    assert (rest.amount, rest.available, rest.owed) == (2000, 500, 0)
    report = await led.audit()
    assert report.ok, [check for check in report.checks if not check.ok]


async def test_nothing_unspent_writes_no_transaction(led: L.Ledger, pool: asyncpg.Pool) -> None:
    lot_id = await allowance(led, "u2", 10)
    hold = await led.submit(L.Hold(key="h-u2", user_id="u2", actor=ACTOR, amount=10, expires_at=later(5)))
    assert hold.hold_id is not None
    result = await led.submit(share("u2", lot_id, 1, 1))
    assert (result.transaction_id, result.amount) == (None, 0)
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback'") == 0


async def test_concurrent_holds_and_the_clawback_never_overdraw_the_lot(led: L.Ledger, pool: asyncpg.Pool) -> None:
    lot_id = await allowance(led, "u3", 1000)

    async def hold(number: int) -> L.Result | L.LedgerRuleError:
        return await led.outcome(L.Hold(key=f"h-{number}", user_id="u3", actor=ACTOR, amount=100, expires_at=later(5)))

    outcomes = await asyncio.gather(*(hold(n) for n in range(8)), led.outcome(share("u3", lot_id, 1, 2)))
    clawback = outcomes[-1]
    assert isinstance(clawback, L.Result)
    held = sum(100 for outcome in outcomes[:-1] if isinstance(outcome, L.Result))
    # Whatever order the batch took them in: the lot gave exactly what holds and the clawback took.
    remaining = await pool.fetchval("SELECT remaining FROM ledger_lots WHERE id = $1", lot_id)
    assert remaining + held + clawback.amount == 1000
    assert clawback.owed == 0
    report = await led.audit()
    assert report.ok, [check for check in report.checks if not check.ok]
