"""Migration 0014 on a database that already has data: the ledger written by the release before it (its
own code, taken from git), then migrated, reads back the same through the new code.

Checked after the migration: the audit is clean, the seal still verifies (it hashes the rows' contents:
ids, times and every hashed column came through byte for byte) and goes on sealing, the feed answers the
same rows in the same order, the finance exports are byte-identical, old idempotency keys still replay,
and every row sits in its month's partition.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import ledger as L
import migrations
from entitlements import seal
from tests.support.before_partitions import exports
from tests.support.seal import activity, export_lines, seal_everything, seal_settings

# The last commit whose migrations end at 0013: its code writes the data the migration converts.
BEFORE_PARTITIONS_COMMIT = "c52a33a"
LAST_UNPARTITIONED = 13
REPOSITORY = Path(__file__).resolve().parents[3]
BEFORE_TIMEOUT_S = 300


def old_release(directory: Path) -> Path:
    """The code of BEFORE_PARTITIONS_COMMIT, unpacked into `directory` (skips where git cannot give it)."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed: the release before migration 0014 comes from git history")
    archived = subprocess.run(
        [git, "-C", str(REPOSITORY), "archive", "--format=tar", BEFORE_PARTITIONS_COMMIT],
        capture_output=True,
        check=False,
    )
    if archived.returncode != 0:
        pytest.skip(f"commit {BEFORE_PARTITIONS_COMMIT} is not in this clone (a shallow clone?): fetch main's history")
    with tarfile.open(fileobj=BytesIO(archived.stdout)) as tar:
        tar.extractall(directory, filter="data")
    shutil.copy(REPOSITORY / "tests" / "support" / "before_partitions.py", directory / "before_partitions.py")
    return directory


async def test_a_database_with_data_is_converted_and_reads_back_the_same(empty_database: str, tmp_path: Path) -> None:
    old = old_release(tmp_path / "old")
    up_to_0013 = tmp_path / "migrations-0013"
    up_to_0013.mkdir()
    for path in sorted(migrations.MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) <= LAST_UNPARTITIONED:
            shutil.copy(path, up_to_0013 / path.name)
    await migrations.apply(empty_database, up_to_0013)

    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHONPATH": str(old)}
    ran = subprocess.run(
        [sys.executable, str(old / "before_partitions.py"), empty_database, str(key_dir)],
        cwd=old,
        env=environment,
        capture_output=True,
        text=True,
        timeout=BEFORE_TIMEOUT_S,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    before: dict[str, Any] = json.loads(ran.stdout.strip().splitlines()[-1])
    assert before["audit_ok"], before
    assert before["seal_ok"], before
    assert before["sealed_last_position"] > 10
    assert len(before["feed"]) == before["sealed_last_position"]
    assert all(before["exports"].values())

    assert await migrations.apply(empty_database) == ["0014_ledger_partitions"]

    pool = await asyncpg.create_pool(empty_database, min_size=1, max_size=4)
    try:
        async with L.Ledger(pool) as led:
            report = await led.audit()
            assert report.ok, report
            assert await export_lines(pool) == before["feed"]
            async with pool.acquire() as connection:
                assert await exports(connection) == before["exports"]
                key = seal.load_signing_key(seal_settings(key_file=key_dir / "seal-key.pem"))
                verification = await seal.verify(connection, {key.key_id: key.public_key})
                assert verification.ok, verification.difference
                assert verification.last_position == before["sealed_last_position"]
                unplaced = await connection.fetchval(
                    "SELECT count(*) FROM ledger_transactions t JOIN ledger_idempotency_keys k"
                    " ON k.transaction_id = t.id AND k.created_at = t.created_at"
                    " WHERE t.tableoid::regclass::text <> 'ledger_transactions_'"
                    " || to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY_MM')"
                )
                assert unplaced == 0

            # An old key replays what it answered before; the same key with another request conflicts.
            replay = await led.submit(
                L.Credit(
                    key="old:r:credit",
                    user_id="old-refunded",
                    actor="test:before-partitions",
                    amount=50,
                    kind="purchase",
                    category="paid",
                )
            )
            assert replay.replayed
            assert replay.transaction_id == before["replay"]["transaction_id"]
            assert replay.available == before["replay"]["available"]
            conflict = await led.outcome(
                L.Credit(
                    key="old:r:credit",
                    user_id="old-refunded",
                    actor="test:before-partitions",
                    amount=51,
                    kind="purchase",
                    category="paid",
                )
            )
            assert isinstance(conflict, L.IdempotencyConflict)

            # The ledger goes on: new transactions (ids after the old ones) are sealed on the old chain.
            new_ids = await activity(led, users=2, prefix="new")
            assert replay.transaction_id is not None
            assert min(new_ids) > replay.transaction_id
            await seal_everything(seal.Sealer(pool, seal_settings(), key))
            async with pool.acquire() as connection:
                verification = await seal.verify(connection, {key.key_id: key.public_key})
            assert verification.ok, verification.difference
            assert verification.last_position == before["sealed_last_position"] + len(new_ids)
            assert (await led.audit()).ok
    finally:
        await pool.close()
