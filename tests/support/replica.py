"""A primary and a streaming hot standby of it, both embedded, for tests of reads routed to a replica.

The standby is made with `pg_basebackup -R` (entitlements/dev/embedded_db.py), so it streams WAL from the
primary like any production replica; a database created on the primary (a test's clone of the template)
appears on it once replayed. `ReplicaPair` starts both; `pause_replay`/`resume_replay` and `stop_replica`/
`start_replica` are the faults the tests inject. Independent of TEST_DATABASE_URL and Docker: the tests
need a primary whose replication they control.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions
from entitlements.keys import ROLES, create_key
from entitlements.reads import replayed_past
from tests.support.app import settings_for
from tests.support.database import create_template, dsn_with_database
from tests.support.http import Api

# Replaying a freshly created database, or catching up after a pause, takes well under a second here.
CATCH_UP_TIMEOUT_S = 30.0
POLL_S = 0.05


@dataclass
class ReplicaPair:
    primary: EmbeddedPostgres
    replica: EmbeddedPostgres

    @property
    def primary_dsn(self) -> str:
        return self.primary.dsn

    @property
    def replica_dsn(self) -> str:
        return self.replica.dsn

    async def create_database(self, template: str, name: str) -> tuple[str, str]:
        """A clone of `template` on the primary, waited for on the replica: its (primary, replica) DSNs."""
        admin = await asyncpg.connect(self.primary_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await admin.close()
        await self.wait_caught_up()
        return dsn_with_database(self.primary_dsn, name), dsn_with_database(self.replica_dsn, name)

    async def wait_caught_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Until the replica has replayed everything the primary has committed so far."""
        primary = await asyncpg.connect(self.primary_dsn)
        try:
            target = await primary.fetchval("SELECT pg_current_wal_insert_lsn()")
        finally:
            await primary.close()
        replica = await asyncpg.connect(self.replica_dsn)
        try:
            deadline = time.monotonic() + timeout_s
            while not replayed_past(await replica.fetchval("SELECT pg_last_wal_replay_lsn()"), target):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the replica did not replay up to {target} within {timeout_s} s")
                await asyncio.sleep(POLL_S)
        finally:
            await replica.close()

    async def pause_replay(self) -> None:
        await self._on_replica("SELECT pg_wal_replay_pause()")

    async def resume_replay(self) -> None:
        await self._on_replica("SELECT pg_wal_replay_resume()")

    async def _on_replica(self, statement: str) -> None:
        connection = await asyncpg.connect(self.replica_dsn)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def stop_replica(self) -> None:
        self.replica.stop()

    def start_replica(self) -> None:
        """Starts it again on the port it had (clients configured with its DSN reconnect)."""
        port = self.replica.port
        self.replica.options = ServerOptions(
            port=port, durable=False, max_connections=self.replica.options.max_connections
        )
        self.replica.start()
        # start() marks it its own to stop again; the port is the one the service was given.
        assert self.replica.port == port


@contextlib.contextmanager
def replica_pair(max_connections: int = 200) -> Iterator[ReplicaPair]:
    """A fresh primary (throwaway: no fsync) and a streaming hot standby of it; both destroyed after."""
    root = Path(tempfile.mkdtemp(prefix="moments-test-replica-"))
    primary = EmbeddedPostgres(root / "primary", ServerOptions(durable=False, max_connections=max_connections))
    replica = EmbeddedPostgres(root / "replica", ServerOptions(durable=False, max_connections=max_connections))
    try:
        primary.start()
        replica.replicate_from(primary)
        replica.start()
        yield ReplicaPair(primary=primary, replica=replica)
    finally:
        replica.destroy()
        primary.destroy()
        shutil.rmtree(root, ignore_errors=True)


async def template_on(pair: ReplicaPair) -> str:
    """The migrated template database, on the pair's primary."""
    return await create_template(pair.primary_dsn)


@contextlib.asynccontextmanager
async def api_with_replica(
    pair: ReplicaPair, primary_url: str, replica_url: str, **database: Any
) -> AsyncIterator[Api]:
    """The app in process against `primary_url`, its routed reads against `replica_url`; `database` replaces
    DatabaseSettings fields (the lag bound, the check interval). Keys as tests/support/http.py makes them,
    replayed before the app starts, so that its first measurement finds the replica caught up."""
    base = settings_for(primary_url)
    settings = dataclasses.replace(
        base, database=dataclasses.replace(base.database, replica_url=replica_url, **database)
    )
    app = create_app(settings)
    connection = await asyncpg.connect(primary_url)
    try:
        keys = {role: (await create_key(connection, role=role, name=f"test-{role}")).key for role in ROLES}
    finally:
        await connection.close()
    await pair.wait_caught_up()
    async with AsyncTestClient(app=app) as client:
        yield Api(client, keys)
