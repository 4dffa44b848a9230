"""Where the tests' PostgreSQL comes from: TEST_DATABASE_URL, else Docker (testcontainers), else embedded.

Migrations run once into a template database; each test gets its own `CREATE DATABASE … TEMPLATE` clone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions

TEMPLATE_NAME = "moments_template"
_clone_numbers = itertools.count(1)


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a superuser DSN to a maintenance database of a server that the tests may use freely."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as container:
            yield container.get_connection_url()
        return
    data_dir = Path(tempfile.mkdtemp(prefix="moments-test-pg-"))
    server = EmbeddedPostgres(data_dir / "pg", ServerOptions(durable=False, max_connections=400))
    try:
        yield server.start()
    finally:
        server.destroy()
        with contextlib.suppress(OSError):
            data_dir.rmdir()


def dsn_with_database(dsn: str, database: str) -> str:
    base, _, rest = dsn.rpartition("/")
    query = ("?" + rest.split("?", 1)[1]) if "?" in rest else ""
    return f"{base}/{database}{query}"


async def create_template(admin_dsn: str) -> str:
    import migrations

    name = f"{TEMPLATE_NAME}_{os.getpid()}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await migrations.apply(dsn_with_database(admin_dsn, name))
    return name


async def clone_database(admin_dsn: str, template: str) -> str:
    name = f"test_{os.getpid()}_{next(_clone_numbers)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return name


async def drop_database(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
