"""Group commit: many callers' operations share one database transaction.

A hot user's operations cannot beat one row update per commit unless they share commits, so callers
queue their operations and a few committer tasks each take everything queued (up to a bound), execute
it as one batch and commit once. Users are sharded over the committers: batches in flight at once never
share a user, so they never wait for each other's row locks, and one committer's Python runs while
another's statements run in PostgreSQL. Every caller gets its own result or error, and only after the commit
that holds its operation. A batch that fails as a whole (a lost race on an idempotency key, a deadlock
with another process) is retried; if it keeps failing, each operation runs alone so that one bad
operation never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import structlog

from ledger.companions import Companion
from ledger.engine import Connection, Engine, Outcome
from ledger.operations import AnyOperation, LedgerUnavailable

# What a caller queues: an operation alone, or a companion with its operation (ledger/companions.py);
# what it gets back: the operation's outcome, or the companion, settled.
Item = AnyOperation | Companion
Answer = Outcome | Companion

log = structlog.get_logger("moments.ledger.batcher")

# PostgreSQL errors after which the same batch may well succeed: a concurrent insert of the same
# idempotency key, a deadlock or serialization failure between processes, a lock or statement timeout.
RETRYABLE_SQLSTATES = {"23505", "40P01", "40001", "55P03", "57014"}


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    batch_size_max: int = 512
    committers: int = 3
    batch_attempts_max: int = 3
    queue_size_max: int = 20_000
    # Told of each committed batch: its size and seconds from BEGIN to COMMIT (the service's metrics).
    observe_batch: Callable[[int, float], None] | None = None


class Batcher:
    def __init__(self, pool: asyncpg.Pool, engine: Engine, settings: BatchSettings | None = None) -> None:
        self._pool = pool
        self._engine = engine
        self._settings = settings or BatchSettings()
        queue_size_max = max(1, self._settings.queue_size_max // self._settings.committers)
        self._queues: list[asyncio.Queue[tuple[Item, asyncio.Future[Answer]]]] = [
            asyncio.Queue(queue_size_max) for _ in range(self._settings.committers)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._commit_loop(queue), name=f"ledger-committer-{number}")
                for number, queue in enumerate(self._queues)
            ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for queue in self._queues:
            waiting = []
            while not queue.empty():
                waiting.append(queue.get_nowait())
            _fail(waiting, LedgerUnavailable("the ledger is shutting down"))

    async def submit(self, operation: AnyOperation) -> Outcome:
        answer = await self._submit(operation, operation.user_id)
        assert not isinstance(answer, Companion)
        return answer

    async def submit_companion(self, companion: Companion) -> Companion:
        """Runs the companion and its operation in a batch; returns it settled, after the commit."""
        answer = await self._submit(companion, companion.operation.user_id)
        assert answer is companion
        return companion

    async def _submit(self, item: Item, user_id: str) -> Answer:
        assert self._tasks, "Batcher.start() first"
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        # str hashes are stable within a process, which is all the sharding needs.
        queue = self._queues[hash(user_id) % len(self._queues)]
        await queue.put((item, future))
        return await future

    async def _commit_loop(self, queue: asyncio.Queue[tuple[Item, asyncio.Future[Answer]]]) -> None:
        batch: list[tuple[Item, asyncio.Future[Answer]]] = []
        try:
            while True:
                batch = [await queue.get()]
                # One turn of the event loop: callers answered by the last commit queue their next operations.
                await asyncio.sleep(0)
                while len(batch) < self._settings.batch_size_max and not queue.empty():
                    batch.append(queue.get_nowait())
                try:
                    await self._run(batch)
                except Exception as error:  # the loop must survive anything; callers get the error
                    log.exception("ledger_batch_failed", size=len(batch))
                    _fail(batch, LedgerUnavailable(f"ledger batch failed: {error!r}"))
        except asyncio.CancelledError:
            # Shutting down mid-batch: whether it committed is unknown, so its callers must retry with the
            # same keys (which replay what did commit) rather than wait forever.
            _fail(batch, LedgerUnavailable("the ledger is shutting down"))
            raise

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Answer]]]) -> None:
        items = [item for item, _ in batch]
        for attempt in range(1, self._settings.batch_attempts_max + 1):
            answered = False
            try:
                async with self._pool.acquire() as connection:
                    outcomes = await self._execute(connection, items)
                    # Committed: answer now, not after the pool has reset the connection.
                    for (_, future), outcome in zip(batch, outcomes, strict=True):
                        if not future.done():
                            future.set_result(outcome)
                    answered = True
                return
            except Exception as error:
                if answered:  # returning the connection failed; the batch itself committed
                    log.warning("ledger_connection_release_failed", error=repr(error))
                    return
                if not isinstance(error, asyncpg.PostgresError):
                    raise
                if error.sqlstate not in RETRYABLE_SQLSTATES:
                    break
                log.info("ledger_batch_retry", attempt=attempt, sqlstate=error.sqlstate, size=len(batch))
        if len(batch) == 1:
            _fail(batch, LedgerUnavailable("the database refused the operation"))
            return
        # Isolate whatever makes the batch fail: each operation alone.
        for item in batch:
            await self._run([item])

    async def _execute(self, connection: Connection, items: list[Item]) -> list[Answer]:
        """One database transaction for the batch; returns once it has committed."""
        # BEGIN and the transaction's settings in one round trip.
        began = time.perf_counter()
        await connection.execute(f"BEGIN; {self._engine.settings_sql}")
        try:
            answers = await self._apply(connection, items)
            # COMMIT of a transaction that failed is answered ROLLBACK, not an error.
            status = await connection.execute("COMMIT")
            if status != "COMMIT":
                raise LedgerUnavailable(f"the batch's transaction ended with {status}")
        except BaseException:
            if not connection.is_closed() and connection.is_in_transaction():
                with contextlib.suppress(Exception):
                    await connection.execute("ROLLBACK")
            raise
        if self._settings.observe_batch is not None:
            self._settings.observe_batch(len(items), time.perf_counter() - began)
        return answers

    async def _apply(self, connection: Connection, items: list[Item]) -> list[Answer]:
        """The companions' `prepare`, the ledger operations still going, the companions' `finish`."""
        groups: dict[type[Companion], list[Companion]] = {}
        for item in items:
            if isinstance(item, Companion):
                item.reset()  # a retried batch starts over
                groups.setdefault(type(item), []).append(item)
        for kind, companions in groups.items():
            await kind.prepare(connection, companions)
        running = [index for index, item in enumerate(items) if not (isinstance(item, Companion) and item.settled)]
        operations = [_operation_of(items[index]) for index in running]
        outcomes = await self._engine.execute(connection, operations, planned=True) if operations else []
        answers: list[Answer | None] = [item if isinstance(item, Companion) else None for item in items]
        for index, outcome in zip(running, outcomes, strict=True):
            item = items[index]
            if isinstance(item, Companion):
                item.outcome = outcome
            else:
                answers[index] = outcome
        for kind, companions in groups.items():
            await kind.finish(connection, companions)
        return [answer for answer in answers if answer is not None]


def _operation_of(item: Item) -> AnyOperation:
    return item.operation if isinstance(item, Companion) else item


def _fail(items: list[tuple[Item, asyncio.Future[Answer]]], error: LedgerUnavailable) -> None:
    """Answers every caller in `items` not answered yet with `error`."""
    for _, future in items:
        if not future.done():
            future.set_exception(error)
