"""Each process remembers the API keys it has seen, so a request costs no database round trip for its key.

Revocation is still seen at once: every change to a key row notifies `moments_api_keys` on commit (a
trigger, migrations/0005), and a listener connection of each process drops that key, then says so on
`moments_api_keys_heard`. A revocation through the API answers once as many processes have said so as
were listening when it began (at most HEARD_WAIT_S later): a notification reaches each listener when
PostgreSQL's backend serving it is next scheduled, so without the acknowledgements another process
could still serve the key for a moment after the answer on a busy machine. The cache trusts itself only
while it listens: until the listener is connected, after it drops, or once an entry is `ttl_s` old, keys
are read from PostgreSQL. A read that raced a notification is not stored (the invalidation counter moved
during the read), so a revoked key cannot slip back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from entitlements.keys import queries
from entitlements.keys.service import LAST_USED_RESOLUTION_S, Caller, hash_key, row_to_caller

log = structlog.get_logger("moments.keys.cache")
LISTEN_RETRY_S = 1.0
# How long a revocation waits for the listeners' acknowledgements, at most (a listener counted but gone).
HEARD_WAIT_S = 1.0
LISTEN_CONNECT_TIMEOUT_S = 5.0
# How the listener's connection is told apart in pg_stat_activity (the pools' are `moments`).
LISTENER_APPLICATION_NAME = "moments-key-listener"


@dataclass(eq=False)
class _Waiter:
    """A change waiting for `needed` listeners to acknowledge it."""

    needed: int
    heard: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self) -> None:
        self.heard += 1
        if self.heard >= self.needed:
            self.done.set()


class KeyCache:
    def __init__(self, *, ttl_s: float, entries_max: int) -> None:
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._entries: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()
        self._invalidations = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._acknowledger: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._expected: dict[int, list[_Waiter]] = {}
        self._acknowledgements: asyncio.Queue[tuple[asyncpg.Connection[Any], int]] = asyncio.Queue()

    @property
    def listening(self) -> bool:
        return self._listening

    async def find(self, pool: asyncpg.Pool, raw_key: str) -> Caller | None:
        key_hash = hash_key(raw_key)
        now = time.monotonic()
        entry = self._entries.get(key_hash)
        if entry is not None and self._listening and now - entry[1] < self._ttl_s:
            return entry[0]
        invalidations = self._invalidations
        row = await pool.fetchrow(queries.FIND_CALLER, key_hash, LAST_USED_RESOLUTION_S)
        if row is None:
            self._entries.pop(key_hash, None)
            return None
        caller = row_to_caller(row)
        if self._listening and invalidations == self._invalidations:
            self._entries[key_hash] = (caller, now)
            self._entries.move_to_end(key_hash)
            while len(self._entries) > self._entries_max:
                self._entries.popitem(last=False)
        return caller

    def forget(self, key_id: int | None) -> None:
        """Drops `key_id` (every key when None): it changed, or the listener cannot vouch for anything."""
        self._invalidations += 1
        if key_id is None:
            self._entries.clear()
            return
        for key_hash in [key_hash for key_hash, (caller, _) in self._entries.items() if caller.key_id == key_id]:
            del self._entries[key_hash]

    def start(self, dsn: str) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(dsn), name="api-key-listener")
            self._acknowledger = asyncio.create_task(self._acknowledge_forever(), name="api-key-acknowledger")

    async def close(self) -> None:
        for task in (self._task, self._acknowledger):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._acknowledger = None
        self._stop_trusting()

    def _stop_trusting(self) -> None:
        self._listening = False
        self.forget(None)

    def _on_notification(self, connection: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            key_id = int(str(payload))
        except ValueError:
            key_id = None
        self.forget(key_id)
        if key_id is not None:
            # Forgotten: now say so, for the process that made the change.
            self._acknowledgements.put_nowait((connection, key_id))

    def _on_heard(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):
            for waiter in self._expected.get(int(str(payload)), []):
                waiter.count()

    async def _acknowledge_forever(self) -> None:
        """One acknowledgement at a time on the listener's connection (it runs one statement at a time)."""
        while True:
            connection, key_id = await self._acknowledgements.get()
            if not connection.is_closed():
                with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await connection.execute(queries.ACKNOWLEDGE, queries.HEARD_CHANNEL, str(key_id))

    @contextlib.asynccontextmanager
    async def change_heard(self, key_id: int, pool: asyncpg.Pool) -> AsyncIterator[None]:
        """Around a change to a key: on leaving, waits (at most HEARD_WAIT_S) until every process that was
        listening when it began (this one included) has forgotten the key and said so. A process that
        starts listening later starts with an empty cache. So when a revocation answers, no process
        serves the key any more."""
        needed = await pool.fetchval(queries.COUNT_LISTENERS, LISTENER_APPLICATION_NAME) if self._listening else 0
        waiter = _Waiter(needed=max(int(needed or 0), 1))
        self._expected.setdefault(key_id, []).append(waiter)
        try:
            yield
            self.forget(key_id)
            if self._listening:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.done.wait(), HEARD_WAIT_S)
        finally:
            waiting = self._expected.get(key_id, [])
            if waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._expected[key_id]

    def _on_termination(self, _connection: Any) -> None:
        self._stop_trusting()
        self._lost.set()

    async def _listen_forever(self, dsn: str) -> None:
        while True:
            connection: asyncpg.Connection[Any] | None = None
            try:
                self._lost.clear()
                # A session of its own (DATABASE_DIRECT_URL): LISTEN lasts as long as the session does, which a
                # transaction-mode pooler would end with the LISTEN's own transaction.
                connection = await asyncpg.connect(
                    dsn,
                    timeout=LISTEN_CONNECT_TIMEOUT_S,
                    server_settings={"application_name": LISTENER_APPLICATION_NAME},
                )
                connection.add_termination_listener(self._on_termination)
                await connection.add_listener(queries.HEARD_CHANNEL, self._on_heard)
                await connection.add_listener(queries.KEYS_CHANNEL, self._on_notification)
                # Whatever changed while nobody listened is unknown: start from an empty cache.
                self.forget(None)
                self._listening = True
                await self._lost.wait()
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("api_key_listener_down", error=repr(error))
            finally:
                self._stop_trusting()
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=LISTEN_CONNECT_TIMEOUT_S)
            await asyncio.sleep(LISTEN_RETRY_S)
