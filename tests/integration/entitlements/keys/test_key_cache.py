"""The per-process key cache: no round trip for a known key, and a key changed anywhere forgotten at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from entitlements.keys import KeyCache, create_key, queries, revoke_key
from entitlements.keys import cache as key_cache_module
from entitlements.keys.cache import LISTENER_APPLICATION_NAME

NOTIFICATION_WAIT_S = 2.0
ACKNOWLEDGED_WAIT_S = 10.0


@pytest.fixture
async def cache(database_url: str) -> AsyncIterator[KeyCache]:
    key_cache = KeyCache(ttl_s=600, entries_max=3)
    key_cache.start(database_url)
    for _ in range(200):
        if key_cache.listening:
            break
        await asyncio.sleep(0.01)
    assert key_cache.listening
    yield key_cache
    await key_cache.close()


async def until_refused(cache: KeyCache, pool: asyncpg.Pool, raw_key: str) -> float:
    """Seconds until the cache refuses the key (at most NOTIFICATION_WAIT_S)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < NOTIFICATION_WAIT_S:
        if await cache.find(pool, raw_key) is None:
            return loop.time() - started
        await asyncio.sleep(0.001)
    raise AssertionError("the revoked key was still accepted")


async def test_a_cached_key_costs_no_statement(cache: KeyCache, pool: asyncpg.Pool) -> None:
    created = await create_key(pool, role="service", name="cached")
    first = await cache.find(pool, created.key)
    assert first is not None
    assert first.key_id == created.api_key.id
    entries_before = dict(cache._entries)
    again = await cache.find(pool, created.key)
    assert again is first  # the same object: served from memory
    assert cache._entries == entries_before


async def test_a_key_revoked_by_another_process_is_refused_once_the_notification_arrives(
    cache: KeyCache, pool: asyncpg.Pool, database_url: str
) -> None:
    created = await create_key(pool, role="service", name="soon-revoked")
    assert await cache.find(pool, created.key) is not None
    # Another process: its own connection, its own transaction.
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", created.api_key.id)
    finally:
        await other.close()
    await until_refused(cache, pool, created.key)


async def test_revocation_through_the_service_and_deletion_by_hand_are_heard_too(
    cache: KeyCache, pool: asyncpg.Pool
) -> None:
    revoked = await create_key(pool, role="support", name="revoked")
    deleted = await create_key(pool, role="finance", name="deleted")
    assert await cache.find(pool, revoked.key) is not None
    assert await cache.find(pool, deleted.key) is not None
    await revoke_key(pool, revoked.api_key.id)
    await pool.execute("DELETE FROM api_keys WHERE id = $1", deleted.api_key.id)
    await until_refused(cache, pool, revoked.key)
    await until_refused(cache, pool, deleted.key)


async def test_stamping_last_use_does_not_empty_the_cache(cache: KeyCache, pool: asyncpg.Pool) -> None:
    created = await create_key(pool, role="service", name="busy")
    caller = await cache.find(pool, created.key)
    await pool.execute("UPDATE api_keys SET last_used_at = now() - interval '1 hour' WHERE id = $1", caller.key_id)
    await asyncio.sleep(0.2)  # a notification, had there been one, has arrived by now
    assert await cache.find(pool, created.key) is caller


async def test_without_its_listener_the_cache_trusts_nothing(pool: asyncpg.Pool) -> None:
    # Never started: nothing is remembered, so a revocation by any means is seen at the next request.
    deaf = KeyCache(ttl_s=600, entries_max=10)
    created = await create_key(pool, role="service", name="unheard")
    assert await deaf.find(pool, created.key) is not None
    assert deaf._entries == {}
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", created.api_key.id)
    assert await deaf.find(pool, created.key) is None


async def test_a_lost_listener_connection_empties_the_cache_until_it_listens_again(
    cache: KeyCache, pool: asyncpg.Pool
) -> None:
    created = await create_key(pool, role="service", name="through-an-outage")
    assert await cache.find(pool, created.key) is not None
    assert cache._entries
    await pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
    )
    for _ in range(200):
        if not cache.listening:
            break
        await asyncio.sleep(0.005)
    assert not cache._entries
    # While deaf, a revocation is read from the database; once it listens again, caching resumes.
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", created.api_key.id)
    assert await cache.find(pool, created.key) is None
    for _ in range(400):
        if cache.listening:
            break
        await asyncio.sleep(0.01)
    assert cache.listening


async def test_the_cache_is_bounded_and_an_expired_entry_is_read_again(pool: asyncpg.Pool, database_url: str) -> None:
    short = KeyCache(ttl_s=0, entries_max=2)
    short.start(database_url)
    try:
        for _ in range(200):
            if short.listening:
                break
            await asyncio.sleep(0.01)
        keys = [await create_key(pool, role="service", name=f"k{number}") for number in range(4)]
        for created in keys:
            assert await short.find(pool, created.key) is not None
        assert len(short._entries) == 2
        # ttl_s=0: every entry is stale at once, so a revocation needs no notification at all.
        await pool.execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify_update")
        await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", keys[-1].api_key.id)
        assert await short.find(pool, keys[-1].key) is None
    finally:
        await pool.execute("ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify_update")
        await short.close()


async def test_a_revocation_answers_only_once_every_listening_process_has_forgotten_the_key(
    cache: KeyCache, pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's listener, played by hand: it hears the revocation but has not said it forgot
    the key, so the revocation has not answered; it answers as soon as that listener says so (long
    before its bound, raised here so that only the acknowledgement can end the wait)."""
    monkeypatch.setattr(key_cache_module, "HEARD_WAIT_S", ACKNOWLEDGED_WAIT_S * 3)
    created = await create_key(pool, role="service", name="two-listeners")
    heard: asyncio.Queue[str] = asyncio.Queue()
    other = await asyncpg.connect(database_url, server_settings={"application_name": LISTENER_APPLICATION_NAME})
    try:
        await other.add_listener(queries.KEYS_CHANNEL, lambda *args: heard.put_nowait(str(args[3])))

        async def revoke() -> None:
            async with cache.change_heard(created.api_key.id, pool):
                await revoke_key(pool, created.api_key.id)

        revocation = asyncio.create_task(revoke())
        assert await asyncio.wait_for(heard.get(), NOTIFICATION_WAIT_S) == str(created.api_key.id)
        # This process has heard it too and said so (its own acknowledgement), yet it still waits.
        await asyncio.sleep(0.1)
        assert not revocation.done()
        await other.execute(queries.ACKNOWLEDGE, queries.HEARD_CHANNEL, str(created.api_key.id))
        await asyncio.wait_for(revocation, ACKNOWLEDGED_WAIT_S)
    finally:
        await other.close()
