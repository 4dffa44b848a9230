"""The ledger's side: pre-funding, and many concurrent callers each looping hold → capture.

Batch sizes and batch timings are observed by wrapping the ledger's engine (and, when present, the
batcher's per-batch transaction) from outside; nothing in `ledger/` is changed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.ledger import cpu
from ledger import Capture, Credit, Hold, Ledger, LedgerRuleError, LedgerUnavailable

ACTOR = "bench"
HOLD_AMOUNT = 10
HOLD_LIFETIME = timedelta(minutes=15)
FUNDING_CONCURRENCY = 2_000
# The database's work, counted by PostgreSQL itself (flushed by each backend about once a second):
# buffers touched, rows read and WAL written (the server's, so it counts the ledger only while it runs
# alone; full-page images as counted by pg_stat_wal). Unlike CPU time, these do not grow when other
# programs share the machine.
DATABASE_WORK = """
SELECT blks_hit + blks_read AS buffers, tup_returned + tup_fetched AS tuples,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal_bytes,
       (SELECT wal_fpi FROM pg_stat_wal) AS wal_full_pages
FROM pg_stat_database WHERE datname = current_database()
"""


@dataclass
class BatchProbe:
    """Counts the batches the engine executes and times them: the engine's work (reads, rules, writes)
    and, around it, the batch's whole database transaction (BEGIN + engine + COMMIT)."""

    measuring: bool = False
    sizes: list[int] = field(default_factory=list)
    engine_s: list[float] = field(default_factory=list)
    engine_cpu_s: list[float] = field(default_factory=list)
    batch_s: list[float] = field(default_factory=list)

    def attach(self, led: Ledger) -> None:
        engine_execute = led.engine.execute

        async def timed_engine(connection: Any, operations: Sequence[Any], **kwargs: Any) -> Any:
            started, cpu_started = time.perf_counter(), time.process_time()
            try:
                return await engine_execute(connection, operations, **kwargs)
            finally:
                if self.measuring:
                    self.sizes.append(len(operations))
                    self.engine_s.append(time.perf_counter() - started)
                    # This process's CPU meanwhile: the engine's own Python (and anything else the event
                    # loop ran while the engine awaited the database, little when batches run in lock step).
                    self.engine_cpu_s.append(time.process_time() - cpu_started)

        led.engine.execute = timed_engine  # type: ignore[method-assign]
        batcher = getattr(led, "_batcher", None)
        batch_execute: Callable[[Any, list[Any]], Awaitable[Any]] | None = getattr(batcher, "_execute", None)
        if batcher is None or batch_execute is None:
            return
        inner = batch_execute

        async def timed_batch(connection: Any, operations: list[Any]) -> Any:
            started = time.perf_counter()
            try:
                return await inner(connection, operations)
            finally:
                if self.measuring:
                    self.batch_s.append(time.perf_counter() - started)

        batcher._execute = timed_batch

    def summary(self) -> BatchSummary:
        sizes = self.sizes or [0]
        return BatchSummary(
            batches=len(self.sizes),
            mean_size=statistics.fmean(sizes),
            max_size=max(sizes),
            engine_ms=1000 * statistics.fmean(self.engine_s) if self.engine_s else 0.0,
            engine_cpu_ms=1000 * statistics.fmean(self.engine_cpu_s) if self.engine_cpu_s else 0.0,
            batch_ms=1000 * statistics.fmean(self.batch_s) if self.batch_s else 0.0,
            engine_busy_s=sum(self.engine_s),
            batch_busy_s=sum(self.batch_s),
        )


@dataclass(frozen=True, kw_only=True)
class BatchSummary:
    batches: int
    mean_size: float
    max_size: int
    engine_ms: float
    engine_cpu_ms: float
    batch_ms: float
    engine_busy_s: float
    batch_busy_s: float


@dataclass(frozen=True, kw_only=True)
class LifecycleResult:
    name: str
    users: int
    callers: int
    measured_s: float
    lifecycles: int
    lifecycles_total: int
    errors: dict[str, int]
    per_second: list[float]
    latency_p50_ms: float
    latency_p99_ms: float
    batches: BatchSummary
    cpu: cpu.CpuUsage
    buffers_per_operation: float = 0.0
    tuples_per_operation: float = 0.0
    wal_bytes_per_operation: float = 0.0
    wal_full_pages_per_operation: float = 0.0
    captured_in_database: int | None = None

    @property
    def per_s(self) -> float:
        return self.lifecycles / self.measured_s


def user_ids(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{number:05d}" for number in range(count)]


async def fund(led: Ledger, users: Sequence[str], amount: int, run_id: str) -> float:
    """One grant per user through the ledger's group commit (many per batch); returns seconds taken."""
    started = time.perf_counter()
    for first in range(0, len(users), FUNDING_CONCURRENCY):
        chunk = users[first : first + FUNDING_CONCURRENCY]
        await asyncio.gather(
            *(
                led.submit(
                    Credit(
                        key=f"{run_id}:fund:{user}",
                        user_id=user,
                        actor=ACTOR,
                        reason="benchmark funding",
                        amount=amount,
                        kind="grant",
                        category="promotional",
                    )
                )
                for user in chunk
            )
        )
    return time.perf_counter() - started


async def lifecycles(
    led: Ledger,
    probe: BatchProbe,
    *,
    name: str,
    users: Sequence[str],
    callers: int,
    warmup_s: float,
    duration_s: float,
    run_id: str,
    postmaster_pid: int | None,
) -> LifecycleResult:
    """`callers` tasks loop hold → capture on random users until told to stop; lifecycles completed
    inside the measured window (after the warm-up) are counted, errors separately."""
    completed = 0
    measuring = False
    stopping = False
    latencies: list[float] = []
    per_second: list[float] = []
    errors: Counter[str] = Counter()

    async def caller(number: int) -> None:
        nonlocal completed
        chooser = random.Random(number)
        sequence = 0
        while not stopping:
            user = chooser.choice(users)
            key = f"{run_id}:{name}:{number}:{sequence}"
            sequence += 1
            started = time.perf_counter()
            try:
                held = await led.submit(
                    Hold(
                        key=f"{key}:h",
                        user_id=user,
                        actor=ACTOR,
                        amount=HOLD_AMOUNT,
                        expires_at=datetime.now(UTC) + HOLD_LIFETIME,
                    )
                )
                assert held.hold_id is not None
                await led.submit(Capture(key=f"{key}:c", user_id=user, actor=ACTOR, hold_id=held.hold_id))
            except (LedgerRuleError, LedgerUnavailable) as error:
                errors[type(error).__name__] += 1
                await asyncio.sleep(0)
                continue
            completed += 1
            if measuring:
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(caller(number)) for number in range(callers)]
    try:
        await asyncio.sleep(warmup_s)
        measuring = probe.measuring = True
        errors.clear()
        work_start = await led.pool.fetchrow(DATABASE_WORK)
        first, cpu_start = completed, cpu.sample(postmaster_pid)
        # Second by second too, to show whether throughput holds up as the tables grow.
        deadline = cpu_start.at_s + duration_s
        previous, previous_at = first, cpu_start.at_s
        while (left := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(min(1.0, left))
            now = time.perf_counter()
            if now - previous_at >= 0.5:
                per_second.append((completed - previous) / (now - previous_at))
                previous, previous_at = completed, now
        last, cpu_end = completed, cpu.sample(postmaster_pid)
        measuring = probe.measuring = False
        work_end = await led.pool.fetchrow(DATABASE_WORK)
        window_errors = dict(errors)
    finally:
        stopping = True
        # Every caller finishes the lifecycle it is in: nothing is left waiting on the ledger.
        await asyncio.gather(*tasks, return_exceptions=True)
    ordered = sorted(latencies) or [0.0]
    usage = cpu.usage(cpu_start, cpu_end)
    operations = max(2 * (last - first), 1)
    assert work_start is not None
    assert work_end is not None
    return LifecycleResult(
        name=name,
        users=len(users),
        callers=callers,
        measured_s=usage.wall_s,
        lifecycles=last - first,
        lifecycles_total=completed,
        errors=window_errors,
        per_second=per_second,
        latency_p50_ms=1000 * ordered[len(ordered) // 2],
        latency_p99_ms=1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        batches=probe.summary(),
        cpu=usage,
        buffers_per_operation=(work_end["buffers"] - work_start["buffers"]) / operations,
        tuples_per_operation=(work_end["tuples"] - work_start["tuples"]) / operations,
        wal_bytes_per_operation=(work_end["wal_bytes"] - work_start["wal_bytes"]) / operations,
        wal_full_pages_per_operation=(work_end["wal_full_pages"] - work_start["wal_full_pages"]) / operations,
    )
