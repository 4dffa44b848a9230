"""The service behind a real PgBouncer in transaction mode, with fewer server connections than its pool has
clients: what transaction pooling breaks (prepared statements, startup parameters, session settings,
LISTEN) is shown to break for asyncpg's defaults, and shown handled by the service's settings
(DATABASE_POOL_MODE=transaction, DATABASE_DIRECT_URL): a grant, a generation's hold, a balance webhook
event at the configured threshold, and a revoked key refused at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.dev import pgbouncer
from entitlements.keys import ROLES, create_key
from entitlements.keys.cache import LISTENER_APPLICATION_NAME
from tests.support.app import settings_for
from tests.support.generations import balance, body, create_ok, grant, set_tier
from tests.support.http import Api
from tests.support.pgbouncer import skip_reason

if not pgbouncer.installed():
    pytest.skip(skip_reason(), allow_module_level=True)

# Server connections PgBouncer may open per database, against the service's pool of CLIENT_POOL_SIZE.
SERVER_POOL_SIZE = 2
CLIENT_POOL_SIZE = 10
THRESHOLD_MOMENTS = 500
# Far below the key cache's TTL: a refusal within it was told by the notification.
NOTIFICATION_WAIT_S = 10.0


@pytest.fixture(scope="module")
def bouncer(postgres_admin_dsn: str) -> Iterator[pgbouncer.PgBouncer]:
    options = pgbouncer.PgBouncerOptions(default_pool_size=SERVER_POOL_SIZE)
    with pgbouncer.pgbouncer_in_front_of(postgres_admin_dsn, options) as started:
        yield started


async def test_asyncpg_defaults_fail_through_transaction_pooling(
    bouncer: pgbouncer.PgBouncer, database_url: str
) -> None:
    """The hazards are real here (so the tests below can fail): two clients on one server connection
    collide on their cached statements' names, and a startup parameter is refused."""
    url = bouncer.url_for(database_url)
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter: statement_timeout"):
        await asyncpg.connect(url, server_settings={"statement_timeout": "1000"})
    # A statement prepared on one server connection, used by the same client on another: with two server
    # connections, the one released last is handed out next (PgBouncer reuses them last in, first out).
    with pgbouncer.pgbouncer_in_front_of(database_url, pgbouncer.PgBouncerOptions(default_pool_size=2)) as two:
        first = await asyncpg.connect(two.url_for(database_url))
        second = await asyncpg.connect(two.url_for(database_url))
        try:
            first_transaction, second_transaction = first.transaction(), second.transaction()
            await first_transaction.start()
            await second_transaction.start()
            statement = await first.prepare("SELECT $1::int + 1")
            assert await statement.fetchval(1) == 2
            await first_transaction.commit()
            # `second` ends last: its server connection is the one `first` is given next.
            await second_transaction.commit()
            with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
                await statement.fetchval(1)
        finally:
            await first.close()
            await second.close()


@asynccontextmanager
async def service_through(bouncer: pgbouncer.PgBouncer, database_url: str) -> AsyncIterator[Api]:
    base = settings_for(database_url, webhook_settings={"balance_low_threshold_moments": THRESHOLD_MOMENTS})
    settings = dataclasses.replace(
        base,
        database=dataclasses.replace(
            base.database,
            url=bouncer.url_for(database_url),
            direct_url=database_url,
            pool_mode="transaction",
            pool_size_min=CLIENT_POOL_SIZE,
            pool_size_max=CLIENT_POOL_SIZE,
        ),
    )
    connection = await asyncpg.connect(database_url)
    try:
        keys = {role: (await create_key(connection, role=role, name=f"test-{role}")).key for role in ROLES}
    finally:
        await connection.close()
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield Api(client, keys)


async def server_connections(database_url: str) -> dict[str, int]:
    """The service's server connections: through PgBouncer, and the direct one that LISTENs."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'moments%' GROUP BY 1"
        )
    finally:
        await connection.close()
    return {row["application_name"]: row["n"] for row in rows}


async def until_listening(database_url: str) -> None:
    """The listener connects as the service starts, beside it: wait for it (the cache trusts nothing
    until then, so a key read before is simply not cached)."""
    for _ in range(500):
        if (await server_connections(database_url)).get(LISTENER_APPLICATION_NAME) == 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the key cache's listener never connected")


async def test_money_and_webhook_events_through_pgbouncer_in_transaction_mode(
    bouncer: pgbouncer.PgBouncer, database_url: str
) -> None:
    async with service_through(bouncer, database_url) as api:
        await set_tier(api, "pgb-user", "PREMIUM")
        # Concurrent requests on a pool of ten served by two server connections.
        await asyncio.gather(*(grant(api, f"pgb-{number}", 1_000) for number in range(20)))
        await grant(api, "pgb-user", 100)  # a balance's first operation: no balance event
        await grant(api, "pgb-user", 500)  # 600: back at or above 500
        generations = await asyncio.gather(*(create_ok(api, "pgb-user", body()) for _ in range(2)))
        await until_listening(database_url)
        balances = await balance(api, "pgb-user")
        connections = await server_connections(database_url)
    held = sum(generation["moments"] for generation in generations)
    assert balances == {"available": 600 - held, "held": held}
    assert connections["moments"] <= SERVER_POOL_SIZE
    assert connections[LISTENER_APPLICATION_NAME] == 1
    events = await event_rows(database_url, "pgb-user")
    # The threshold of this service (500, not the trigger's fallback of 100: 600 would then be no recovery)
    # reached the trigger through SET LOCAL, whichever server connection ran the grant's group commit or
    # the hold's own transaction.
    assert 600 - held < THRESHOLD_MOMENTS
    assert [(event["type"], event["threshold"]) for event in events] == [
        ("balance.recovered", THRESHOLD_MOMENTS),
        ("balance.low", THRESHOLD_MOMENTS),
    ]
    ledger_events = await event_rows(database_url, "pgb-3", types=("credit.granted",))
    assert len(ledger_events) == 1


async def event_rows(database_url: str, user: str, types: tuple[str, ...] | None = None) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(
            "SELECT type, (data->>'threshold')::bigint AS threshold FROM webhook_events"
            " WHERE user_id = $1 AND (type = ANY($2::text[]) OR ($2::text[] IS NULL AND type LIKE 'balance.%'))"
            " ORDER BY id",
            user,
            list(types) if types is not None else None,
        )
    finally:
        await connection.close()


async def test_a_key_revoked_elsewhere_is_heard_through_the_direct_listener(
    bouncer: pgbouncer.PgBouncer, database_url: str
) -> None:
    """The key cache's LISTEN runs on DATABASE_DIRECT_URL. Through PgBouncer in transaction mode it would
    hear nothing (the LISTEN ends with its transaction's turn on a server connection), and the cache would
    serve a revoked key for its whole TTL (60 s): here it is refused within NOTIFICATION_WAIT_S."""
    async with service_through(bouncer, database_url) as api:
        created = (await api.post("/v1/keys", "admin", {"role": "service", "name": "soon-revoked"})).json()
        auth = {"Authorization": f"Bearer {created['key']}"}
        assert (await api.client.get("/v1/pricing", headers=auth)).status_code == 200
        assert (await api.client.get("/v1/pricing", headers=auth)).status_code == 200  # from the cache
        await until_listening(database_url)
        # Another process revokes it: only the notification can tell this one.
        other = await asyncpg.connect(database_url)
        try:
            await other.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", created["api_key"]["id"])
        finally:
            await other.close()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (await api.client.get("/v1/pricing", headers=auth)).status_code != 401:
            assert loop.time() - started < NOTIFICATION_WAIT_S, "the revoked key was still accepted"
            await asyncio.sleep(0.01)
