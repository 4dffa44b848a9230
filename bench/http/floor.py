"""The floors of the HTTP ratios: the bare app's stack (granian, Litestar, msgspec) plus the least database work
each Moments endpoint must do, and nothing else (no auth, middleware, validation beyond the Struct, rules).

- `GET /read/{user}` and `POST /read/{user}`: one pooled asyncpg read of one row by primary key. The floor of
  `GET /v1/users/{id}/entitlements`, whose balance must be read fresh (and of any request that reads a row).
- `POST /write/{user}`: one durable single-row INSERT in its own transaction (the server's
  synchronous_commit, on as Moments runs), carrying a unique key as every money write's idempotency does.
  The floor of one write per request, committed per request (grants today).
- `POST /group/{user}`: the same row through a minimal group commit: callers' rows wait in a queue, a
  committer writes all that are waiting in one INSERT (one transaction), and each caller is answered only
  after the commit that holds its row. The floor of a request that must be durable before its answer when
  commits are shared (generations through the ledger's batch).

A figure of one of these that is below a goal's share of the bare POST shows the goal cannot be met on this
stack and machine by any endpoint that does at least that much: the endpoint does strictly more.
The tables are the bench's own (`prepare`), in Moments' database, so both share one PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
import msgspec
from litestar import Litestar, get, post
from litestar.params import Parameter

from bench.http.bare import Small

# The header as a plain parameter: what the floor needs of it, no more.
IdempotencyKey = Annotated[str, Parameter(header="Idempotency-Key")]
# The pool as Moments opens it (entitlements/settings.py's DB_POOL_SIZE_MAX default, no RESET on release).
POOL_SIZE_MAX = 20
COMMITTERS = int(os.environ.get("FLOOR_COMMITTERS", "2"))
BATCH_ROWS_MAX = 512

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bench_floor_accounts (user_id text PRIMARY KEY, available bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bench_floor_writes (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE,"
    " user_id text NOT NULL, amount bigint NOT NULL)",
)
READ = "SELECT available FROM bench_floor_accounts WHERE user_id = $1"
WRITE = "INSERT INTO bench_floor_writes (key, user_id, amount) VALUES ($1, $2, $3)"
WRITE_MANY = (
    "INSERT INTO bench_floor_writes (key, user_id, amount) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])"
)


class Balance(msgspec.Struct, frozen=True):
    user_id: str
    available: int


class Written(msgspec.Struct, frozen=True):
    user_id: str
    key: str


async def prepare(dsn: str, users: list[str], funds: int) -> None:
    """The floor's tables, one account row per user."""
    connection = await asyncpg.connect(dsn)
    try:
        for statement in SCHEMA:
            await connection.execute(statement)
        await connection.executemany(
            "INSERT INTO bench_floor_accounts VALUES ($1, $2) ON CONFLICT DO NOTHING", [(u, funds) for u in users]
        )
    finally:
        await connection.close()


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """As Moments' pool: no RESET ALL round trip when a connection goes back."""


class GroupCommit:
    """The least a group commit does: queue, one INSERT of everything waiting per transaction, answer after
    the commit. `COMMITTERS` batches may be in flight at once, so one batch's Python overlaps another's
    flush (the ledger's batcher runs three)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[str, str, int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(COMMITTERS)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._flushes: set[asyncio.Task[None]] = set()

    async def write(self, key: str, user_id: str, amount: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, user_id, amount, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await self._slots.acquire()
            # One loop turn, so the callers already woken add their rows to this batch.
            await asyncio.sleep(0)
            batch, self._waiting = self._waiting[:BATCH_ROWS_MAX], self._waiting[BATCH_ROWS_MAX:]
            if not self._waiting:
                self._wake.clear()
            if not batch:
                self._slots.release()
                continue
            flush = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[str, str, int, asyncio.Future[None]]]) -> None:
        try:
            async with self._pool.acquire() as connection:
                await connection.execute(
                    WRITE_MANY, [row[0] for row in batch], [row[1] for row in batch], [row[2] for row in batch]
                )
        except Exception as error:  # every caller of the batch hears it; the floor never retries
            for *_, done in batch:
                if not done.done():
                    done.set_exception(error)
        else:
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)
        finally:
            self._slots.release()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, *self._flushes, return_exceptions=True)


class _Database:
    """The process's pool and group commit, read by the handlers directly: a `State` parameter would add
    Litestar's per-request work that Moments itself avoids (entitlements/http/dependencies.py)."""

    pool: asyncpg.Pool
    group: GroupCommit


_db = _Database()


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=POOL_SIZE_MAX, reset=_no_reset)
    _db.pool, _db.group = pool, GroupCommit(pool)
    try:
        yield
    finally:
        await _db.group.close()
        await pool.close()


async def _read(user: str) -> Balance:
    async with _db.pool.acquire() as connection:
        available = await connection.fetchval(READ, user)
    return Balance(user_id=user, available=available)


@get("/read/{user:str}")
async def read_get(user: str) -> Balance:
    return await _read(user)


@post("/read/{user:str}", status_code=200)
async def read_post(user: str, data: Small) -> Balance:
    return await _read(user)


@post("/write/{user:str}", status_code=201)
async def write(user: str, data: Small, idempotency_key: IdempotencyKey) -> Written:
    # One statement outside a transaction block is its own transaction: BEGIN, INSERT, COMMIT, one flush.
    async with _db.pool.acquire() as connection:
        await connection.execute(WRITE, idempotency_key, user, data.duration_s)
    return Written(user_id=user, key=idempotency_key)


@post("/group/{user:str}", status_code=201)
async def group(user: str, data: Small, idempotency_key: IdempotencyKey) -> Written:
    await _db.group.write(idempotency_key, user, data.duration_s)
    return Written(user_id=user, key=idempotency_key)


def create_floor_app() -> Litestar:
    return Litestar(
        route_handlers=[read_get, read_post, write, group],
        openapi_config=None,
        logging_config=None,
        lifespan=[lifespan],
    )
