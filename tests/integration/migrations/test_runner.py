"""The migration runner against real PostgreSQL: fresh databases, reruns, races, and refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

import migrations

MOMENTS_COMMAND = Path(sys.executable).parent / "moments"
CLI_TIMEOUT_S = 60
CONCURRENT_RUNS = 5
# Tables the first two migrations create; later migrations may add more, never fewer.
EXPECTED_TABLES = {
    "api_keys",
    "ledger_accounts",
    "ledger_balances",
    "ledger_transactions",
    "ledger_postings",
    "ledger_lots",
    "ledger_holds",
}


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A private copy of migrations/*.sql that a test may edit."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in sorted(migrations.MIGRATIONS_DIR.glob("*.sql")):
        shutil.copy(path, directory / path.name)
    return directory


def repository_migrations() -> list[migrations.Migration]:
    found = migrations.discover()
    assert found, "migrations/ holds no .sql files"
    return found


def file_name(migration: migrations.Migration) -> str:
    return f"{migration.version:04d}_{migration.name}"


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def public_tables(dsn: str) -> set[str]:
    rows = await fetch(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


async def recorded(dsn: str) -> list[asyncpg.Record]:
    return await fetch(dsn, "SELECT version, name, checksum FROM schema_migrations ORDER BY version")


async def test_apply_to_an_empty_database_creates_tables_and_records_each_file(empty_database: str) -> None:
    expected = repository_migrations()
    assert await public_tables(empty_database) == set()

    applied = await migrations.apply(empty_database)

    assert applied == [file_name(m) for m in expected]
    tables = await public_tables(empty_database)
    assert EXPECTED_TABLES | {"schema_migrations"} <= tables
    rows = await recorded(empty_database)
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in expected]
    for row, migration in zip(rows, expected, strict=True):
        on_disk = (migrations.MIGRATIONS_DIR / f"{file_name(migration)}.sql").read_text()
        assert row["checksum"] == hashlib.sha256(on_disk.encode()).hexdigest(), row["name"]


async def test_second_apply_applies_nothing_and_changes_nothing(empty_database: str) -> None:
    await migrations.apply(empty_database)
    before = await fetch(empty_database, "SELECT version, checksum, applied_at FROM schema_migrations")

    assert await migrations.apply(empty_database) == []

    after = await fetch(empty_database, "SELECT version, checksum, applied_at FROM schema_migrations")
    assert sorted(map(tuple, after)) == sorted(map(tuple, before))


async def test_concurrent_applies_each_apply_every_migration_exactly_once(empty_database: str) -> None:
    expected = repository_migrations()

    results = await asyncio.gather(*(migrations.apply(empty_database) for _ in range(CONCURRENT_RUNS)))

    # Between them the runs applied every migration once: one run did the work, the others found it done.
    applied_by_all = sorted(name for result in results for name in result)
    assert applied_by_all == sorted(file_name(m) for m in expected)
    rows = await fetch(
        empty_database, "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY 1"
    )
    assert [(r["version"], r["n"]) for r in rows] == [(m.version, 1) for m in expected]
    # The system accounts seeded by the ledger migration were inserted once, not once per run.
    codes = await fetch(empty_database, "SELECT code, count(*) AS n FROM ledger_accounts GROUP BY code")
    assert codes
    assert all(row["n"] == 1 for row in codes)


async def test_an_applied_file_that_changed_is_refused_by_name(empty_database: str, migrations_copy: Path) -> None:
    first = sorted(migrations_copy.glob("*.sql"))[0]
    await migrations.apply(empty_database, directory=migrations_copy)
    first.write_text(first.read_text() + "\n-- an innocent-looking edit\n")
    # A new migration next to the edit must not be applied either: the run stops before doing anything.
    (migrations_copy / "9000_after_the_edit.sql").write_text("CREATE TABLE after_the_edit (id int);\n")

    with pytest.raises(migrations.MigrationError, match=first.name) as refused:
        await migrations.apply(empty_database, directory=migrations_copy)

    assert "changed" in str(refused.value)
    assert "after_the_edit" not in await public_tables(empty_database)
    assert 9000 not in {row["version"] for row in await recorded(empty_database)}


@pytest.mark.parametrize(
    "bad_name",
    ["1_too_short.sql", "0003-dashes.sql", "0003_CamelCase.sql", "0003_spaces here.sql", "abcd_letters.sql"],
)
async def test_a_badly_named_file_is_refused(empty_database: str, migrations_copy: Path, bad_name: str) -> None:
    (migrations_copy / bad_name).write_text("CREATE TABLE badly_named (id int);\n")

    with pytest.raises(migrations.MigrationError, match=bad_name):
        await migrations.apply(empty_database, directory=migrations_copy)

    # Refused before touching the database.
    assert await public_tables(empty_database) == set()


async def test_two_files_sharing_a_number_are_refused(empty_database: str, migrations_copy: Path) -> None:
    first = sorted(migrations_copy.glob("*.sql"))[0]
    (migrations_copy / f"{first.name[:4]}_duplicate_number.sql").write_text("SELECT 1;\n")

    with pytest.raises(migrations.MigrationError, match="share a number"):
        await migrations.apply(empty_database, directory=migrations_copy)

    assert await public_tables(empty_database) == set()


async def test_a_database_with_an_unknown_applied_version_is_refused(empty_database: str) -> None:
    await migrations.apply(empty_database)
    connection = await asyncpg.connect(empty_database)
    try:
        await connection.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', 'x')"
        )
    finally:
        await connection.close()

    with pytest.raises(migrations.MigrationError, match="9999"):
        await migrations.apply(empty_database)


async def test_a_failing_migration_leaves_nothing_behind(empty_database: str, migrations_copy: Path) -> None:
    await migrations.apply(empty_database, directory=migrations_copy)
    (migrations_copy / "9001_fails_halfway.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrations.apply(empty_database, directory=migrations_copy)

    assert "half_done" not in await public_tables(empty_database)
    assert 9001 not in {row["version"] for row in await recorded(empty_database)}
    # The advisory lock was released: a fixed file applies afterwards.
    (migrations_copy / "9001_fails_halfway.sql").write_text("CREATE TABLE half_done (id int);\n")
    assert await migrations.apply(empty_database, directory=migrations_copy) == ["9001_fails_halfway"]


def run_cli(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(MOMENTS_COMMAND), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


async def test_moments_migrate_applies_then_finds_none_missing(empty_database: str) -> None:
    expected = repository_migrations()

    first = await asyncio.to_thread(run_cli, "migrate", database_url=empty_database)
    assert first.returncode == 0, first.stderr
    assert f"applied {len(expected)} migration(s)" in first.stdout
    for migration in expected:
        assert file_name(migration) in first.stdout
    assert len(await recorded(empty_database)) == len(expected)

    second = await asyncio.to_thread(run_cli, "migrate", database_url=empty_database)
    assert second.returncode == 0, second.stderr
    assert "applied 0 migration(s)" in second.stdout
    assert "none missing" in second.stdout


async def test_moments_migrate_without_database_url_fails_clearly() -> None:
    result = await asyncio.to_thread(run_cli, "migrate", database_url=None)
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
