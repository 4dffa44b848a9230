"""The ledger's async API: operations (batched or inside a caller's transaction), reads and audit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec

from ledger.audit import AuditReport, ExtraCheck, audit
from ledger.batcher import Batcher, BatchSettings
from ledger.companions import Companion
from ledger.cursors import decode_id_cursor, encode_id_cursor
from ledger.engine import Connection, Engine, Outcome
from ledger.feed import COMMITTED_AFTER, CommitPosition
from ledger.operations import AnyOperation, ExpireLots, Result
from ledger.rules import LedgerRuleError, Lot, spending_order_key

PAGE_SIZE_MAX = 1000
T = TypeVar("T")
SWEEP_BATCH_MAX = 500


class Balances(msgspec.Struct, frozen=True, kw_only=True):
    available: int
    held: int
    owed: int


class HistoryItem(msgspec.Struct, frozen=True, kw_only=True):
    transaction_id: int
    kind: str
    delta_available: int
    delta_held: int
    delta_owed: int
    reference: str | None
    reason: str | None
    actor: str
    created_at: datetime


class Posting(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    amount: int


class TransactionItem(msgspec.Struct, frozen=True, kw_only=True):
    transaction_id: int
    kind: str
    user_id: str
    postings: list[Posting]
    reference: str | None
    reverses_transaction_id: int | None
    actor: str
    reason: str | None
    created_at: datetime


class JournalItem(msgspec.Struct, frozen=True, kw_only=True):
    """A history item with the user's balances right after it: the journal's running balance."""

    transaction_id: int
    kind: str
    delta_available: int
    delta_held: int
    delta_owed: int
    available_after: int
    held_after: int
    owed_after: int
    reference: str | None
    reason: str | None
    actor: str
    created_at: datetime


class LotItem(msgspec.Struct, frozen=True, kw_only=True):
    lot_id: int
    category: str
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime
    source_transaction_id: int
    # Past its expiry but not yet expired (the next touch or sweep expires it): spendable no more.
    past_expiry: bool


class ShareItem(msgspec.Struct, frozen=True, kw_only=True):
    """What a hold drew from one lot, and what went back to it (voided) or was refunded."""

    lot_id: int
    category: str | None
    lot_expires_at: datetime | None
    drawn: int
    returned: int
    refunded: int


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    items: list[T]
    next_cursor: str | None


# History and transactions are paged by transaction id; each has its own scope, so neither's cursor
# is accepted by the other.
HISTORY_CURSOR = "h1"
TRANSACTIONS_CURSOR = "t1"
JOURNAL_CURSOR = "j1"
# A user's lots with something left, read at most this many (the oldest first) for their spending order.
LOTS_READ_MAX = 1000
USERS_FOUND_MAX = 20

# Each of a user's transactions with its effect on the user's three balances (the user is $1).
_USER_DELTAS = """
    SELECT t.id, t.kind, t.reference, t.reason, t.actor, t.created_at,
           coalesce(sum(p.amount) FILTER (WHERE p.account_id = b.available_account_id), 0)::bigint AS available,
           coalesce(sum(p.amount) FILTER (WHERE p.account_id = b.held_account_id), 0)::bigint AS held,
           (-coalesce(sum(p.amount) FILTER (WHERE p.account_id = b.debt_account_id), 0))::bigint AS owed
    FROM ledger_transactions t
    JOIN ledger_balances b ON b.user_id = t.user_id
    JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
    WHERE t.user_id = $1
    GROUP BY t.id, t.created_at
"""


def _delta_fields(row: asyncpg.Record) -> dict[str, Any]:
    """A row of `_USER_DELTAS` as the fields of a history (or journal) item."""
    return {
        "transaction_id": row["id"],
        "kind": row["kind"],
        "delta_available": row["available"],
        "delta_held": row["held"],
        "delta_owed": row["owed"],
        "reference": row["reference"],
        "reason": row["reason"],
        "actor": row["actor"],
        "created_at": row["created_at"],
    }


def _transaction_item(row: asyncpg.Record) -> TransactionItem:
    return TransactionItem(
        transaction_id=row["id"],
        kind=row["kind"],
        user_id=row["user_id"],
        postings=[
            Posting(account=account, amount=amount)
            for account, amount in zip(row["accounts"], row["amounts"], strict=True)
        ],
        reference=row["reference"],
        reverses_transaction_id=row["reverses_transaction_id"],
        actor=row["actor"],
        reason=row["reason"],
        created_at=row["created_at"],
    )


class Ledger:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_settings: BatchSettings | None = None,
        transaction_settings: Mapping[str, str] | None = None,
    ) -> None:
        """`transaction_settings`: SET LOCAL in every transaction that writes the ledger, for what the
        caller's triggers read there (the service's webhook threshold, its statement timeout)."""
        self.pool = pool
        self.engine = Engine(transaction_settings)
        self._batcher = Batcher(pool, self.engine, batch_settings)

    async def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()

    async def __aenter__(self) -> Ledger:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def submit(self, operation: AnyOperation) -> Result:
        """Runs one operation through group commit; raises its LedgerRuleError if refused."""
        outcome = await self._batcher.submit(operation)
        if isinstance(outcome, LedgerRuleError):
            raise outcome
        return outcome

    async def submit_companion(self, companion: Companion) -> Companion:
        """Runs another domain's batched writes with their operation in one group commit (companions.py);
        returns the companion settled, once its batch has committed."""
        return await self._batcher.submit_companion(companion)

    async def outcome(self, operation: AnyOperation) -> Outcome:
        """Like submit, but returns a refusal instead of raising it."""
        return await self._batcher.submit(operation)

    async def execute_in(
        self,
        connection: Connection,
        operations: Sequence[AnyOperation],
        *,
        now: datetime | None = None,
    ) -> list[Outcome]:
        """Runs operations inside the caller's open transaction (e.g. a hold beside a generation row)."""
        return await self.engine.execute(connection, operations, now=now)

    async def balances(self, user_id: str, *, connection: Connection | asyncpg.Pool | None = None) -> Balances:
        """A user's balances now; pass `connection` to read inside a transaction of the caller's."""
        reader = connection if connection is not None else self.pool
        row = await reader.fetchrow("SELECT available, held, owed FROM ledger_balances WHERE user_id = $1", user_id)
        if row is None:
            return Balances(available=0, held=0, owed=0)
        return Balances(available=row["available"], held=row["held"], owed=row["owed"])

    async def reference_of(self, key: str, *, connection: Connection | asyncpg.Pool | None = None) -> str | None:
        """The `reference` of the transaction written under idempotency key `key` (None if no transaction
        has that key, or it has no reference): who already did what an IdempotencyConflict refused.
        Pass `connection` to read inside a transaction of the caller's."""
        reader = connection if connection is not None else self.pool
        reference: str | None = await reader.fetchval(
            "SELECT t.reference FROM ledger_idempotency_keys k"
            " JOIN ledger_transactions t ON t.id = k.transaction_id AND t.created_at = k.created_at"
            " WHERE k.idempotency_key = $1",
            key,
        )
        return reference

    async def history(self, user_id: str, *, limit: int, cursor: str | None) -> Page[HistoryItem]:
        assert 1 <= limit <= PAGE_SIZE_MAX
        before = decode_id_cursor(cursor, HISTORY_CURSOR)
        rows = await self.pool.fetch(
            f"SELECT * FROM ({_USER_DELTAS}) AS d WHERE ($2::bigint IS NULL OR d.id < $2) ORDER BY d.id DESC LIMIT $3",
            user_id,
            before,
            limit + 1,
        )
        items = [HistoryItem(**_delta_fields(row)) for row in rows[:limit]]
        next_cursor = encode_id_cursor(HISTORY_CURSOR, items[-1].transaction_id) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    async def journal(
        self, user_id: str, *, limit: int, cursor: str | None, connection: Connection | asyncpg.Pool | None = None
    ) -> Page[JournalItem]:
        """The history with a running balance: each transaction with the user's balances right after it,
        summed from the postings themselves (so it also shows that the cached balance is their sum)."""
        assert 1 <= limit <= PAGE_SIZE_MAX
        before = decode_id_cursor(cursor, JOURNAL_CURSOR)
        rows = await (connection or self.pool).fetch(
            f"""
            SELECT * FROM (
                SELECT d.*, sum(d.available) OVER running AS available_after,
                       sum(d.held) OVER running AS held_after, sum(d.owed) OVER running AS owed_after
                FROM ({_USER_DELTAS}) AS d
                WINDOW running AS (ORDER BY d.id)
            ) AS journal
            WHERE ($2::bigint IS NULL OR id < $2)
            ORDER BY id DESC
            LIMIT $3
            """,
            user_id,
            before,
            limit + 1,
        )
        items = [
            JournalItem(
                **_delta_fields(row),
                available_after=int(row["available_after"]),
                held_after=int(row["held_after"]),
                owed_after=int(row["owed_after"]),
            )
            for row in rows[:limit]
        ]
        next_cursor = encode_id_cursor(JOURNAL_CURSOR, items[-1].transaction_id) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    async def lots(self, user_id: str, *, now: datetime) -> tuple[list[LotItem], bool]:
        """The user's lots with moments left, in the order holds spend them (`spending_order_key`), lots
        past their expiry last; and whether there were more than LOTS_READ_MAX to order."""
        rows = await self.pool.fetch(
            "SELECT id, category, amount, remaining, expires_at, created_at, source_transaction_id "
            "FROM ledger_lots WHERE user_id = $1 AND remaining > 0 ORDER BY id LIMIT $2",
            user_id,
            LOTS_READ_MAX + 1,
        )
        by_id = {row["id"]: row for row in rows[:LOTS_READ_MAX]}
        lots = [
            Lot(
                id=row["id"],
                category=row["category"],
                amount=row["amount"],
                remaining=row["remaining"],
                expires_at=row["expires_at"],
            )
            for row in by_id.values()
        ]
        lots.sort(key=lambda lot: (lot.is_expired(now), spending_order_key(lot)))
        items = [
            LotItem(
                lot_id=lot.id,
                category=lot.category,
                amount=lot.amount,
                remaining=lot.remaining,
                expires_at=lot.expires_at,
                created_at=by_id[lot.id]["created_at"],
                source_transaction_id=by_id[lot.id]["source_transaction_id"],
                past_expiry=lot.is_expired(now),
            )
            for lot in lots
        ]
        return items, len(rows) > LOTS_READ_MAX

    async def hold_shares(self, hold_ids: Sequence[int]) -> dict[int, list[ShareItem]]:
        """Each hold's shares in draw order: which lots it drew from and what went back to each."""
        rows = await self.pool.fetch(
            """
            SELECT h.id AS hold_id, s.lot_id, s.drawn, s.returned, s.refunded, l.category, l.expires_at
            FROM ledger_holds h
            CROSS JOIN LATERAL unnest(h.share_lot_ids, h.share_drawn, h.share_returned, h.share_refunded)
                WITH ORDINALITY AS s (lot_id, drawn, returned, refunded, position)
            LEFT JOIN ledger_lots l ON l.id = s.lot_id
            WHERE h.id = ANY($1::bigint[])
            ORDER BY h.id, s.position
            """,
            list(hold_ids),
        )
        shares: dict[int, list[ShareItem]] = {hold_id: [] for hold_id in hold_ids}
        for row in rows:
            shares[row["hold_id"]].append(
                ShareItem(
                    lot_id=row["lot_id"],
                    category=row["category"],
                    lot_expires_at=row["expires_at"],
                    drawn=row["drawn"],
                    returned=row["returned"],
                    refunded=row["refunded"],
                )
            )
        return shares

    async def has_user(self, user_id: str) -> bool:
        return bool(await self.pool.fetchval("SELECT true FROM ledger_balances WHERE user_id = $1", user_id))

    async def users_of(self, text: str) -> list[tuple[str, int, str]]:
        """The users of the transactions whose idempotency key or reference is `text`:
        (user id, transaction id, what matched), at most USERS_FOUND_MAX."""
        rows = await self.pool.fetch(
            """
            (SELECT t.user_id, t.id, 'idempotency key' AS matched FROM ledger_idempotency_keys k
             JOIN ledger_transactions t ON t.id = k.transaction_id AND t.created_at = k.created_at
             WHERE k.idempotency_key = $1)
            UNION ALL
            (SELECT user_id, id, 'reference' FROM ledger_transactions WHERE reference = $1 ORDER BY id LIMIT $2)
            LIMIT $2
            """,
            text,
            USERS_FOUND_MAX,
        )
        return [(row["user_id"], row["id"], row["matched"]) for row in rows]

    async def transactions(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        kind: str | None,
        limit: int,
        cursor: str | None,
        connection: asyncpg.Pool | Connection | None = None,
    ) -> Page[TransactionItem]:
        assert 1 <= limit <= PAGE_SIZE_MAX
        after = decode_id_cursor(cursor, TRANSACTIONS_CURSOR)
        rows = await (connection or self.pool).fetch(
            """
            SELECT t.id, t.kind, t.user_id, t.reference, t.reverses_transaction_id, t.actor, t.reason,
                   t.created_at, array_agg(a.code ORDER BY a.code) AS accounts,
                   array_agg(p.amount ORDER BY a.code) AS amounts
            FROM ledger_transactions t
            JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
            JOIN ledger_accounts a ON a.id = p.account_id
            WHERE ($1::bigint IS NULL OR t.id > $1)
              AND ($2::timestamptz IS NULL OR t.created_at >= $2)
              AND ($3::timestamptz IS NULL OR t.created_at < $3)
              AND ($4::text IS NULL OR t.kind = $4)
            GROUP BY t.id, t.created_at
            ORDER BY t.id
            LIMIT $5
            """,
            after,
            since,
            until,
            kind,
            limit + 1,
        )
        items = [_transaction_item(row) for row in rows[:limit]]
        next_cursor = encode_id_cursor(TRANSACTIONS_CURSOR, items[-1].transaction_id) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    async def feed(
        self, after: CommitPosition, *, limit: int, connection: asyncpg.Pool | Connection | None = None
    ) -> tuple[list[TransactionItem], CommitPosition]:
        """Transactions committed after `after`, in commit order (ledger/feed.py), with where to go on
        from: the last one's position, or `after` itself when nothing new has committed."""
        assert 1 <= limit <= PAGE_SIZE_MAX
        rows = await (connection or self.pool).fetch(
            f"""
            WITH c AS ({COMMITTED_AFTER})
            SELECT t.id, c.xid, t.kind, t.user_id, t.reference, t.reverses_transaction_id, t.actor, t.reason,
                   t.created_at, array_agg(a.code ORDER BY a.code) AS accounts,
                   array_agg(p.amount ORDER BY a.code) AS amounts
            FROM c
            JOIN ledger_transactions t ON t.id = c.id AND t.created_at = c.created_at
            JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
            JOIN ledger_accounts a ON a.id = p.account_id
            GROUP BY t.id, t.created_at, c.xid
            ORDER BY c.xid, t.id
            """,
            str(after.xid),
            after.transaction_id,
            limit,
        )
        items = [_transaction_item(row) for row in rows]
        last = CommitPosition(xid=int(rows[-1]["xid"]), transaction_id=rows[-1]["id"]) if rows else after
        return items, last

    async def audit(self, extra_checks: Sequence[ExtraCheck] = ()) -> AuditReport:
        async with self.pool.acquire() as connection:
            return await audit(connection, extra_checks)

    async def expire_due_lots(self, now: datetime, *, users_max: int = SWEEP_BATCH_MAX) -> int:
        """The sweeper's lot expiry, as of `now`: one expiry transaction per user with lots past their expiry.
        Returns how many users had lots expired."""
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                "SELECT DISTINCT user_id FROM ledger_lots WHERE remaining > 0 AND expires_at <= $1 "
                "ORDER BY user_id LIMIT $2",
                now,
                users_max,
            )
            operations = [
                ExpireLots(
                    key=f"sweep-expiry:{row['user_id']}:{now.isoformat()}",
                    user_id=row["user_id"],
                    actor="system:sweeper",
                    reason="lots past their expiry",
                )
                for row in rows
            ]
            outcomes = await self.engine.execute(connection, operations, now=now) if operations else []
        return sum(1 for outcome in outcomes if isinstance(outcome, Result) and outcome.transaction_id is not None)
