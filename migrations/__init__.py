"""Numbered SQL migrations, applied in order, each in its own transaction, under an advisory lock.

Every applied file is recorded with a SHA-256 of its text; an applied file that has since changed is an
error, because the database no longer matches what the repository says it is.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).parent
# Any fixed 64-bit number; every `moments migrate` takes this lock, so concurrent runs queue up.
ADVISORY_LOCK_ID = 7_245_019_331
FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
LOCK_TIMEOUT_S = 120


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return migrations


async def apply(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Applies what is missing; returns the names applied now. Safe to run concurrently and repeatedly."""
    migrations = discover(directory)
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        await connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
        await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
        try:
            return await _apply_locked(connection, migrations)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    finally:
        await connection.close()


async def _apply_locked(connection: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await connection.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    rows = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row for row in rows}
    known = {migration.version for migration in migrations}
    unknown = sorted(set(applied) - known)
    if unknown:
        raise MigrationError(f"the database has migrations this code does not know: {unknown}")
    applied_now = []
    for migration in migrations:
        record = applied.get(migration.version)
        if record is not None:
            if record["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}.sql changed after it was applied "
                    f"(recorded checksum {record['checksum'][:12]}, file {migration.checksum[:12]}); "
                    "write a new migration instead of editing an applied one"
                )
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        applied_now.append(f"{migration.version:04d}_{migration.name}")
    return applied_now
