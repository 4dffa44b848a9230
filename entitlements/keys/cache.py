"""Each process remembers the API keys it has seen, so a request costs no database round trip for its key.

Revocation is still seen at once: every change to a key row notifies `moments_api_keys` on commit (a
trigger, migrations/0005), and a listener connection of each process drops that key. The cache trusts
itself only while it listens: until the listener is connected, after it drops, or once an entry is
`ttl_s` old, keys are read from PostgreSQL. A read that raced a notification is not stored (the
invalidation counter moved during the read), so a revoked key cannot slip back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import structlog

from entitlements.keys import queries
from entitlements.keys.service import LAST_USED_RESOLUTION_S, Caller, hash_key, row_to_caller

log = structlog.get_logger("moments.keys.cache")
LISTEN_RETRY_S = 1.0
# How long a revocation waits for its own notification to come back, at most.
HEARD_WAIT_S = 1.0
LISTEN_CONNECT_TIMEOUT_S = 5.0


class KeyCache:
    def __init__(self, *, ttl_s: float, entries_max: int) -> None:
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._entries: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()
        self._invalidations = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._expected: dict[int, list[asyncio.Event]] = {}

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

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._stop_trusting()

    def _stop_trusting(self) -> None:
        self._listening = False
        self.forget(None)

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            key_id = int(str(payload))
        except ValueError:
            key_id = None
        self.forget(key_id)
        for heard in self._expected.pop(key_id, []) if key_id is not None else []:
            heard.set()

    @contextlib.asynccontextmanager
    async def change_heard(self, key_id: int) -> AsyncIterator[None]:
        """Around a change to a key: on leaving, waits (at most HEARD_WAIT_S) until this process has heard
        the change's notification, which every listening process is sent at the same commit. So when a
        revocation answers, the other processes have heard of it too, but for one still busy reading."""
        heard = asyncio.Event()
        self._expected.setdefault(key_id, []).append(heard)
        try:
            yield
            self.forget(key_id)
            if self._listening:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard.wait(), HEARD_WAIT_S)
        finally:
            waiting = self._expected.get(key_id, [])
            if heard in waiting:
                waiting.remove(heard)
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
                connection = await asyncpg.connect(dsn, timeout=LISTEN_CONNECT_TIMEOUT_S)
                connection.add_termination_listener(self._on_termination)
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
