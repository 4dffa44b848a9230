"""The sealer against real PostgreSQL: it chains every committed transaction once, in commit order,
writes consecutive signed checkpoints, never forks under concurrent sealers, and refuses to seal without
a key; an untouched ledger verifies."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

import asyncpg
import pytest

import ledger as L
from entitlements import seal
from entitlements.seal.offline import GENESIS, canonical_bytes, chain_next
from entitlements.seal.records import transactions_after
from tests.support.seal import activity, new_key, seal_everything, seal_settings


@pytest.fixture
def key(tmp_path: Path) -> seal.SigningKey:
    return new_key(tmp_path)


async def _verify(pool: asyncpg.Pool, key: seal.SigningKey) -> seal.Verification:
    async with pool.acquire() as connection:
        return await seal.verify(connection, {key.key_id: key.public_key})


async def test_every_transaction_is_chained_once_in_commit_order_with_consecutive_checkpoints(
    pool: asyncpg.Pool, key: seal.SigningKey
) -> None:
    async with L.Ledger(pool) as led:
        ids = await activity(led, users=3)
    sealer = seal.Sealer(pool, seal_settings(checkpoint_transactions=4), key)
    await seal_everything(sealer)

    chain = await pool.fetch("SELECT position, transaction_id, chain_hash FROM ledger_seal_chain ORDER BY position")
    assert [row["position"] for row in chain] == list(range(1, len(ids) + 1))
    async with pool.acquire() as connection:
        in_order = await transactions_after(connection, L.START, 1000)
    assert [row["transaction_id"] for row in chain] == [commit.transaction_id for commit, _ in in_order]
    head = GENESIS
    for (_, transaction), row in zip(in_order, chain, strict=True):
        head = chain_next(head, canonical_bytes(transaction))
        assert bytes(row["chain_hash"]) == head

    checkpoints = await pool.fetch("SELECT * FROM ledger_seal_checkpoints ORDER BY number")
    # 15 transactions, 4 per checkpoint; the last 3 wait for the interval (an hour here).
    assert [(c["first_position"], c["last_position"]) for c in checkpoints] == [(1, 4), (5, 8), (9, 12)]
    assert bytes(checkpoints[0]["previous_head"]) == GENESIS
    for before, after in itertools.pairwise(checkpoints):
        assert bytes(after["previous_head"]) == bytes(before["head"])
    state = await pool.fetchrow("SELECT * FROM ledger_seal_state")
    assert state["sealed_position"] == len(ids)
    assert bytes(state["head"]) == head
    assert await seal.seal_head(pool) == head.hex()

    result = await _verify(pool, key)
    assert result.ok, result.difference
    assert (result.first_position, result.last_position, result.checkpoints) == (1, len(ids), 3)


async def test_a_checkpoint_is_written_once_the_interval_has_passed(pool: asyncpg.Pool, key: seal.SigningKey) -> None:
    async with L.Ledger(pool) as led:
        await activity(led, users=1)
    sealer = seal.Sealer(pool, seal_settings(checkpoint_transactions=100, checkpoint_interval_s=3600), key)
    first = await sealer.seal_once()
    # The first checkpoint is due at once (none before it); the next waits for the interval.
    assert (first.sealed, first.checkpoint) == (5, 1)
    async with L.Ledger(pool) as led:
        await activity(led, users=1, prefix="later")
    second = await sealer.seal_once()
    assert (second.sealed, second.checkpoint) == (5, None)
    await pool.execute("UPDATE ledger_seal_state SET checkpointed_at = checkpointed_at - interval '2 hours'")
    third = await sealer.seal_once()
    assert (third.sealed, third.checkpoint) == (0, 2)
    assert (await _verify(pool, key)).ok


async def test_an_empty_ledger_verifies_and_has_no_head(pool: asyncpg.Pool, key: seal.SigningKey) -> None:
    done = await seal.Sealer(pool, seal_settings(), key).seal_once()
    assert (done.sealed, done.checkpoint) == (0, None)
    assert await seal.seal_head(pool) is None
    result = await _verify(pool, key)
    assert result.ok
    assert result.transactions == 0


async def test_two_sealers_at_once_never_fork_the_chain(
    pool: asyncpg.Pool, database_url: str, key: seal.SigningKey, tmp_path: Path
) -> None:
    """Sealers in several "processes" (own pools, one with another key) race while the ledger is written;
    one seals at a time, each round continues from the state it locked, so one chain results."""
    other_key = new_key(tmp_path, "other.pem")
    settings = seal_settings(checkpoint_transactions=3, checkpoint_interval_s=0.05)
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=2) for _ in range(3)]
    sealers = [seal.Sealer(p, settings, k) for p, k in zip(pools, [key, key, other_key], strict=True)]
    skipped = 0
    try:
        async with L.Ledger(pool) as led:
            writing = asyncio.create_task(activity(led, users=6))
            while not writing.done():
                rounds = await asyncio.gather(*(sealer.seal_once() for sealer in sealers))
                skipped += sum(r.skipped for r in rounds)
            await writing
        for sealer in sealers:
            await seal_everything(sealer)
    finally:
        for p in pools:
            await p.close()
    assert skipped > 0, "the sealers did contend for the state row"
    total = await pool.fetchval("SELECT count(*) FROM ledger_transactions")
    positions = await pool.fetchval("SELECT array_agg(position ORDER BY position) FROM ledger_seal_chain")
    assert positions == list(range(1, total + 1))
    assert await pool.fetchval("SELECT count(DISTINCT transaction_id) FROM ledger_seal_chain") == total
    async with pool.acquire() as connection:
        result = await seal.verify(connection, {key.key_id: key.public_key, other_key.key_id: other_key.public_key})
    assert result.ok, result.difference
    assert result.last_position == total


async def test_a_late_commit_with_a_lower_id_is_sealed_not_skipped(pool: asyncpg.Pool, key: seal.SigningKey) -> None:
    sealer = seal.Sealer(pool, seal_settings(), key)
    async with L.Ledger(pool) as led:
        late = await pool.acquire()
        try:
            transaction = late.transaction()
            await transaction.start()
            (written,) = await led.execute_in(
                late, [L.Credit(key="late", user_id="late", actor="t", amount=5, kind="grant", category="promotional")]
            )
            await activity(led, users=1)
            await seal_everything(sealer)
            # The open transaction holds the horizon: nothing after it is sealed yet, so nothing is skipped.
            assert await pool.fetchval("SELECT count(*) FROM ledger_seal_chain") == 0
            await transaction.commit()
        finally:
            await pool.release(late)
    await seal_everything(sealer)
    assert isinstance(written, L.Result)
    sealed = await pool.fetchval("SELECT array_agg(transaction_id ORDER BY position) FROM ledger_seal_chain")
    assert sealed[0] == written.transaction_id
    assert len(sealed) == 6
    assert (await _verify(pool, key)).ok


async def test_without_a_key_the_service_does_not_seal_and_says_why(tmp_path: Path) -> None:
    signer = seal.signer_for(seal_settings())
    assert not signer.sealing
    assert signer.problem is not None
    assert "SEAL_KEY_FILE" in signer.problem
    unreadable = seal.signer_for(seal_settings(key_file=tmp_path / "missing.pem"))
    assert not unreadable.sealing
    assert unreadable.problem is not None
    assert "cannot be read" in unreadable.problem
    (tmp_path / "not-a-key.pem").write_text("hello")
    garbage = seal.signer_for(seal_settings(key_file=tmp_path / "not-a-key.pem"))
    assert not garbage.sealing
    assert "not an unencrypted PEM private key" in (garbage.problem or "")
    made = new_key(tmp_path)
    from_env = seal.signer_for(seal_settings(key_pem=(tmp_path / "seal-key.pem").read_text()))
    assert from_env.sealing
    assert from_env.key is not None
    assert from_env.key.key_id == made.key_id
    assert "PRIVATE" not in repr(from_env)
    assert "private_key" not in repr(from_env.key)
    disabled = seal.signer_for(dataclasses.replace(seal_settings(key_file=tmp_path / "seal-key.pem"), enabled=False))
    assert not disabled.sealing
    assert disabled.public_keys == {made.key_id: made.public_key}


async def test_bounded_verification_walks_the_whole_ledger_in_windows(pool: asyncpg.Pool, key: seal.SigningKey) -> None:
    async with L.Ledger(pool) as led:
        total = len(await activity(led, users=3))
    settings = seal_settings(checkpoint_transactions=4, verify_transactions_max=8)
    await seal_everything(seal.Sealer(pool, settings, key))
    signer = seal.Signer(key=key, problem=None, enabled=True, public_keys={key.key_id: key.public_key})
    latest = await seal.verify_window(pool, settings, signer, checkpoint=None)
    # The most recent checkpoints of at most 8 transactions (2 and 3), and the 3 chained after them.
    assert (latest.ok, latest.complete, latest.first_position, latest.last_position) == (True, True, 5, total)
    windows, checkpoint = [], 1
    while True:
        window = await seal.verify_window(pool, settings, signer, checkpoint=checkpoint)
        assert window.ok
        windows.append((window.first_position, window.last_position))
        if window.complete:
            break
        assert window.next_checkpoint is not None
        checkpoint = window.next_checkpoint
    assert windows == [(1, 8), (9, total)]
