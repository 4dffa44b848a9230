"""Admission control: a generation is refused before any moment is held when the workers cannot render it
before its hold would expire.

Every process reads the same figures from PostgreSQL (the queue is shared), at most once per
`ADMISSION_REFRESH_S`: how many jobs are not done, how long the oldest queued generation has waited, how
many jobs ended in the last `ADMISSION_WINDOW_S` (the workers' throughput, whatever their number) and
how long their renders took. A new job joins the back of the queue, so it is expected to start after
depth ÷ throughput seconds and to take the mean render time; when that, or the wait of the oldest job
already queued, is more than `HOLD_SHARE` of a hold's lifetime, the request is refused with 503 and
the estimated wait in `Retry-After`. The same figures tell the dispatcher how long a render takes, so
it never starts one that cannot end before its hold expires (dispatcher.py).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Gauge

from entitlements.errors import Overloaded
from entitlements.generations import queries
from entitlements.settings import GenerationSettings

# A new job may be expected to spend this share of its hold's lifetime waiting and rendering; the rest
# absorbs the estimate's error (throughput changes, retries).
HOLD_SHARE = 0.8
RETRY_AFTER_S_MIN = 1
RETRY_AFTER_S_MAX = 60
# Retry-After when nothing finished in the window (the throughput is unknown).
RETRY_AFTER_S_UNKNOWN = 5

QUEUE_DEPTH = Gauge("moments_generation_queue_depth", "Generation jobs not done (queued or rendering)")
QUEUE_OLDEST = Gauge("moments_generation_queue_oldest_seconds", "Wait so far of the oldest queued generation")
THROUGHPUT = Gauge(
    "moments_generation_throughput_per_second", "Generation jobs ended per second over ADMISSION_WINDOW_S"
)
HOLDS_OPEN = Gauge("moments_holds_open", "Holds not yet captured, voided or expired")
HELD_MOMENTS = Gauge("moments_held_moments", "Moments in open holds")
REFUSED = Counter("moments_generations_refused", "Generations refused by admission control (this process)")


@dataclass(frozen=True, kw_only=True)
class QueueStats:
    depth: int
    oldest_queued_s: float
    finished: int
    render_avg_s: float | None
    holds_open: int
    held_moments: int


def render_estimate_s(stats: QueueStats, settings: GenerationSettings) -> float:
    """How long a render is expected to take: the window's mean, else one poll (nothing measured yet)."""
    measured = stats.render_avg_s if stats.render_avg_s is not None else 0.0
    return min(max(measured, settings.poll_interval_s), float(settings.render_timeout_s))


def refusal(stats: QueueStats, settings: GenerationSettings, *, admitted_since_read: int = 0) -> int | None:
    """None to admit a new generation; else the seconds to put in Retry-After. Pure."""
    depth = stats.depth + admitted_since_read
    # An empty queue is never refused, whatever the floor: the first job is how throughput is measured.
    if depth < max(settings.admission_queue_depth_min, 1):
        return None
    throughput_per_s = stats.finished / settings.admission_window_s
    if depth >= settings.admission_queue_depth_max:
        return _retry_after_s(depth - settings.admission_queue_depth_max + 1, throughput_per_s)
    if throughput_per_s == 0:
        # Nothing ended in the window: the workers may be down; queue no more than the floor.
        return RETRY_AFTER_S_UNKNOWN
    budget_s = settings.hold_ttl_s * HOLD_SHARE - render_estimate_s(stats, settings)
    if stats.oldest_queued_s >= budget_s:
        return _retry_after_s(depth, throughput_per_s)
    acceptable_depth = budget_s * throughput_per_s
    if depth >= acceptable_depth:
        return _retry_after_s(depth - acceptable_depth + 1, throughput_per_s)
    return None


def _retry_after_s(jobs_over: float, throughput_per_s: float) -> int:
    if throughput_per_s <= 0:
        return RETRY_AFTER_S_UNKNOWN
    return int(min(RETRY_AFTER_S_MAX, max(RETRY_AFTER_S_MIN, math.ceil(jobs_over / throughput_per_s))))


class Admission:
    """The process's view of the queue, read at most once per `admission_refresh_s` (one statement)."""

    def __init__(self, pool: asyncpg.Pool, settings: GenerationSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._stats: QueueStats | None = None
        self._read_at = -math.inf
        self._admitted_since_read = 0
        self._reading = asyncio.Lock()

    async def stats(self) -> QueueStats:
        if self._stats is None or time.monotonic() - self._read_at >= self._settings.admission_refresh_s:
            async with self._reading:
                # Another caller may have read while this one waited.
                if self._stats is None or time.monotonic() - self._read_at >= self._settings.admission_refresh_s:
                    await self.read()
        assert self._stats is not None
        return self._stats

    async def read(self) -> QueueStats:
        row = await self._pool.fetchrow(queries.QUEUE_STATS, float(self._settings.admission_window_s))
        assert row is not None
        stats = QueueStats(
            depth=row["depth"],
            oldest_queued_s=float(row["oldest_queued_s"]),
            finished=row["finished"],
            render_avg_s=None if row["render_avg_s"] is None else float(row["render_avg_s"]),
            holds_open=row["holds_open"],
            held_moments=row["held_moments"],
        )
        self._stats, self._read_at, self._admitted_since_read = stats, time.monotonic(), 0
        publish(stats, self._settings)
        return stats

    async def render_estimate_s(self) -> float:
        return render_estimate_s(await self.stats(), self._settings)

    async def admit(self, caller_key_id: int, idempotency_key: str) -> None:
        """Raises `Overloaded` unless a new generation may be queued now. The replay of a request already
        accepted is never refused: it holds nothing new."""
        retry_after_s = refusal(await self.stats(), self._settings, admitted_since_read=self._admitted_since_read)
        if retry_after_s is not None:
            if await self._pool.fetchval(queries.GENERATION_ANSWERED, caller_key_id, idempotency_key):
                return
            REFUSED.inc()
            raise Overloaded(
                "more videos are waiting than the workers can render before their holds expire; nothing was "
                f"held: retry in {retry_after_s} s with the same Idempotency-Key",
                retry_after_s=retry_after_s,
            )
        # Until the next read, count this one in: a burst is not all admitted on one stale figure.
        self._admitted_since_read += 1


def publish(stats: QueueStats, settings: GenerationSettings) -> None:
    QUEUE_DEPTH.set(stats.depth)
    QUEUE_OLDEST.set(stats.oldest_queued_s)
    THROUGHPUT.set(stats.finished / settings.admission_window_s)
    HOLDS_OPEN.set(stats.holds_open)
    HELD_MOMENTS.set(stats.held_moments)
