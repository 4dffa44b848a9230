"""The sealer: a background task of every `moments serve` process that chains ledger transactions in
commit order and writes signed checkpoints (docs/seal.md).

One round is one database transaction: lock the seal's state row (`FOR UPDATE SKIP LOCKED`: if another
process holds it, that process is sealing and this one skips the round), read the next transactions in
commit order (ledger/feed.py: never one that commits late with a lower id), append their hashes to the
chain, and, once `checkpoint_transactions` are chained since the last checkpoint or
`checkpoint_interval_s` has passed, sign a checkpoint of them. The chain cannot fork: every round
continues from the state it locked, and the position is a primary key. The sealer only reads the ledger
and writes its own tables, so a ledger commit never waits for it; a round that fails leaves nothing and
the next one starts again from the same state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

import ledger
from entitlements.seal import queries
from entitlements.seal.offline import (
    FORMAT_VERSION,
    GENESIS,
    Checkpoint,
    canonical_bytes,
    chain_next,
    leaf_hash,
    merkle_root,
    sign,
)
from entitlements.seal.records import transactions_after
from entitlements.seal.signing import SigningKey
from entitlements.settings import SealSettings

log = structlog.get_logger("moments.seal")
# After a failed round (the database away, a statement timeout), wait this long before the next.
RETRY_PAUSE_S = 1.0


@dataclass(frozen=True, kw_only=True)
class Round:
    """What one round did: transactions chained, the checkpoint written (if any), and whether more were
    waiting (the next round then starts at once). `skipped`: another process holds the state."""

    sealed: int = 0
    checkpoint: int | None = None
    more: bool = False
    skipped: bool = False


class Sealer:
    def __init__(self, pool: asyncpg.Pool, settings: SealSettings, key: SigningKey) -> None:
        self.pool = pool
        self.settings = settings
        self.key = key

    async def run(self) -> None:
        log.info("seal_started", key_id=self.key.key_id)
        while True:
            try:
                done = await self.seal_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("seal_round_failed", error=repr(error))
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if not done.more:
                await asyncio.sleep(self.settings.poll_interval_s)

    async def seal_once(self) -> Round:
        async with self.pool.acquire() as connection, connection.transaction():
            state = await connection.fetchrow(queries.LOCK_STATE)
            if state is None:
                return Round(skipped=True)
            position, head = state["sealed_position"], bytes(state["head"])
            pending = position - state["checkpointed_position"]
            room = self.settings.checkpoint_transactions - pending
            after = ledger.CommitPosition(xid=int(state["sealed_xid"]), transaction_id=state["sealed_transaction_id"])
            rows = await transactions_after(connection, after, room) if room > 0 else []
            if rows:
                positions, ids, xids, leaves, chain = [], [], [], [], []
                for commit, transaction in rows:
                    canonical = canonical_bytes(transaction)
                    head = chain_next(head, canonical)
                    position += 1
                    positions.append(position)
                    ids.append(commit.transaction_id)
                    xids.append(str(commit.xid))
                    leaves.append(leaf_hash(canonical))
                    chain.append(head)
                await connection.execute(queries.INSERT_CHAIN, positions, ids, xids, leaves, chain)
                last = rows[-1][0]
                await connection.execute(queries.SEALED, position, str(last.xid), last.transaction_id, head)
            pending += len(rows)
            number = None
            if pending > 0 and self._checkpoint_due(pending, state["checkpointed_at"], state["now"]):
                number = await self._checkpoint(connection, state, position, head, state["now"])
        if number is not None:
            # Debug: at the peak write rate that is several a second; /metrics shows the progress.
            log.debug("seal_checkpoint", checkpoint=number, position=position)
        return Round(sealed=len(rows), checkpoint=number, more=0 < room == len(rows))

    def _checkpoint_due(self, pending: int, checkpointed_at: datetime | None, now: datetime) -> bool:
        if pending >= self.settings.checkpoint_transactions or checkpointed_at is None:
            return True
        return (now - checkpointed_at).total_seconds() >= self.settings.checkpoint_interval_s

    async def _checkpoint(
        self, connection: ledger.Connection, state: asyncpg.Record, last_position: int, head: bytes, now: datetime
    ) -> int:
        first_position = state["checkpointed_position"] + 1
        stored = await connection.fetch(queries.CHAIN_BETWEEN, first_position, last_position)
        assert len(stored) == last_position - first_position + 1, "the chain has a row for every position"
        previous = await connection.fetchrow(queries.LAST_CHECKPOINT)
        checkpoint = Checkpoint(
            number=state["checkpoint_number"] + 1,
            first_position=first_position,
            last_position=last_position,
            first_transaction_id=stored[0]["transaction_id"],
            last_transaction_id=stored[-1]["transaction_id"],
            previous_head=bytes(previous["head"]) if previous is not None else GENESIS,
            head=head,
            merkle_root=merkle_root([bytes(row["leaf_hash"]) for row in stored]),
            created_at=now,
            key_id=self.key.key_id,
        )
        assert previous is None or previous["last_position"] == first_position - 1, "checkpoints are consecutive"
        await connection.execute(
            queries.INSERT_CHECKPOINT,
            checkpoint.number,
            FORMAT_VERSION,
            checkpoint.first_position,
            checkpoint.last_position,
            checkpoint.first_transaction_id,
            checkpoint.last_transaction_id,
            checkpoint.previous_head,
            checkpoint.head,
            checkpoint.merkle_root,
            checkpoint.created_at,
            checkpoint.key_id,
            sign(self.key.private_key, checkpoint),
        )
        await connection.execute(queries.CHECKPOINTED, checkpoint.number, last_position, now)
        return checkpoint.number
