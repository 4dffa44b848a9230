"""The embedded PostgreSQL server in its own data directory: start, reuse, stop, and data kept across
restarts. One server life cycle (one initdb) for the whole module keeps it quick."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from entitlements.dev.embedded_db import EmbeddedPostgres, EmbeddedPostgresError, ServerOptions

# Small and throwaway: this server only answers a handful of queries.
OPTIONS = ServerOptions(durable=False, max_connections=20, shared_buffers_mb=16)
CONNECT_TIMEOUT_S = 10


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: when the tests run as root the server runs as another user, which must
    # traverse every parent directory, and each pytest session resets /tmp/pytest-of-<user> to 0700 (so a
    # concurrent run would lock the server's own pg_ctl out). tests/support/database.py does the same.
    parent = Path(tempfile.mkdtemp(prefix="moments-embedded-test-"))
    directory = parent / "pg"
    yield directory
    # Whatever happened in the test, leave no server running.
    EmbeddedPostgres(directory, OPTIONS).destroy()
    shutil.rmtree(parent, ignore_errors=True)


async def query(dsn: str, sql: str) -> object:
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def execute(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def test_dsn_before_start_is_an_error(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "never-started", OPTIONS)
    with pytest.raises(EmbeddedPostgresError, match="not started"):
        _ = server.dsn


async def test_start_reuse_stop_and_restart_keep_the_data(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, OPTIONS)
    dsn = server.start()
    assert (data_dir / "PG_VERSION").exists()
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert server.port is not None
    assert await query(dsn, "SELECT 1") == 1
    assert server.dsn_for("other").endswith(f":{server.port}/other")

    # Reuse: a second object over the same directory finds the running server instead of starting one.
    second = EmbeddedPostgres(data_dir, OPTIONS)
    assert second.start() == dsn
    assert second.port == server.port
    # The second object did not start it, so it leaves it running.
    second.stop()
    assert await query(dsn, "SELECT 1") == 1

    await execute(dsn, "CREATE TABLE survives (note text); INSERT INTO survives VALUES ('kept')")

    server.stop()
    with pytest.raises(ConnectionRefusedError):
        await query(dsn, "SELECT 1")
    assert not (data_dir / "postmaster.pid").exists()

    # Started again over the same directory: no new initdb, the table and its row are still there.
    restarted = EmbeddedPostgres(data_dir, OPTIONS)
    restarted_dsn = restarted.start()
    try:
        assert await query(restarted_dsn, "SELECT note FROM survives") == "kept"
    finally:
        restarted.stop()
    with pytest.raises(ConnectionRefusedError):
        await query(restarted_dsn, "SELECT 1")
