"""Tampering as a database superuser would do it (triggers off: `session_replication_role = replica`),
each change detected by `verify` with the first transaction that differs named; an untouched ledger
verifies. The same changes, seen offline from an export, are in test_offline.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import ledger as L
from entitlements import seal
from entitlements.seal.offline import Checkpoint, sign
from tests.support.seal import activity, new_key, seal_everything, seal_settings


class Sealed:
    def __init__(self, pool: asyncpg.Pool, key: seal.SigningKey, ids: list[int]) -> None:
        self.pool, self.key, self.ids = pool, key, ids

    async def order(self) -> list[int]:
        """Transaction ids in chain order (commit order as sealed)."""
        return list(
            await self.pool.fetchval("SELECT array_agg(transaction_id ORDER BY position) FROM ledger_seal_chain")
        )

    async def as_superuser(self, *statements: str, args: tuple[object, ...] = ()) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            for statement in statements:
                await connection.execute(statement, *args) if args else await connection.execute(statement)

    async def verify(self, **keys: seal.SigningKey) -> seal.Verification:
        public = {k.key_id: k.public_key for k in (self.key, *keys.values())}
        async with self.pool.acquire() as connection:
            return await seal.verify(connection, public)


@pytest.fixture
async def sealed(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Sealed]:
    key = new_key(tmp_path)
    async with L.Ledger(pool) as led:
        ids = await activity(led, users=3)
    await seal_everything(seal.Sealer(pool, seal_settings(checkpoint_transactions=4), key))
    state = Sealed(pool, key, ids)
    assert (await state.verify()).ok
    return state


def _named(result: seal.Verification, problem: str, transaction_id: int) -> None:
    assert not result.ok
    assert result.difference is not None
    assert (result.difference.problem, result.difference.transaction_id) == (problem, transaction_id), result.difference
    assert str(transaction_id) in result.difference.detail


async def test_an_untouched_ledger_verifies(sealed: Sealed) -> None:
    result = await sealed.verify()
    assert result.ok
    assert result.complete
    assert result.transactions == len(sealed.ids)


async def test_changing_one_postings_amount_is_named(sealed: Sealed) -> None:
    victim = (await sealed.order())[5]
    # Both legs, so that the transaction still balances and the audit alone would not notice.
    await sealed.as_superuser(
        f"UPDATE ledger_postings SET amount = amount * 2 WHERE transaction_id = {victim}",
    )
    _named(await sealed.verify(), "changed", victim)


async def test_changing_a_transactions_reason_is_named(sealed: Sealed) -> None:
    victim = (await sealed.order())[0]
    await sealed.as_superuser(f"UPDATE ledger_transactions SET reason = 'nothing to see' WHERE id = {victim}")
    _named(await sealed.verify(), "changed", victim)


async def test_deleting_a_transaction_is_named(sealed: Sealed) -> None:
    victim = (await sealed.order())[6]
    await sealed.as_superuser(
        f"DELETE FROM ledger_postings WHERE transaction_id = {victim}",
        f"DELETE FROM ledger_transactions WHERE id = {victim}",
    )
    _named(await sealed.verify(), "deleted", victim)


async def test_deleting_the_last_sealed_transaction_is_named(sealed: Sealed) -> None:
    victim = (await sealed.order())[-1]
    await sealed.as_superuser(f"DELETE FROM ledger_transactions WHERE id = {victim}")
    _named(await sealed.verify(), "deleted", victim)


async def test_inserting_a_transaction_into_the_sealed_past_is_named(sealed: Sealed) -> None:
    order = await sealed.order()
    # Written as if by the database transaction of an early one: it falls among sealed transactions.
    await sealed.as_superuser(
        """
        INSERT INTO ledger_transactions (id, kind, idempotency_key, request_hash, user_id, actor, reason, result,
                                         created_at, written_by_xid)
        SELECT 900000, 'grant', 'forged', request_hash, user_id, actor, 'forged', result, created_at, written_by_xid
        FROM ledger_transactions WHERE id = $1
        """,
        args=(order[2],),
    )
    _named(await sealed.verify(), "inserted", 900000)


async def test_swapping_two_transactions_is_named(sealed: Sealed) -> None:
    order = await sealed.order()
    first, second = order[1], order[2]
    # Each takes the other's place in commit order (its writer's xid and id), content kept.
    await sealed.as_superuser(
        f"UPDATE ledger_postings SET transaction_id = -1 WHERE transaction_id = {first}",
        f"UPDATE ledger_transactions SET id = -1 WHERE id = {first}",
        f"UPDATE ledger_postings SET transaction_id = {first} WHERE transaction_id = {second}",
        f"UPDATE ledger_transactions SET id = {first} WHERE id = {second}",
        f"UPDATE ledger_postings SET transaction_id = {second} WHERE transaction_id = -1",
        f"UPDATE ledger_transactions SET id = {second} WHERE id = -1",
    )
    result = await sealed.verify()
    assert result.difference is not None
    assert (result.difference.position, result.difference.transaction_id) == (2, first), result.difference


async def test_reordering_two_transactions_commit_positions_is_named(sealed: Sealed) -> None:
    order = await sealed.order()
    first, last = order[0], order[-1]
    await sealed.as_superuser(
        f"""UPDATE ledger_transactions t SET written_by_xid = o.written_by_xid
            FROM ledger_transactions o
            WHERE (t.id, o.id) IN (({first}, {last}), ({last}, {first}))""",
    )
    _named(await sealed.verify(), "reordered", first)


async def test_rewriting_a_transaction_and_its_stored_hashes_is_caught_by_the_signed_checkpoint(sealed: Sealed) -> None:
    """The thorough forger: changes a transaction, then recomputes its chain rows so every stored hash
    matches. The signed head and root of its checkpoint do not."""
    order = await sealed.order()
    victim = order[1]
    await sealed.as_superuser(f"UPDATE ledger_transactions SET actor = 'someone else' WHERE id = {victim}")
    from entitlements.seal.offline import GENESIS, canonical_bytes, chain_next, leaf_hash
    from entitlements.seal.records import transactions_after

    async with sealed.pool.acquire() as connection:
        rows = await transactions_after(connection, L.START, 1000)
    head = GENESIS
    statements = []
    for position, (_, transaction) in enumerate(rows, start=1):
        canonical = canonical_bytes(transaction)
        head = chain_next(head, canonical)
        statements.append(
            f"UPDATE ledger_seal_chain SET leaf_hash = '\\x{leaf_hash(canonical).hex()}', "
            f"chain_hash = '\\x{head.hex()}' WHERE position = {position}"
        )
    statements.append(f"UPDATE ledger_seal_state SET head = '\\x{head.hex()}'")
    await sealed.as_superuser(*statements)
    result = await sealed.verify()
    assert result.difference is not None
    assert result.difference.problem == "checkpoint_mismatch"
    assert result.difference.checkpoint == 1
    assert result.difference.transaction_id == order[0]


async def test_editing_a_checkpoint_is_named(sealed: Sealed) -> None:
    order = await sealed.order()
    await sealed.as_superuser("UPDATE ledger_seal_checkpoints SET last_transaction_id = 1 WHERE number = 2")
    result = await sealed.verify()
    assert result.difference is not None
    assert (result.difference.problem, result.difference.checkpoint) == ("bad_signature", 2)
    assert result.difference.transaction_id == order[4]


async def test_a_checkpoint_signed_with_another_key_is_named(sealed: Sealed, tmp_path: Path) -> None:
    """A forger with their own key re-signs checkpoint 2 (under the real key's id, or their own)."""
    forger = new_key(tmp_path, "forger.pem")
    order = await sealed.order()
    row = await sealed.pool.fetchrow("SELECT * FROM ledger_seal_checkpoints WHERE number = 2")
    fields = {
        name: row[name]
        for name in (
            "number",
            "first_position",
            "last_position",
            "first_transaction_id",
            "last_transaction_id",
            "created_at",
            "key_id",
        )
    }
    checkpoint = Checkpoint(
        **fields,
        previous_head=bytes(row["previous_head"]),
        head=bytes(row["head"]),
        merkle_root=bytes(row["merkle_root"]),
    )
    await sealed.as_superuser(
        "UPDATE ledger_seal_checkpoints SET signature = $1 WHERE number = 2",
        args=(sign(forger.private_key, checkpoint),),
    )
    result = await sealed.verify()
    assert result.difference is not None
    assert (result.difference.problem, result.difference.checkpoint, result.difference.transaction_id) == (
        "bad_signature",
        2,
        order[4],
    )
    own = Checkpoint(
        **(fields | {"key_id": forger.key_id}),
        previous_head=checkpoint.previous_head,
        head=checkpoint.head,
        merkle_root=checkpoint.merkle_root,
    )
    await sealed.as_superuser(
        "UPDATE ledger_seal_checkpoints SET key_id = $1, signature = $2 WHERE number = 2",
        args=(forger.key_id, sign(forger.private_key, own)),
    )
    result = await sealed.verify()
    assert result.difference is not None
    assert result.difference.problem == "unknown_key"
    # Given the forger's key as if it were a published one, it verifies: trust is in the keys given.
    assert (await sealed.verify(forger=forger)).ok


async def test_removing_a_checkpoint_in_the_middle_is_named(sealed: Sealed) -> None:
    await sealed.as_superuser("DELETE FROM ledger_seal_checkpoints WHERE number = 2")
    result = await sealed.verify()
    assert result.difference is not None
    assert result.difference.problem == "checkpoint_gap"
    assert result.difference.checkpoint == 3


async def test_removing_the_seals_state_is_named(sealed: Sealed) -> None:
    await sealed.as_superuser("DELETE FROM ledger_seal_state")
    result = await sealed.verify()
    assert result.difference is not None
    assert result.difference.problem == "state_missing"
