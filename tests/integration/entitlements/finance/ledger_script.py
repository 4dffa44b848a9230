"""Runs a script of ledger operations against real PostgreSQL, one database transaction each, and keeps
the timeline a model reads balances from: each committed transaction's time, and the user's balances
right after it as the ledger keeps them (its cached balance row, not the postings finance sums)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

import ledger as L

ACTOR = "finance-test"
START = datetime(2030, 1, 1, tzinfo=UTC)
CATEGORY_KIND = {"paid": "purchase", "subscription": "subscription_grant", "promotional": "grant"}


@dataclass(frozen=True)
class Step:
    """One operation of a script: `op` names it, `user` is an index, `amount` and `part` size it."""

    op: str
    user: int = 0
    amount: int = 10
    part: int = 100
    category: str = "paid"
    expiring: bool = False


@dataclass
class Moment:
    transaction_id: int
    created_at: datetime
    user_id: str
    balances: L.Balances
    position: L.CommitPosition | None = None


@dataclass
class Script:
    """What ran: the timeline of committed transactions, in the order they were written."""

    users: tuple[str, ...]
    moments: list[Moment] = field(default_factory=list)
    # Each user's open holds (id, amount), oldest first, and captured holds.
    open_holds: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    captured: dict[str, list[int]] = field(default_factory=dict)
    clock: datetime = START
    _keys: itertools.count[int] = field(default_factory=itertools.count)

    def key(self) -> str:
        return f"{self.users[0]}-op-{next(self._keys)}"

    def balances_before(self, user_id: str, instant: datetime) -> L.Balances:
        """The model: the user's balances after their last transaction dated before `instant`."""
        found = L.Balances(available=0, held=0, owed=0)
        for moment in self.moments:
            if moment.user_id == user_id and moment.created_at < instant:
                found = moment.balances
        return found

    def liability_before(self, instant: datetime) -> int:
        total = 0
        for user_id in self.users:
            balances = self.balances_before(user_id, instant)
            total += balances.available + balances.held - balances.owed
        return total


def operation(script: Script, step: Step) -> L.AnyOperation | None:
    user_id = script.users[step.user % len(script.users)]
    common = {"key": script.key(), "user_id": user_id, "actor": ACTOR}
    holds, captured = script.open_holds.setdefault(user_id, []), script.captured.setdefault(user_id, [])
    if step.op == "credit":
        expires_at = script.clock + timedelta(days=1) if step.expiring else None
        return L.Credit(
            **common,
            amount=step.amount,
            kind=CATEGORY_KIND[step.category],  # type: ignore[arg-type]
            category=step.category,
            expires_at=expires_at,
        )  # type: ignore[arg-type]
    if step.op == "hold":
        return L.Hold(**common, amount=step.amount, expires_at=script.clock + timedelta(days=30))
    if step.op == "capture" and holds:
        hold_id, amount = holds[0]
        return L.Capture(
            **common, hold_id=hold_id, amount=None if step.part >= 100 else max(1, amount * step.part // 100)
        )
    if step.op == "void" and holds:
        return L.Void(**common, hold_id=holds[0][0])
    if step.op == "refund" and captured:
        return L.Refund(**common, hold_id=captured[0], amount=1)
    if step.op == "clawback":
        return L.Clawback(**common, amount=step.amount)
    if step.op == "expire":
        script.clock += timedelta(days=2)
        return L.ExpireLots(**common)
    return None


async def run(pool: asyncpg.Pool, led: L.Ledger, script: Script, steps: Sequence[Step]) -> Script:
    for step in steps:
        op = operation(script, step)
        if op is None:
            continue
        async with pool.acquire() as connection, connection.transaction():
            (outcome,) = await led.execute_in(connection, [op], now=script.clock)
            # Everything this database transaction wrote (a refused hold may still have expired lots first),
            # and the user's cached balance row after it.
            written = await connection.fetchval(
                "SELECT array_agg(id ORDER BY id) FROM ledger_transactions WHERE written_by_xid = pg_current_xact_id()"
            )
            cached = await connection.fetchrow(
                "SELECT available, held, owed FROM ledger_balances WHERE user_id = $1", op.user_id
            )
        for transaction_id in written or []:
            assert cached is not None
            balances = L.Balances(available=cached["available"], held=cached["held"], owed=cached["owed"])
            script.moments.append(Moment(transaction_id, datetime.min.replace(tzinfo=UTC), op.user_id, balances))
        if not isinstance(outcome, L.Result) or outcome.transaction_id is None:
            continue
        if isinstance(op, L.Hold) and outcome.hold_id is not None:
            script.open_holds[op.user_id].append((outcome.hold_id, op.amount))
        if isinstance(op, L.Capture | L.Void):
            script.open_holds[op.user_id].pop(0)
            if isinstance(op, L.Capture):
                script.captured[op.user_id].append(op.hold_id)
        assert (outcome.available, outcome.held, outcome.owed) == (
            script.moments[-1].balances.available,
            script.moments[-1].balances.held,
            script.moments[-1].balances.owed,
        )
    rows = await pool.fetch(
        "SELECT id, created_at, written_by_xid::text AS xid FROM ledger_transactions WHERE id = ANY($1::bigint[])",
        [moment.transaction_id for moment in script.moments],
    )
    found = {row["id"]: row for row in rows}
    for moment in script.moments:
        moment.created_at = found[moment.transaction_id]["created_at"]
        moment.position = L.CommitPosition(
            xid=int(found[moment.transaction_id]["xid"]), transaction_id=moment.transaction_id
        )
    return script
