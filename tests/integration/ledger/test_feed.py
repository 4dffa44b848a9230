"""The ledger in commit order: a transaction that commits late with a lower id is neither missed nor
seen twice by a reader that pages from where it left off."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

import ledger as L


def _credit(key: str, user_id: str = "u1") -> L.Credit:
    return L.Credit(key=key, user_id=user_id, actor="test", amount=5, kind="purchase", category="paid")


async def _read_all(led: L.Ledger, after: L.CommitPosition, limit: int) -> tuple[list[int], L.CommitPosition]:
    seen: list[int] = []
    while True:
        items, after_next = await led.feed(after, limit=limit)
        seen += [item.transaction_id for item in items]
        if after_next == after:
            return seen, after
        after = after_next


async def test_a_late_commit_with_a_lower_id_is_read_once_after_it_commits(pool: asyncpg.Pool) -> None:
    async with L.Ledger(pool) as led:
        await led.submit(_credit("before"))
        seen, position = await _read_all(led, L.START, limit=2)
        assert len(seen) == 1

        late = await pool.acquire()
        try:
            transaction = late.transaction()
            await transaction.start()
            (written,) = await led.execute_in(late, [_credit("late")])
            assert isinstance(written, L.Result)
            for n in range(5):
                await led.submit(_credit(f"after-{n}", user_id=f"u{n + 2}"))
            newer, position = await _read_all(led, position, limit=2)
            # Later transactions committed, but the open one holds the horizon: nothing is handed out that
            # would make a reader step past it.
            assert newer == []
            ids_by_id = sorted(await pool.fetchval("SELECT array_agg(id) FROM ledger_transactions"))
            assert written.transaction_id < max(ids_by_id)
            await transaction.commit()
        finally:
            await pool.release(late)

        newer, position = await _read_all(led, position, limit=2)
        assert newer[0] == written.transaction_id  # its writer's xid is the lowest of those waiting
        assert sorted(seen + newer) == sorted(await pool.fetchval("SELECT array_agg(id) FROM ledger_transactions"))
        assert len(set(seen + newer)) == len(seen + newer)
        again, _ = await _read_all(led, position, limit=2)
        assert again == []


async def test_a_rolled_back_transaction_leaves_no_hole_and_no_wait(pool: asyncpg.Pool) -> None:
    async with L.Ledger(pool) as led:
        connection = await pool.acquire()
        try:
            transaction = connection.transaction()
            await transaction.start()
            await led.execute_in(connection, [_credit("gone")])
            await led.submit(_credit("kept", user_id="u2"))
            assert (await _read_all(led, L.START, limit=10))[0] == []
            await transaction.rollback()
        finally:
            await pool.release(connection)
        seen, _ = await _read_all(led, L.START, limit=10)
        assert len(seen) == 1


async def test_readers_polling_during_concurrent_writes_see_every_transaction_exactly_once(
    pool: asyncpg.Pool,
) -> None:
    writers, per_writer = 6, 15
    rng = random.Random(7)
    async with L.Ledger(pool) as led:

        async def write(w: int) -> None:
            for n in range(per_writer):
                async with pool.acquire() as connection, connection.transaction():
                    await led.execute_in(connection, [_credit(f"w{w}-{n}", user_id=f"u{w}")])
                    # Commit after a random pause, so ids and commit order disagree.
                    await asyncio.sleep(rng.random() * 0.01)

        done = asyncio.Event()

        async def read() -> list[int]:
            seen: list[int] = []
            position = L.START
            while True:
                finished = done.is_set()
                items, position = await led.feed(position, limit=rng.randint(1, 7))
                seen += [item.transaction_id for item in items]
                if finished and not items:
                    return seen
                await asyncio.sleep(0)

        readers = [asyncio.create_task(read()) for _ in range(3)]
        await asyncio.gather(*(write(w) for w in range(writers)))
        done.set()
        everything = sorted(await pool.fetchval("SELECT array_agg(id) FROM ledger_transactions"))
        assert len(everything) == writers * per_writer
        for seen in await asyncio.gather(*readers):
            assert len(seen) == len(set(seen))
            assert sorted(seen) == everything


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64!",
        L.encode_cursor("t1", "5"),
        L.encode_cursor("c1", "-1", "2"),
        L.encode_cursor("c1", "1", "9" * 20),
        L.encode_cursor("c1", str(1 << 64), "1"),
        L.encode_cursor("c1", "1"),
    ],
)
def test_a_forged_feed_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(L.InvalidCursor):
        L.decode_position(cursor)


def test_a_feed_cursor_round_trips() -> None:
    position = L.CommitPosition(xid=(1 << 64) - 1, transaction_id=(1 << 63) - 1)
    assert L.decode_position(L.encode_position(position)) == position
    assert L.decode_position(None) == L.START
