"""The ledger under concurrency: group commit, separate transactions, idempotency races, several
processes against one database, and crashes between steps."""

from __future__ import annotations

import asyncio
import collections
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

import ledger as L

PROJECT_ROOT = Path(__file__).resolve().parents[3]
ACTOR = "test"
SUBPROCESS_TIMEOUT_S = 90


def soon() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=10)


@pytest.fixture
async def led(pool: asyncpg.Pool) -> AsyncIterator[L.Ledger]:
    async with L.Ledger(pool) as started:
        yield started


async def credit(led: L.Ledger, user_id: str, amount: int, key: str | None = None) -> L.Result:
    return await led.submit(
        L.Credit(
            key=key or f"credit-{user_id}",
            user_id=user_id,
            actor=ACTOR,
            amount=amount,
            kind="purchase",
            category="paid",
        )
    )


async def assert_audit_ok(led: L.Ledger) -> None:
    report = await led.audit()
    assert report.ok, [check for check in report.checks if not check.ok]


async def count_rows(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


def without_replayed(result: L.Result) -> L.Result:
    return msgspec.structs.replace(result, replayed=False)


# --- one hot user, many holds -----------------------------------------------------------------------------


async def test_200_concurrent_holds_through_group_commit_accept_exactly_what_fits(
    led: L.Ledger, pool: asyncpg.Pool
) -> None:
    await credit(led, "u1", 370)
    outcomes = await asyncio.gather(
        *(
            led.outcome(L.Hold(key=f"hold-{number}", user_id="u1", actor=ACTOR, amount=10, expires_at=soon()))
            for number in range(200)
        )
    )
    accepted = [outcome for outcome in outcomes if isinstance(outcome, L.Result)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, L.InsufficientMoments)]
    assert (len(accepted), len(refused)) == (37, 163)
    assert all((error.required, error.available) == (10, 0) for error in refused)
    assert len({result.hold_id for result in accepted}) == 37
    assert len({result.transaction_id for result in accepted}) == 37
    assert not any(result.replayed for result in accepted)
    assert await led.balances("u1") == L.Balances(available=0, held=370, owed=0)
    assert await count_rows(pool, "ledger_holds") == 37
    await assert_audit_ok(led)


async def test_200_concurrent_holds_in_separate_transactions_accept_exactly_what_fits(
    led: L.Ledger, pool: asyncpg.Pool
) -> None:
    await credit(led, "u1", 370)
    in_flight = 0
    most_in_flight = 0

    async def hold_alone(number: int) -> L.Result | L.LedgerRuleError:
        nonlocal in_flight, most_in_flight
        async with pool.acquire() as connection, connection.transaction():
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            try:
                (outcome,) = await led.execute_in(
                    connection,
                    [L.Hold(key=f"alone-{number}", user_id="u1", actor=ACTOR, amount=10, expires_at=soon())],
                )
            finally:
                in_flight -= 1
            return outcome

    outcomes = await asyncio.gather(*(hold_alone(number) for number in range(200)))
    accepted = [outcome for outcome in outcomes if isinstance(outcome, L.Result)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, L.InsufficientMoments)]
    assert (len(accepted), len(refused)) == (37, 163)
    # The transactions really overlapped (the pool holds 30 connections), yet none lost an update.
    assert most_in_flight > 1
    # Each accepted hold saw the balance its predecessors left: 360, 350, ..., 0, each exactly once.
    assert sorted(result.available for result in accepted) == list(range(0, 370, 10))
    assert await led.balances("u1") == L.Balances(available=0, held=370, owed=0)
    assert await count_rows(pool, "ledger_holds") == 37
    await assert_audit_ok(led)


async def test_concurrent_holds_captures_and_voids_across_users_add_up(led: L.Ledger) -> None:
    users = [f"u{number}" for number in range(5)]
    for user_id in users:
        await credit(led, user_id, 500)
    holds = await asyncio.gather(
        *(
            led.outcome(L.Hold(key=f"h-{user_id}-{number}", user_id=user_id, actor=ACTOR, amount=10, expires_at=soon()))
            for number in range(60)
            for user_id in users
        )
    )
    accepted = [outcome for outcome in holds if isinstance(outcome, L.Result)]
    assert len(accepted) == 5 * 50
    settles: list[L.AnyOperation] = []
    for number, result in enumerate(accepted):
        assert result.hold_id is not None
        key = f"settle-{result.hold_id}"
        if number % 3 == 0:
            settles.append(L.Capture(key=key, user_id=result.user_id, actor=ACTOR, hold_id=result.hold_id))
        elif number % 3 == 1:
            settles.append(L.Capture(key=key, user_id=result.user_id, actor=ACTOR, hold_id=result.hold_id, amount=4))
        else:
            settles.append(L.Void(key=key, user_id=result.user_id, actor=ACTOR, hold_id=result.hold_id))
    # Every settlement twice, concurrently: the second is a replay, never a second effect.
    outcomes = await asyncio.gather(*(led.outcome(operation) for operation in settles + settles))
    assert all(isinstance(outcome, L.Result) for outcome in outcomes), outcomes
    charged: dict[str, int] = collections.Counter()
    for operation in settles:
        if isinstance(operation, L.Capture):
            charged[operation.user_id] += 10 if operation.amount is None else operation.amount
    for user_id in users:
        assert await led.balances(user_id) == L.Balances(available=500 - charged[user_id], held=0, owed=0)
    await assert_audit_ok(led)


# --- idempotency under races -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["group_commit", "separate_transactions"])
async def test_20_concurrent_calls_with_one_key_have_one_effect(led: L.Ledger, pool: asyncpg.Pool, path: str) -> None:
    await credit(led, "u1", 370)
    operation = L.Hold(key="same-key", user_id="u1", actor=ACTOR, amount=25, expires_at=soon(), reference="gen-1")

    async def alone() -> L.Result | L.LedgerRuleError:
        async with pool.acquire() as connection, connection.transaction():
            (outcome,) = await led.execute_in(connection, [operation])
            return outcome

    if path == "group_commit":
        outcomes = await asyncio.gather(*(led.outcome(operation) for _ in range(20)))
    else:
        outcomes = await asyncio.gather(*(alone() for _ in range(20)))
    assert all(isinstance(outcome, L.Result) for outcome in outcomes), outcomes
    results = [outcome for outcome in outcomes if isinstance(outcome, L.Result)]
    assert len({without_replayed(result) for result in results}) == 1
    assert sum(not result.replayed for result in results) == 1
    first = results[0]
    assert (first.kind, first.amount, first.available, first.held) == ("hold", 25, 345, 25)
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE idempotency_key = 'same-key'") == 1
    assert await count_rows(pool, "ledger_holds") == 1
    assert await led.balances("u1") == L.Balances(available=345, held=25, owed=0)
    # And once more, later: still the first answer.
    again = await led.submit(operation)
    assert again.replayed
    assert without_replayed(again) == without_replayed(first)
    await assert_audit_ok(led)


async def test_same_key_with_a_different_request_is_refused(led: L.Ledger, pool: asyncpg.Pool) -> None:
    await credit(led, "u1", 370)
    await credit(led, "u2", 370)
    expires_at = soon()
    first = await led.submit(L.Hold(key="k", user_id="u1", actor=ACTOR, amount=10, expires_at=expires_at))
    variants = [
        L.Hold(key="k", user_id="u1", actor=ACTOR, amount=11, expires_at=expires_at),
        L.Hold(key="k", user_id="u2", actor=ACTOR, amount=10, expires_at=expires_at),
        L.Hold(key="k", user_id="u1", actor="someone else", amount=10, expires_at=expires_at),
        L.Hold(key="k", user_id="u1", actor=ACTOR, amount=10, expires_at=expires_at + timedelta(seconds=1)),
        L.Capture(key="k", user_id="u1", actor=ACTOR, hold_id=first.hold_id or 0),
    ]
    for variant in variants:
        outcome = await led.outcome(variant)
        assert isinstance(outcome, L.IdempotencyConflict), variant
        assert outcome.code == "idempotency_key_reused"
        with pytest.raises(L.IdempotencyConflict):
            await led.submit(variant)
    assert await led.balances("u1") == L.Balances(available=360, held=10, owed=0)
    assert await led.balances("u2") == L.Balances(available=370, held=0, owed=0)
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE idempotency_key = 'k'") == 1
    await assert_audit_ok(led)


async def test_concurrent_same_key_with_two_different_requests_has_one_effect(
    led: L.Ledger, pool: asyncpg.Pool
) -> None:
    await credit(led, "u1", 370)
    expires_at = soon()
    ten = L.Hold(key="race", user_id="u1", actor=ACTOR, amount=10, expires_at=expires_at)
    eleven = L.Hold(key="race", user_id="u1", actor=ACTOR, amount=11, expires_at=expires_at)
    operations = [ten, eleven] * 10
    outcomes = await asyncio.gather(*(led.outcome(operation) for operation in operations))
    winners = {
        operation.amount
        for operation, outcome in zip(operations, outcomes, strict=True)
        if isinstance(outcome, L.Result)
    }
    assert len(winners) == 1
    (amount,) = winners
    for operation, outcome in zip(operations, outcomes, strict=True):
        expected = L.Result if operation.amount == amount else L.IdempotencyConflict
        assert isinstance(outcome, expected), (operation, outcome)
    assert await led.balances("u1") == L.Balances(available=370 - amount, held=amount, owed=0)
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE idempotency_key = 'race'") == 1
    await assert_audit_ok(led)


async def test_a_refused_operation_does_not_claim_its_key_even_within_one_batch(
    led: L.Ledger, pool: asyncpg.Pool
) -> None:
    await credit(led, "u1", 370)
    expires_at = soon()
    too_big = L.Hold(key="retry", user_id="u1", actor=ACTOR, amount=1000, expires_at=expires_at)
    fits = L.Hold(key="retry", user_id="u1", actor=ACTOR, amount=10, expires_at=expires_at)

    class RollBack(Exception):
        pass

    async with pool.acquire() as connection:
        # In two calls (two batches): the refused request leaves the key free, the next one runs.
        async def in_two_calls() -> None:
            async with connection.transaction():
                (refused,) = await led.execute_in(connection, [too_big])
                (separate,) = await led.execute_in(connection, [fits])
                assert isinstance(refused, L.InsufficientMoments)
                assert isinstance(separate, L.Result)
                raise RollBack

        with pytest.raises(RollBack):
            await in_two_calls()
        # In one call (one group-commit batch), the same requests must get the same answers.
        async with connection.transaction():
            together = await led.execute_in(connection, [too_big, fits, fits, too_big])
    refused, written, replayed, conflict = together
    assert isinstance(refused, L.InsufficientMoments)
    assert isinstance(written, L.Result), written
    assert not written.replayed
    # Once written, the key is claimed within the batch as it is in the database.
    assert isinstance(replayed, L.Result)
    assert replayed.replayed
    assert without_replayed(replayed) == written
    assert isinstance(conflict, L.IdempotencyConflict)
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE idempotency_key = 'retry'") == 1
    assert await led.balances("u1") == L.Balances(available=360, held=10, owed=0)


# --- several processes against one database ---------------------------------------------------------------

WORKER_SCRIPT = r"""
import asyncio, json, sys
from datetime import UTC, datetime, timedelta

import asyncpg
import ledger as L

DSN, NAME = sys.argv[1], sys.argv[2]
USERS = [f"u{n}" for n in range(5)]


def emit(payload):
    print(json.dumps(payload), flush=True)


async def main():
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=6)
    async with L.Ledger(pool) as led:
        expires_at = datetime.now(UTC) + timedelta(minutes=30)
        holds = [
            L.Hold(key=f"{NAME}-h-{n}", user_id=USERS[n % 5], actor=NAME, amount=10, expires_at=expires_at)
            for n in range(200)
        ]
        outcomes = await asyncio.gather(*(led.outcome(op) for op in holds))
        accepted = [[r.user_id, r.hold_id] for r in outcomes if isinstance(r, L.Result)]
        refused = sorted({type(r).__name__ for r in outcomes if not isinstance(r, L.Result)})
        emit({"phase": 1, "accepted": accepted, "refused_kinds": refused,
              "refused": sum(not isinstance(r, L.Result) for r in outcomes)})
        # Wait until every process has finished its holds.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        settles, charged = [], {}
        for n, (user_id, hold_id) in enumerate(accepted):
            key = f"settle-{hold_id}"
            if n % 4 == 0:
                settles.append(L.Capture(key=key, user_id=user_id, actor=NAME, hold_id=hold_id))
                charged[user_id] = charged.get(user_id, 0) + 10
            elif n % 4 == 1:
                settles.append(L.Capture(key=key, user_id=user_id, actor=NAME, hold_id=hold_id, amount=3))
                charged[user_id] = charged.get(user_id, 0) + 3
            else:
                settles.append(L.Void(key=key, user_id=user_id, actor=NAME, hold_id=hold_id))
        more = [
            L.Hold(key=f"{NAME}-more-{n}", user_id=USERS[n % 5], actor=NAME, amount=7, expires_at=expires_at)
            for n in range(50)
        ]
        outcomes = await asyncio.gather(*(led.outcome(op) for op in settles + more))
        bad = [repr(r) for r in outcomes[: len(settles)] if not isinstance(r, L.Result)]
        opened = {}
        for r in outcomes[len(settles):]:
            if isinstance(r, L.Result):
                opened[r.user_id] = opened.get(r.user_id, 0) + 7
            elif not isinstance(r, L.InsufficientMoments):
                bad.append(repr(r))
        emit({"phase": 2, "charged": charged, "opened": opened, "bad": bad})
    await pool.close()


asyncio.run(main())
"""


async def read_json_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), SUBPROCESS_TIMEOUT_S)
    if not line:
        assert process.stderr is not None
        error = await process.stderr.read()
        raise AssertionError(f"worker process died: {error.decode()[-3000:]}")
    return dict(json.loads(line))


async def test_three_processes_share_one_ledger_without_losing_a_moment(database_url: str, pool: asyncpg.Pool) -> None:
    users = [f"u{number}" for number in range(5)]
    async with L.Ledger(pool) as led:
        for user_id in users:
            await credit(led, user_id, 1000)
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER_SCRIPT,
            database_url,
            f"p{number}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=PROJECT_ROOT,
        )
        for number in range(3)
    ]
    try:
        # Phase 1: 3 x 200 holds of 10 across 5 users (120 holds of 10 wanted per user, 100 fit).
        first = [await read_json_line(process) for process in processes]
        accepted_per_user = collections.Counter(user_id for report in first for user_id, _ in report["accepted"])
        assert accepted_per_user == dict.fromkeys(users, 100)
        assert sum(report["refused"] for report in first) == 3 * 200 - 500
        assert {kind for report in first for kind in report["refused_kinds"]} == {"InsufficientMoments"}
        hold_ids = [hold_id for report in first for _, hold_id in report["accepted"]]
        assert len(set(hold_ids)) == 500
        async with L.Ledger(pool) as led:
            for user_id in users:
                assert await led.balances(user_id) == L.Balances(available=0, held=1000, owed=0)
            await assert_audit_ok(led)
        # Phase 2, all processes at once: capture, partially capture or void every hold, and race new holds
        # for whatever the voids give back.
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        second = [await read_json_line(process) for process in processes]
        for process in processes:
            assert await asyncio.wait_for(process.wait(), SUBPROCESS_TIMEOUT_S) == 0
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [report["bad"] for report in second] == [[], [], []]
    charged: dict[str, int] = collections.Counter()
    opened: dict[str, int] = collections.Counter()
    for report in second:
        charged.update(report["charged"])
        opened.update(report["opened"])
    async with L.Ledger(pool) as led:
        for user_id in users:
            expected = L.Balances(available=1000 - charged[user_id] - opened[user_id], held=opened[user_id], owed=0)
            assert await led.balances(user_id) == expected, user_id
        await assert_audit_ok(led)
    assert await pool.fetchval("SELECT count(*) FROM ledger_balances WHERE available < 0 OR held < 0") == 0
    revenue = await pool.fetchval(
        "SELECT coalesce(sum(p.amount), 0) FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id "
        "WHERE a.code = 'system:revenue'"
    )
    assert revenue == sum(charged.values())
    assert await pool.fetchval("SELECT count(*) FROM ledger_holds WHERE status = 'open'") == sum(
        amount // 7 for amount in opened.values()
    )


# --- crashes between steps and partial batches --------------------------------------------------------------


async def ledger_snapshot(pool: asyncpg.Pool) -> tuple[int, ...]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM ledger_transactions), (SELECT count(*) FROM ledger_postings),"
        " (SELECT count(*) FROM ledger_holds), (SELECT count(*) FROM ledger_lots),"
        " (SELECT coalesce(sum(remaining), 0) FROM ledger_lots)"
    )
    assert row is not None
    return tuple(row)


async def test_a_connection_lost_mid_transaction_writes_nothing(
    led: L.Ledger, pool: asyncpg.Pool, database_url: str
) -> None:
    await credit(led, "u1", 370)
    before = await ledger_snapshot(pool)
    hold = L.Hold(key="crash-hold", user_id="u1", actor=ACTOR, amount=100, expires_at=soon())
    connection = await asyncpg.connect(database_url)
    transaction = connection.transaction()
    await transaction.start()
    (outcome,) = await led.execute_in(connection, [hold])
    assert isinstance(outcome, L.Result)
    assert (outcome.available, outcome.held) == (270, 100)
    connection.terminate()  # the process dies before COMMIT
    # The user's row lock goes with the dead session: the next operation on u1 does not hang.
    retried = await asyncio.wait_for(led.submit(hold), 30)
    assert not retried.replayed
    assert (retried.available, retried.held) == (270, 100)
    await led.submit(L.Void(key="crash-void", user_id="u1", actor=ACTOR, hold_id=retried.hold_id or 0))
    assert await led.balances("u1") == L.Balances(available=370, held=0, owed=0)
    after = await ledger_snapshot(pool)
    assert after[0] == before[0] + 2  # only the retried hold and its void
    await assert_audit_ok(led)


async def test_a_crash_between_hold_and_capture_leaves_the_hold_open(
    led: L.Ledger, pool: asyncpg.Pool, database_url: str
) -> None:
    await credit(led, "u1", 370)
    hold = await led.submit(L.Hold(key="h", user_id="u1", actor=ACTOR, amount=40, expires_at=soon()))
    assert hold.hold_id is not None
    before = await ledger_snapshot(pool)
    connection = await asyncpg.connect(database_url)
    transaction = connection.transaction()
    await transaction.start()
    (captured,) = await led.execute_in(
        connection, [L.Capture(key="c", user_id="u1", actor=ACTOR, hold_id=hold.hold_id, amount=30)]
    )
    assert isinstance(captured, L.Result)
    connection.terminate()
    assert await ledger_snapshot(pool) == before
    assert await pool.fetchval("SELECT status FROM ledger_holds WHERE id = $1", hold.hold_id) == "open"
    assert await led.balances("u1") == L.Balances(available=330, held=40, owed=0)
    await assert_audit_ok(led)
    # The sweeper or the dispatcher can finish the flow: the capture, retried with the same key, runs once.
    done = await led.submit(L.Capture(key="c", user_id="u1", actor=ACTOR, hold_id=hold.hold_id, amount=30))
    assert not done.replayed
    assert await led.balances("u1") == L.Balances(available=340, held=0, owed=0)
    await assert_audit_ok(led)


async def test_an_exception_inside_the_callers_transaction_writes_nothing(led: L.Ledger, pool: asyncpg.Pool) -> None:
    await credit(led, "u1", 370)
    before = await ledger_snapshot(pool)

    class GenerationInsertFailed(Exception):
        pass

    async def generation_transaction() -> None:
        async with pool.acquire() as connection, connection.transaction():
            outcomes = await led.execute_in(
                connection,
                [
                    L.Credit(key="c2", user_id="u1", actor=ACTOR, amount=30, kind="grant", category="promotional"),
                    L.Hold(key="h", user_id="u1", actor=ACTOR, amount=100, expires_at=soon()),
                    L.Credit(key="new-user", user_id="u9", actor=ACTOR, amount=5, kind="grant", category="promotional"),
                ],
            )
            assert all(isinstance(outcome, L.Result) for outcome in outcomes)
            raise GenerationInsertFailed

    with pytest.raises(GenerationInsertFailed):
        await generation_transaction()
    assert await ledger_snapshot(pool) == before
    assert await led.balances("u1") == L.Balances(available=370, held=0, owed=0)
    assert await pool.fetchval("SELECT count(*) FROM ledger_balances WHERE user_id = 'u9'") == 0
    await assert_audit_ok(led)


async def test_one_refused_operation_does_not_stop_the_others_in_the_same_call(
    led: L.Ledger, pool: asyncpg.Pool
) -> None:
    await credit(led, "u1", 370)
    expires_at = soon()
    operations: list[L.AnyOperation] = [
        L.Hold(key="a", user_id="u1", actor=ACTOR, amount=300, expires_at=expires_at),
        L.Hold(key="b", user_id="u1", actor=ACTOR, amount=100, expires_at=expires_at),
        L.Hold(key="c", user_id="u1", actor=ACTOR, amount=50, expires_at=expires_at),
        L.Capture(key="d", user_id="u1", actor=ACTOR, hold_id=987_654),
        L.Hold(key="e", user_id="u1", actor=ACTOR, amount=0, expires_at=expires_at),
        L.Hold(key="a", user_id="u1", actor=ACTOR, amount=301, expires_at=expires_at),
        L.Hold(key="a", user_id="u1", actor=ACTOR, amount=300, expires_at=expires_at),
        L.Hold(key="f", user_id="u2", actor=ACTOR, amount=1, expires_at=expires_at),
    ]
    async with pool.acquire() as connection, connection.transaction():
        outcomes = await led.execute_in(connection, operations)
    first, insufficient, third, not_found, invalid, conflict, replay, empty_user = outcomes
    assert isinstance(first, L.Result)
    assert (first.available, first.held) == (70, 300)
    assert isinstance(insufficient, L.InsufficientMoments)
    assert (insufficient.required, insufficient.available) == (100, 70)
    assert isinstance(third, L.Result)
    assert (third.available, third.held) == (20, 350)
    assert isinstance(not_found, L.HoldNotFound)
    assert isinstance(invalid, L.InvalidOperation)
    assert isinstance(conflict, L.IdempotencyConflict)
    assert isinstance(replay, L.Result)
    assert replay.replayed
    assert without_replayed(replay) == first
    assert isinstance(empty_user, L.InsufficientMoments)
    assert await led.balances("u1") == L.Balances(available=20, held=350, owed=0)
    assert await count_rows(pool, "ledger_holds") == 2
    keys = await pool.fetch("SELECT idempotency_key FROM ledger_transactions ORDER BY id")
    assert [row["idempotency_key"] for row in keys] == ["credit-u1", "a", "c"]
    # The refused operations did not claim their keys: retried later with more moments, they run.
    await credit(led, "u1", 200, key="top-up")
    retried = await led.submit(operations[1])
    assert (retried.available, retried.held, retried.replayed) == (120, 450, False)
    await assert_audit_ok(led)


async def test_closing_the_ledger_answers_the_batch_in_flight(pool: asyncpg.Pool) -> None:
    """A batch still waiting on the database when the ledger shuts down is answered with LedgerUnavailable
    (retry with the same key), never left waiting, and writes nothing."""
    led = L.Ledger(pool)
    await led.start()
    await credit(led, "u1", 100)
    transactions = await count_rows(pool, "ledger_transactions")
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM ledger_balances WHERE user_id = 'u1' FOR UPDATE")
        pending = asyncio.create_task(
            led.submit(L.Hold(key="in-flight", user_id="u1", actor=ACTOR, amount=10, expires_at=soon()))
        )
        await asyncio.sleep(0.3)
        assert not pending.done(), "the batch waits on the row lock"
        await asyncio.wait_for(led.close(), timeout=10)
        with pytest.raises(L.LedgerUnavailable, match="shutting down"):
            await asyncio.wait_for(pending, timeout=5)
    assert await count_rows(pool, "ledger_transactions") == transactions
