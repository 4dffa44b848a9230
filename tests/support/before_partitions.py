"""Run by tests/integration/migrations/test_partition_migration.py with the code of the release before
migration 0014 first on sys.path (its own ledger, seal and finance): writes real ledger data into a database
at migration 0013 through that code's APIs, seals it, and prints what its readers answered, as JSON.

Usage: python before_partitions.py DSN KEY_DIR. Imports nothing the old code lacks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

import ledger as L
from entitlements import seal
from entitlements.finance import queries as finance_queries
from tests.support.seal import activity, export_lines, new_key, seal_everything, seal_settings

ACTOR = "test:before-partitions"


async def _write(led: L.Ledger) -> dict[str, Any]:
    await activity(led, users=3, prefix="old")
    # A capture refunded in part, a clawback into debt, and more credits: every kind the triggers check.
    user = "old-refunded"
    await led.submit(
        L.Credit(key="old:r:credit", user_id=user, actor=ACTOR, amount=50, kind="purchase", category="paid")
    )
    hold = await led.submit(
        L.Hold(
            key="old:r:hold", user_id=user, actor=ACTOR, amount=20, expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
    )
    assert hold.hold_id is not None
    await led.submit(L.Capture(key="old:r:capture", user_id=user, actor=ACTOR, hold_id=hold.hold_id))
    await led.submit(L.Refund(key="old:r:refund", user_id=user, actor=ACTOR, hold_id=hold.hold_id, amount=5))
    await led.submit(L.Clawback(key="old:r:clawback", user_id=user, actor=ACTOR, amount=40))
    # What a replay of an old key answers, to compare after the migration.
    replay = await led.submit(
        L.Credit(key="old:r:credit", user_id=user, actor=ACTOR, amount=50, kind="purchase", category="paid")
    )
    return {"replayed": replay.replayed, "transaction_id": replay.transaction_id, "available": replay.available}


async def exports(connection: L.Connection) -> dict[str, str]:
    bounds = ("0", 0, datetime(1970, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
    found = {}
    for dataset in ("transactions", "postings"):
        for file_format in ("csv", "ndjson"):
            chunks: list[bytes] = []

            async def collect(chunk: bytes, into: list[bytes] = chunks) -> None:
                into.append(chunk)

            options: dict[str, Any] = (
                {"format": "csv", "header": True}
                if file_format == "csv"
                else {"format": "csv", "quote": "\x01", "delimiter": "\x02"}
            )
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                await connection.copy_from_query(
                    finance_queries.export_rows(dataset, file_format), *bounds, output=collect, **options
                )
            found[f"{dataset}.{file_format}"] = base64.b64encode(b"".join(chunks)).decode()
    return found


async def main(dsn: str, key_dir: Path) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        async with L.Ledger(pool) as led:
            replay = await _write(led)
            audit = await led.audit()
        key = new_key(key_dir)
        sealer = seal.Sealer(pool, seal_settings(), key)
        await seal_everything(sealer)
        async with pool.acquire() as connection:
            verification = await seal.verify(connection, {key.key_id: key.public_key})
            exported = await exports(connection)
        print(
            json.dumps(
                {
                    "audit_ok": audit.ok,
                    "seal_ok": verification.ok,
                    "sealed_last_position": verification.last_position,
                    "feed": await export_lines(pool),
                    "exports": exported,
                    "replay": replay,
                }
            )
        )
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
