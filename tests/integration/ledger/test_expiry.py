"""The sweeper's lot expiry, as of the moment it is given."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import ledger as L


@pytest.fixture
async def led(pool: asyncpg.Pool) -> AsyncIterator[L.Ledger]:
    async with L.Ledger(pool) as service:
        yield service


async def test_expire_due_lots_expires_what_is_due_at_the_given_moment_once(led: L.Ledger) -> None:
    now = datetime.now(UTC)
    for user, hours in (("u1", 1), ("u2", 3)):
        await led.submit(
            L.Credit(
                key=f"allowance-{user}",
                user_id=user,
                actor="test",
                amount=300,
                kind="subscription_grant",
                category="subscription",
                expires_at=now + timedelta(hours=hours),
            )
        )
    await led.submit(L.Credit(key="paid-u1", user_id="u1", actor="test", amount=50, kind="purchase", category="paid"))

    assert await led.expire_due_lots(now) == 0
    later = now + timedelta(hours=2)
    assert await led.expire_due_lots(later) == 1
    assert await led.expire_due_lots(later) == 0
    assert (await led.balances("u1")).available == 50
    assert (await led.balances("u2")).available == 300
    history = await led.history("u1", limit=10, cursor=None)
    newest = history.items[0]
    assert (newest.kind, newest.delta_available) == ("expiry", -300)
    report = await led.audit()
    assert report.ok, [check for check in report.checks if not check.ok]
