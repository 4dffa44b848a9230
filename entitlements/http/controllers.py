"""Health, readiness and metrics: public, for load balancers and Prometheus."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog
from litestar import Controller, MediaType, Response, get
from litestar.di import NamedDependency

from entitlements.database import is_unavailable
from entitlements.errors import NotReady
from entitlements.generations import VideoStore
from entitlements.http.deps import Pool
from entitlements.http.observability import METRICS_CONTENT_TYPE, metrics_text
from entitlements.reads import Reads
from entitlements.schemas import Struct
from entitlements.seal import Signer as SealSigner

READY_TIMEOUT_S = 2.0
# Business gauges read from the database when /metrics is scraped (every process sees the same figures).
METRICS_READ_TIMEOUT_S = 2.0
MetricsReader = Callable[[asyncpg.Pool], Awaitable[None]]
T = TypeVar("T")
log = structlog.get_logger("moments.metrics")


# Abandoned checks still finishing (a reference each, so they are not collected mid-flight).
_ABANDONED: set[asyncio.Future[Any]] = set()


def _abandonable(check: Awaitable[T]) -> asyncio.Future[T]:
    task = asyncio.ensure_future(check)
    _ABANDONED.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Future[Any]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned check's failure is not "never retrieved"


async def _database_answers(pool: asyncpg.Pool) -> None:
    async with pool.acquire(timeout=READY_TIMEOUT_S) as connection:
        await connection.fetchval("SELECT 1", timeout=READY_TIMEOUT_S)


class Status(Struct, frozen=True):
    status: str


class Ready(Struct, frozen=True):
    status: str
    # Whether this process seals the ledger, and why not (never a reason to take it out of service).
    seal: str
    # The read replica (DATABASE_REPLICA_URL): none, ok, lagging (further behind than
    # DATABASE_REPLICA_LAG_MAX_S) or down; never a reason to take the process out of service.
    replica: str = "none"
    # Where reads routed to the replica go now: replica or primary.
    reads: str = "primary"
    # How far behind the primary the replica may be (an upper bound, seconds); null without a replica or
    # before it was first measured.
    replica_lag_s: float | None = None


class HealthController(Controller):
    tags = ["ops"]
    opt = {"public": True}

    @get("/healthz", operation_id="healthz", description="200 while the process is alive.")
    async def healthz(self) -> Status:
        return Status(status="ok")

    @get(
        "/readyz",
        operation_id="readyz",
        description="200 when the database answers (and, where videos are stored, VIDEO_DIR takes a file) within "
        f"{READY_TIMEOUT_S:g} s, else 503 not_ready; `seal` says whether this process seals the ledger, `replica` "
        "the read replica's state (none, ok, lagging, down) and `reads` where replica-routed reads go now.",
    )
    async def readyz(
        self,
        pool: Pool,
        reads: NamedDependency[Reads],
        video_store: NamedDependency[VideoStore | None],
        seal_signer: NamedDependency[SealSigner],
    ) -> Ready:
        # The checks run as tasks that are abandoned, not awaited, past the limit: a stalled database
        # holds a cancelled statement until it answers, and the probe must not wait for that.
        database = _abandonable(_database_answers(pool))
        store = _abandonable(video_store.unusable_because()) if video_store and video_store.required else None
        directory = video_store.directory if video_store else None
        await asyncio.wait([task for task in (database, store) if task is not None], timeout=READY_TIMEOUT_S)
        if not database.done():
            database.cancel()
            raise NotReady(f"the database did not answer within {READY_TIMEOUT_S:g} s")
        error = database.exception()
        if error is not None:
            raise NotReady(f"the database does not answer: {type(error).__name__}") from None
        if store is not None:
            if not store.done():
                store.cancel()
                raise NotReady(f"the video store ({directory}) did not answer within {READY_TIMEOUT_S:g} s")
            reason = store.result()
            if reason is not None:
                raise NotReady(f"the video store ({directory}) is unusable: {reason}")
        key = seal_signer.key
        sealing = f"sealing (key {key.key_id})" if seal_signer.sealing and key is not None else seal_signer.problem
        lag_s = reads.lag_s()
        return Ready(
            status="ready",
            seal=sealing or "not sealing",
            replica=reads.state,
            reads="replica" if reads.state == "ok" else "primary",
            replica_lag_s=round(lag_s, 3) if lag_s is not None and math.isfinite(lag_s) else None,
        )

    @get("/metrics", operation_id="metrics", media_type=MediaType.TEXT, description="Prometheus text format.")
    async def metrics(self, pool: Pool, metrics_readers: NamedDependency[Sequence[MetricsReader]]) -> Response[bytes]:
        # Abandoned past the limit, like readyz's checks: the HTTP figures are still worth serving, and the
        # database's gauges keep their last values.
        reads: list[asyncio.Future[None]] = [_abandonable(read(pool)) for read in metrics_readers]
        if reads:
            await asyncio.wait(reads, timeout=METRICS_READ_TIMEOUT_S)
        for read_task in reads:
            if not read_task.done():
                read_task.cancel()
                log.warning("metrics_read_failed", error="timed out")
            elif (error := read_task.exception()) is not None:
                if not is_unavailable(error):
                    raise error
                log.warning("metrics_read_failed", error=repr(error)[:300])
        return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)
