"""Monthly partitions of ledger_transactions and ledger_postings (migrations/0014_ledger_partitions.sql).

A write dated in a month without its partition fails (there is no default partition to swallow it: rows
in a default partition would have to be moved out, under a lock, before that month could be created).
So the months are created ahead: the migration creates this month and the next, and the sweeper keeps
`ahead_months` months ready beyond the current one, by the database's clock (what `created_at` defaults
to). Creating a month is idempotent and takes no lock that ledger writes wait for.
"""

from __future__ import annotations

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# How long the sweeper waits for the locks partition creation takes before trying again next sweep.
CREATE_LOCK_TIMEOUT_S = 5

_ENSURE = "SELECT ledger_ensure_partitions(now(), now() + make_interval(months => $1))"

PARTITIONS = """
    SELECT parent.relname AS parent, child.relname AS partition, pg_get_expr(child.relpartbound, child.oid) AS bounds
    FROM pg_inherits i
    JOIN pg_class parent ON parent.oid = i.inhparent
    JOIN pg_class child ON child.oid = i.inhrelid
    WHERE parent.relname IN ('ledger_transactions', 'ledger_postings')
    ORDER BY parent.relname, child.relname
"""


async def ensure_partitions(pool: asyncpg.Pool, *, ahead_months: int) -> int:
    """Creates any missing partition from this month to `ahead_months` months ahead; answers how many tables
    it created (0 nearly always)."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{CREATE_LOCK_TIMEOUT_S}s'")
        created = int(await connection.fetchval(_ENSURE, ahead_months))
    if created:
        log.info("ledger_partitions_created", tables=created, ahead_months=ahead_months)
    return created
