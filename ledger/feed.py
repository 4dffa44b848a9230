"""The ledger in commit order: one cursor that never skips a transaction that committed late.

Ids are taken from a sequence before commit, so a transaction with a lower id can become visible after
one with a higher id, and a reader paging by id skips it. Every ledger transaction carries the id of the
database transaction that wrote it (`written_by_xid`). A reader only takes rows whose writer's xid is
below its snapshot's xmin — every database transaction below that horizon has ended, committed or not —
and pages by `(written_by_xid, id)`. A row that is not yet below the horizon is left for a later page,
and once it is, everything ordered before it was already below the horizon of the earlier read: no
reader misses a row and none sees one twice.

The cost: a transaction that stays open holds the horizon back (a read-only one does not; it has no
xid), so readers see nothing newer until it ends. Group commit writes many ledger transactions under
one xid; `id` orders them within it.
"""

from __future__ import annotations

import asyncpg
import msgspec

from ledger.cursors import InvalidCursor, decode_cursor, encode_cursor

FEED_CURSOR = "c1"
XID8_MAX = (1 << 64) - 1
BIGINT_MAX = (1 << 63) - 1


class CommitPosition(msgspec.Struct, frozen=True, order=True):
    """Where a commit-order reader stands: after the transaction `transaction_id` written by `xid`."""

    xid: int
    transaction_id: int


START = CommitPosition(xid=0, transaction_id=0)


def encode_position(position: CommitPosition) -> str:
    return encode_cursor(FEED_CURSOR, str(position.xid), str(position.transaction_id))


def decode_position(cursor: str | None) -> CommitPosition:
    """The position a cursor names (the start for None); a forged one is an `InvalidCursor`."""
    if cursor is None:
        return START
    xid_text, id_text = decode_cursor(cursor, FEED_CURSOR, 2)
    for text, largest in ((xid_text, XID8_MAX), (id_text, BIGINT_MAX)):
        if not text.isdigit() or len(text) > 20 or int(text) > largest:
            raise InvalidCursor
    return CommitPosition(xid=int(xid_text), transaction_id=int(id_text))


# The rows after $1/$2 in commit order, below this snapshot's horizon. Run it in the reader's own
# transaction (REPEATABLE READ when several statements must agree) so the horizon and the rows come from
# one snapshot. Callers add their own columns by joining on `c.id` and `c.created_at` (the time names the
# month's partition: joined by id alone, every month's index would be searched).
COMMITTED_AFTER = """
    SELECT t.id, t.written_by_xid::text::numeric AS xid, t.created_at
    FROM ledger_transactions t
    -- A scalar subquery: the horizon is taken once per statement, not once per row.
    WHERE t.written_by_xid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
      AND (t.written_by_xid, t.id) > ($1::text::xid8, $2::bigint)
    ORDER BY t.written_by_xid, t.id
    LIMIT $3
"""

_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::numeric"


async def committed_after(
    connection: asyncpg.Connection | asyncpg.Pool, after: CommitPosition, limit: int
) -> list[CommitPosition]:
    """At most `limit` positions of transactions committed after `after`, in commit order."""
    rows = await connection.fetch(COMMITTED_AFTER, str(after.xid), after.transaction_id, limit)
    return [CommitPosition(xid=int(row["xid"]), transaction_id=row["id"]) for row in rows]


async def commit_horizon(connection: asyncpg.Connection | asyncpg.Pool) -> int:
    """The xid below which every database transaction has ended, as this snapshot sees it."""
    return int(await connection.fetchval(_HORIZON))
