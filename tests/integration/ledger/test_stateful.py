"""A hypothesis state machine drives the real ledger (PostgreSQL) and a plain model side by side.

The model is written here from the design's rules with simple arithmetic (it does not use ledger.rules):
lots with a category, an expiry and what is left; holds with the shares they drew; debt. Every operation
runs through `Ledger.execute_in` with a simulated clock (`now=`), so expiry is deterministic. After every
step the database's balances equal the model's, every refusal was the one the model predicted, and the
audit passes. Each example runs on a fresh clone of the migrated template database.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ledger as L
from tests.support.database import clone_database, drop_database, dsn_with_database

T = TypeVar("T")
USERS = ("u0", "u1", "u2")
CATEGORY_KIND = {"paid": "purchase", "subscription": "subscription_grant", "promotional": "grant"}
# Spending order among lots expiring at the same moment: the least valuable to the user first.
CATEGORY_RANK = {"promotional": 0, "subscription": 1, "paid": 2}
START = datetime(2030, 1, 1, tzinfo=UTC)
HOLD_LIFETIME = timedelta(days=30)
STEP_TIMEOUT_S = 30
ACTOR = "stateful"


class LoopThread:
    """An event loop in a background thread: the (synchronous) state machine runs coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ledger-stateful-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(STEP_TIMEOUT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STEP_TIMEOUT_S)
        self.loop.close()


# --- the model ------------------------------------------------------------------------------------------


@dataclass
class ModelLot:
    id: int
    category: str
    remaining: int
    expires_at: datetime | None
    expired: bool = False

    def dead(self, now: datetime) -> bool:
        return self.expired or (self.expires_at is not None and self.expires_at <= now)


@dataclass
class ModelShare:
    lot_id: int
    drawn: int
    returned: int = 0
    refunded: int = 0


@dataclass
class ModelHold:
    id: int
    user_id: str
    amount: int
    status: str = "open"
    captured: int = 0
    refunded: int = 0
    shares: list[ModelShare] = field(default_factory=list)


@dataclass
class ModelUser:
    lots: dict[int, ModelLot] = field(default_factory=dict)
    owed: int = 0

    def available(self) -> int:
        return sum(lot.remaining for lot in self.lots.values())

    def spendable_in_order(self, now: datetime) -> list[ModelLot]:
        live = [lot for lot in self.lots.values() if lot.remaining > 0 and not lot.dead(now)]
        # Soonest expiry first, never-expiring last; then category; then the oldest (smallest id).
        return sorted(
            live,
            key=lambda lot: (
                lot.expires_at is None,
                lot.expires_at or START,
                CATEGORY_RANK[lot.category],
                lot.id,
            ),
        )

    def expire(self, now: datetime) -> int:
        total = 0
        for lot in self.lots.values():
            if lot.remaining > 0 and lot.dead(now):
                total += lot.remaining
                lot.remaining = 0
                lot.expired = True
        return total


class Model:
    def __init__(self) -> None:
        self.users = {user_id: ModelUser() for user_id in USERS}
        self.holds: dict[int, ModelHold] = {}

    def balances(self, user_id: str) -> L.Balances:
        user = self.users[user_id]
        held = sum(hold.amount for hold in self.holds.values() if hold.user_id == user_id and hold.status == "open")
        return L.Balances(available=user.available(), held=held, owed=user.owed)

    def give_back(self, hold: ModelHold, amount: int, now: datetime) -> None:
        """Returns `amount` of a hold to its lots, last-drawn first; a dead lot's share is breakage."""
        left = amount
        for share in reversed(hold.shares):
            back = min(left, share.drawn - share.returned)
            share.returned += back
            left -= back
            lot = self.users[hold.user_id].lots[share.lot_id]
            if not lot.dead(now):
                lot.remaining += back
        assert left == 0


# --- the machine ----------------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    runner: LoopThread
    admin_dsn: str
    template: str
    finished_databases: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.database = self.runner.run(clone_database(self.admin_dsn, self.template))
        self.pool = self.runner.run(self._create_pool())
        self.ledger = L.Ledger(self.pool)
        self.model = Model()
        self.now = START
        self.keys = itertools.count(1)
        # Operations that were applied, with their answers, to replay later.
        self.done: list[tuple[L.AnyOperation, L.Result]] = []

    async def _create_pool(self) -> asyncpg.Pool:
        created = await asyncpg.create_pool(dsn_with_database(self.admin_dsn, self.database), min_size=1, max_size=2)
        assert created is not None
        return created

    def teardown(self) -> None:
        self.runner.run(self.pool.close())
        # Dropped after the run: a DROP DATABASE between two clones makes the next CREATE DATABASE wait
        # for a checkpoint (about a second each on this machine).
        self.finished_databases.append(self.database)

    # --- plumbing ---

    def key(self) -> str:
        return f"k{next(self.keys)}"

    async def _execute(self, operation: L.AnyOperation) -> L.Result | L.LedgerRuleError:
        async with self.pool.acquire() as connection, connection.transaction():
            (outcome,) = await self.ledger.execute_in(connection, [operation], now=self.now)
        return outcome

    def execute(self, operation: L.AnyOperation) -> L.Result | L.LedgerRuleError:
        # Every non-replayed operation first expires the user's lots that are past their expiry.
        self.model.users[operation.user_id].expire(self.now)
        outcome = self.runner.run(self._execute(operation))
        event(f"{type(operation).__name__}: {type(outcome).__name__}")
        if isinstance(outcome, L.Result) and outcome.transaction_id is not None:
            self.done.append((operation, outcome))
        return outcome

    def expect_result(self, outcome: L.Result | L.LedgerRuleError, user_id: str) -> L.Result:
        assert isinstance(outcome, L.Result), outcome
        assert not outcome.replayed
        assert outcome.user_id == user_id
        return outcome

    def check_answer(self, result: L.Result) -> None:
        expected = self.model.balances(result.user_id)
        assert L.Balances(available=result.available, held=result.held, owed=result.owed) == expected

    # --- rules ---

    @initialize(
        opening=st.lists(
            st.tuples(
                st.integers(20, 200),
                st.sampled_from(sorted(CATEGORY_RANK)),
                st.sampled_from([None, 30, 90]),
            ),
            min_size=2 * len(USERS),
            max_size=2 * len(USERS),
        )
    )
    def opening_credits(self, opening: list[tuple[int, str, int | None]]) -> None:
        """Two lots per user to start with, so that holds soon straddle lots."""
        for user_id, (amount, category, expires_in_min) in zip(USERS * 2, opening, strict=True):
            self.credit(user_id, amount, category, expires_in_min)

    @rule(
        user_id=st.sampled_from(USERS),
        amount=st.integers(1, 120),
        category=st.sampled_from(sorted(CATEGORY_RANK)),
        expires_in_min=st.sampled_from([None, None, 10, 30, 60, 180]),
    )
    def credit(self, user_id: str, amount: int, category: str, expires_in_min: int | None) -> None:
        expires_at = None if expires_in_min is None else self.now + timedelta(minutes=expires_in_min)
        operation = L.Credit(
            key=self.key(),
            user_id=user_id,
            actor=ACTOR,
            amount=amount,
            kind=CATEGORY_KIND[category],  # type: ignore[arg-type]
            category=category,  # type: ignore[arg-type]
            expires_at=expires_at,
        )
        result = self.expect_result(self.execute(operation), user_id)
        user = self.model.users[user_id]
        repaid = min(amount, user.owed)
        user.owed -= repaid
        rest = amount - repaid
        if rest:
            (lot_id,) = result.lot_ids
            assert lot_id not in user.lots
            user.lots[lot_id] = ModelLot(id=lot_id, category=category, remaining=rest, expires_at=expires_at)
        else:
            assert result.lot_ids == ()
        assert (result.kind, result.amount) == (CATEGORY_KIND[category], amount)
        self.check_answer(result)

    @rule(user_id=st.sampled_from(USERS), amount=st.integers(1, 60))
    def hold(self, user_id: str, amount: int) -> None:
        operation = L.Hold(
            key=self.key(), user_id=user_id, actor=ACTOR, amount=amount, expires_at=self.now + HOLD_LIFETIME
        )
        outcome = self.execute(operation)
        user = self.model.users[user_id]
        if user.owed:
            # Debt blocks new holds, whatever is available.
            assert isinstance(outcome, L.InDebt), outcome
            assert outcome.owed == user.owed
            return
        lots = user.spendable_in_order(self.now)
        spendable = sum(lot.remaining for lot in lots)
        if spendable < amount:
            assert isinstance(outcome, L.InsufficientMoments), outcome
            assert (outcome.required, outcome.available) == (amount, spendable)
            return
        result = self.expect_result(outcome, user_id)
        assert result.hold_id is not None
        assert result.hold_id not in self.model.holds
        hold = ModelHold(id=result.hold_id, user_id=user_id, amount=amount)
        needed = amount
        for lot in lots:
            take = min(needed, lot.remaining)
            if take == 0:
                break
            lot.remaining -= take
            needed -= take
            hold.shares.append(ModelShare(lot_id=lot.id, drawn=take))
        self.model.holds[hold.id] = hold
        self.check_answer(result)

    def pick_hold(self, data: st.DataObject, *, preferred_status: str = "open") -> ModelHold:
        """Mostly a hold in `preferred_status` (so that most steps do something), sometimes any hold."""
        holds = sorted(self.model.holds.values(), key=lambda hold: hold.id)
        preferred = [hold for hold in holds if hold.status == preferred_status]
        if preferred and data.draw(st.integers(0, 4), label="prefer") > 0:
            holds = preferred
        return data.draw(st.sampled_from(holds), label="hold")

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data(), partial=st.booleans())
    def capture(self, data: st.DataObject, partial: bool) -> None:
        hold = self.pick_hold(data)
        amount = data.draw(st.integers(1, hold.amount), label="amount") if partial else None
        operation = L.Capture(key=self.key(), user_id=hold.user_id, actor=ACTOR, hold_id=hold.id, amount=amount)
        outcome = self.execute(operation)
        if hold.status != "open":
            assert isinstance(outcome, L.HoldNotOpen), outcome
            return
        result = self.expect_result(outcome, hold.user_id)
        charged = hold.amount if amount is None else amount
        self.model.give_back(hold, hold.amount - charged, self.now)
        hold.status, hold.captured = "captured", charged
        assert (result.kind, result.amount, result.hold_id) == ("capture", charged, hold.id)
        self.check_answer(result)

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data(), expired=st.booleans())
    def void(self, data: st.DataObject, expired: bool) -> None:
        hold = self.pick_hold(data)
        operation = L.Void(key=self.key(), user_id=hold.user_id, actor=ACTOR, hold_id=hold.id, expired=expired)
        outcome = self.execute(operation)
        if hold.status != "open":
            assert isinstance(outcome, L.HoldNotOpen), outcome
            return
        result = self.expect_result(outcome, hold.user_id)
        self.model.give_back(hold, hold.amount, self.now)
        hold.status = "expired" if expired else "voided"
        self.check_answer(result)

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        in_debt = [
            hold
            for hold in self.model.holds.values()
            if hold.status == "captured" and hold.refunded < hold.captured and self.model.users[hold.user_id].owed
        ]
        if in_debt and data.draw(st.booleans(), label="refund a user in debt"):
            # Rare by chance (a capture, then a clawback into debt, then this refund): sought on purpose.
            hold = data.draw(st.sampled_from(sorted(in_debt, key=lambda hold: hold.id)), label="hold")
        else:
            hold = self.pick_hold(data, preferred_status="captured")
        refundable = hold.captured - hold.refunded
        amount = data.draw(st.integers(1, max(1, refundable + 2)), label="amount")
        operation = L.Refund(key=self.key(), user_id=hold.user_id, actor=ACTOR, hold_id=hold.id, amount=amount)
        outcome = self.execute(operation)
        if hold.status != "captured" or amount > refundable:
            assert isinstance(outcome, L.NotRefundable), outcome
            return
        result = self.expect_result(outcome, hold.user_id)
        user = self.model.users[hold.user_id]
        repaid = min(amount, user.owed)
        user.owed -= repaid
        to_lots = amount - repaid
        new_lot_ids = list(result.lot_ids)
        left = amount
        for share in reversed(hold.shares):
            back = min(left, share.drawn - share.returned - share.refunded)
            share.refunded += back
            left -= back
            restore = min(back, to_lots)
            to_lots -= restore
            if restore == 0:
                continue
            lot = user.lots[share.lot_id]
            if not lot.dead(self.now):
                lot.remaining += restore
            else:
                # The share of an expired lot comes back as a new lot of its category that never expires.
                lot_id = new_lot_ids.pop(0)
                user.lots[lot_id] = ModelLot(id=lot_id, category=lot.category, remaining=restore, expires_at=None)
        assert left == 0
        assert to_lots == 0
        assert new_lot_ids == []
        hold.refunded += amount
        self.check_answer(result)

    # Steps that often land exactly on a lot's expiry (credits expire 10, 30, 60 or 180 minutes out).
    @rule(minutes=st.sampled_from([1, 5, 10, 20, 30, 60]))
    def advance_clock(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule(user_id=st.sampled_from(USERS))
    def expire_lots(self, user_id: str) -> None:
        user = self.model.users[user_id]
        due = sum(lot.remaining for lot in user.lots.values() if lot.remaining > 0 and lot.dead(self.now))
        operation = L.ExpireLots(key=self.key(), user_id=user_id, actor=ACTOR)
        outcome = self.runner.run(self._execute(operation))
        user.expire(self.now)
        result = self.expect_result(outcome, user_id)
        if due:
            assert (result.kind, result.amount) == ("expiry", due)
            assert result.transaction_id is not None
            self.done.append((operation, result))
        else:
            assert result.transaction_id is None
        self.check_answer(result)

    @rule(user_id=st.sampled_from(USERS), beyond=st.integers(-40, 25), data=st.data())
    def clawback(self, user_id: str, beyond: int, data: st.DataObject) -> None:
        """Takes back about what the user has: often a little more, leaving a small debt."""
        user = self.model.users[user_id]
        amount = max(1, user.available() + beyond)
        lot_id = data.draw(st.sampled_from([None, *sorted(user.lots)]), label="lot_id")
        operation = L.Clawback(key=self.key(), user_id=user_id, actor=ACTOR, amount=amount, lot_id=lot_id)
        result = self.expect_result(self.execute(operation), user_id)
        order = user.spendable_in_order(self.now)
        preferred = [lot for lot in order if lot.id == lot_id]
        left = amount
        for lot in preferred + [lot for lot in order if lot.id != lot_id]:
            take = min(left, lot.remaining)
            lot.remaining -= take
            left -= take
        user.owed += left
        assert (result.kind, result.amount) == ("clawback", amount)
        self.check_answer(result)

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """The same key and the same request again: the first answer, and no second effect."""
        operation, first = data.draw(st.sampled_from(self.done), label="replayed")
        outcome = self.runner.run(self._execute(operation))
        assert isinstance(outcome, L.Result), outcome
        assert outcome.replayed
        assert msgspec.structs.replace(outcome, replayed=False) == first

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def reuse_key(self, data: st.DataObject) -> None:
        """The same key with another request is refused and changes nothing."""
        operation, _ = data.draw(st.sampled_from(self.done), label="reused")
        other = msgspec.structs.replace(operation, reason="a different request")
        outcome = self.runner.run(self._execute(other))
        assert isinstance(outcome, L.IdempotencyConflict), outcome

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data())
    def wrong_user(self, data: st.DataObject) -> None:
        """A hold named under another user does not exist for that user."""
        hold = self.pick_hold(data)
        user_id = data.draw(st.sampled_from([user for user in USERS if user != hold.user_id]), label="user")
        outcome = self.execute(L.Void(key=self.key(), user_id=user_id, actor=ACTOR, hold_id=hold.id))
        assert isinstance(outcome, L.HoldNotFound), outcome

    # --- after every step ---

    @invariant()
    def database_matches_model_and_audit_passes(self) -> None:
        async def observe() -> tuple[Any, ...]:
            rows = await self.pool.fetch("SELECT user_id, available, held, owed FROM ledger_balances")
            balances = dict.fromkeys(USERS, L.Balances(available=0, held=0, owed=0))
            for row in rows:
                balances[row["user_id"]] = L.Balances(available=row["available"], held=row["held"], owed=row["owed"])
            report = await self.ledger.audit()
            rows = await self.pool.fetch("SELECT id, status, captured, refunded FROM ledger_holds")
            holds = {row["id"]: (row["status"], row["captured"], row["refunded"]) for row in rows}
            rows = await self.pool.fetch("SELECT id, user_id, category, remaining FROM ledger_lots")
            lots = {row["id"]: (row["user_id"], row["category"], row["remaining"]) for row in rows}
            rows = await self.pool.fetch(
                "SELECT h.id AS hold_id, s.lot_id, s.drawn, s.returned, s.refunded FROM ledger_holds h, "
                "unnest(h.share_lot_ids, h.share_drawn, h.share_returned, h.share_refunded) "
                "AS s (lot_id, drawn, returned, refunded)"
            )
            shares = {(row["hold_id"], row["lot_id"]): (row["drawn"], row["returned"], row["refunded"]) for row in rows}
            return balances, report, holds, lots, shares

        balances, report, holds, lots, shares = self.runner.run(observe())
        assert balances == {user_id: self.model.balances(user_id) for user_id in USERS}
        assert report.ok, [check for check in report.checks if not check.ok]
        # Which lots each hold drew from and what is left of each lot: the spending order, observed.
        assert lots == {
            lot.id: (user_id, lot.category, lot.remaining)
            for user_id, user in self.model.users.items()
            for lot in user.lots.values()
        }
        assert shares == {
            (hold.id, share.lot_id): (share.drawn, share.returned, share.refunded)
            for hold in self.model.holds.values()
            for share in hold.shares
        }
        assert holds == {hold.id: (hold.status, hold.captured, hold.refunded) for hold in self.model.holds.values()}


# Shrinking clones a database per attempt and can take many minutes, so by default a failure is reported
# as found (at most a few dozen steps, printed in full); LEDGER_STATEFUL_SHRINK=1 shrinks it first.
SHRINK = os.environ.get("LEDGER_STATEFUL_SHRINK") == "1"
PHASES = tuple(Phase) if SHRINK else (Phase.explicit, Phase.reuse, Phase.generate)


@pytest.mark.timeout(1800 if SHRINK else 300)
def test_ledger_matches_a_simple_model(postgres_admin_dsn: str, template_database: str) -> None:
    runner = LoopThread()
    finished: list[str] = []
    try:
        machine = type(
            "ConfiguredLedgerMachine",
            (LedgerMachine,),
            {
                "runner": runner,
                "admin_dsn": postgres_admin_dsn,
                "template": template_database,
                "finished_databases": finished,
            },
        )
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=25,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                database=None,
                phases=PHASES,
            ),
        )
    finally:
        try:
            for name in finished:
                runner.run(drop_database(postgres_admin_dsn, name))
        finally:
            runner.close()
