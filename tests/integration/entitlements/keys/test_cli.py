"""`moments keys create` as a real subprocess against a test database, and the key it prints in use."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.keys import KEY_PREFIX
from tests.support.app import settings_for
from tests.support.database import clone_database, drop_database, dsn_with_database

MOMENTS_COMMAND = Path(sys.executable).parent / "moments"
CLI_TIMEOUT_S = 60


def run_keys_create(*args: str, database_url: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(MOMENTS_COMMAND), "keys", "create", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


async def keys_create(*args: str, database_url: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_keys_create, *args, database_url=database_url, cwd=cwd)


@pytest.fixture(scope="module")
async def shared_database_url(postgres_admin_dsn: str, template_database: str) -> AsyncIterator[str]:
    name = await clone_database(postgres_admin_dsn, template_database)
    yield dsn_with_database(postgres_admin_dsn, name)
    await drop_database(postgres_admin_dsn, name)


@pytest.fixture(scope="module")
async def created(
    shared_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    """One `moments keys create --role service --name x` run (each run costs a process start-up)."""
    cwd = tmp_path_factory.mktemp("cli-keys")
    return await keys_create("--role", "service", "--name", "x", database_url=shared_database_url, cwd=cwd)


async def fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


def raw_key_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


async def test_keys_create_prints_the_raw_key_alone_on_the_last_line(
    created: subprocess.CompletedProcess[str], shared_database_url: str
) -> None:
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    raw_key = lines[-1]
    assert raw_key == raw_key.strip()
    assert raw_key.startswith(KEY_PREFIX)
    assert " " not in raw_key
    assert len(raw_key) >= len(KEY_PREFIX) + 40  # 256 random bits, url-safe base64
    assert raw_key not in "\n".join(lines[:-1]), "the key is printed once, on its own line"
    assert raw_key not in created.stderr

    rows = await fetch(shared_database_url, "SELECT name, role, key_hash, revoked_at FROM api_keys")
    assert len(rows) == 1
    row = rows[0]
    assert (row["name"], row["role"], row["revoked_at"]) == ("x", "service", None)
    assert bytes(row["key_hash"]) == hashlib.sha256(raw_key.encode()).digest()


async def test_the_printed_key_authenticates_with_its_role(
    created: subprocess.CompletedProcess[str], shared_database_url: str
) -> None:
    raw_key = raw_key_of(created)

    async with AsyncTestClient(app=create_app(settings_for(shared_database_url))) as client:
        allowed = await client.get("/v1/pricing", headers={"Authorization": f"Bearer {raw_key}"})
        assert allowed.status_code == 200, allowed.text
        # Service may not read the ledger's audit (finance only): the key carries its role, not admin's.
        refused = await client.get("/v1/ledger/audit", headers={"Authorization": f"Bearer {raw_key}"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "forbidden"
        # One character off is an unknown key.
        tampered = raw_key[:-1] + ("A" if raw_key[-1] != "A" else "B")
        unknown = await client.get("/v1/pricing", headers={"Authorization": f"Bearer {tampered}"})
        assert unknown.status_code == 401


async def test_the_database_stores_only_a_hash_of_the_key(
    created: subprocess.CompletedProcess[str], shared_database_url: str
) -> None:
    raw_key = raw_key_of(created)

    # Every column of every row, as text (bytea as hex) and as bytes, never holds the raw key.
    rows = await fetch(shared_database_url, "SELECT row_to_json(k)::text AS as_text, key_hash FROM api_keys k")
    assert rows
    for row in rows:
        assert raw_key not in row["as_text"]
        assert raw_key[len(KEY_PREFIX) :] not in row["as_text"]
        assert raw_key.encode() not in bytes(row["key_hash"])
        assert len(bytes(row["key_hash"])) == hashlib.sha256().digest_size
    found = await fetch(
        shared_database_url,
        "SELECT id FROM api_keys k WHERE position($1 IN row_to_json(k)::text) > 0",
        raw_key,
    )
    assert found == []


async def test_each_run_creates_a_distinct_key(database_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    first, second = await asyncio.gather(
        keys_create("--role", "finance", database_url=database_url, cwd=tmp_path),
        keys_create("--role", "finance", database_url=database_url, cwd=tmp_path),
    )
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    assert first.stdout.splitlines()[-1] != second.stdout.splitlines()[-1]
    names = await pool.fetch("SELECT name, role FROM api_keys ORDER BY id")
    # Without --name the key is still named (names are 1-200 characters).
    assert [(r["name"], r["role"]) for r in names] == [("finance-key", "finance")] * 2


@pytest.mark.parametrize("role", ["root"])
async def test_a_bad_role_exits_non_zero_with_a_clear_message(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path, role: str
) -> None:
    result = await keys_create("--role", role, "--name", "x", database_url=database_url, cwd=tmp_path)

    assert result.returncode != 0
    assert "role" in result.stderr
    for allowed in ("service", "support", "finance", "admin"):
        assert allowed in result.stderr
    assert KEY_PREFIX not in result.stdout
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_a_name_too_long_exits_non_zero_and_creates_nothing(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    result = await keys_create("--role", "service", "--name", "n" * 201, database_url=database_url, cwd=tmp_path)

    assert result.returncode != 0
    assert "name" in result.stderr
    assert KEY_PREFIX not in result.stdout
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_keys_create_without_database_url_fails_clearly(tmp_path: Path) -> None:
    result = await keys_create("--role", "service", database_url=None, cwd=tmp_path)
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert KEY_PREFIX not in result.stdout
