"""The dispatcher and the sweeper.

The dispatcher takes due jobs from the outbox (`FOR UPDATE SKIP LOCKED`) under a lease, has the worker
render them (the generation id is the worker's idempotency key, so a retaken job never renders twice),
and settles each generation: capture on a delivered video, void on a definitive failure, a render past
its deadline, or retries spent. If the process dies, the lease lapses and any dispatcher retakes the job.

The sweeper voids generations whose hold expired, expires lots past their expiry, and retries Stripe events
stored but not yet applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import structlog

import ledger
from entitlements.generations import queries, service
from entitlements.settings import GenerationSettings
from generation_client import (
    JobNotFound,
    JobRequest,
    JobStatus,
    WorkerClient,
    WorkerRejected,
    WorkerUnavailable,
    backoff_delay_s,
)

log = structlog.get_logger("moments.dispatcher")

SWEEP_BATCH_MAX = 200


# Jobs leased by one claim at most: one statement for many free slots.
CLAIM_BATCH_MAX = 64


@dataclass(frozen=True)
class ClaimedJob:
    generation_id: uuid.UUID
    attempts: int
    first_submitted_at: datetime | None
    # The generation as claimed: what the worker needs, and its user and hold for the settlement.
    row: asyncpg.Record


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        ledger_service: ledger.Ledger,
        settings: GenerationSettings,
        client: WorkerClient | None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger_service
        self._settings = settings
        self._client = client
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.dispatcher_concurrency)
        self._rng = random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """A new job was committed here: look for work now rather than at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        assert self._client is not None, "the dispatcher needs GENERATION_WORKER_URL"
        while True:
            # Slots first, then jobs: never hold a lease this process cannot serve. Every free slot is
            # taken (acquiring a free slot does not wait), so one claim leases a job for each.
            await self._slots.acquire()
            slots = 1
            while slots < CLAIM_BATCH_MAX and not self._slots.locked():
                await self._slots.acquire()
                slots += 1
            try:
                claimed = await self._claim(slots)
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("claim_failed", error=repr(error))
                claimed = []
            for _ in range(slots - len(claimed)):
                self._slots.release()
            if not claimed:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self._settings.poll_interval_s)
                continue
            for job in claimed:
                task = asyncio.create_task(self._process_guarded(job))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _claim(self, jobs_max: int) -> list[ClaimedJob]:
        rows = await self._pool.fetch(queries.CLAIM_JOBS, self.owner, float(self._settings.job_lease_s), jobs_max)
        queued = [row["generation_id"] for row in rows if row["status"] == "queued"]
        if queued:
            await self._pool.execute(queries.MARK_RUNNING_MANY, queued)
        return [ClaimedJob(row["generation_id"], row["attempts"], row["first_submitted_at"], row) for row in rows]

    async def _process_guarded(self, job: ClaimedJob) -> None:
        try:
            await self.process(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease lapses and another attempt picks the job up; nothing settled, nothing lost.
            log.exception("job_crashed", generation_id=str(job.generation_id))
        finally:
            self._slots.release()

    async def process(self, job: ClaimedJob) -> None:
        assert self._client is not None
        row = job.row
        if row["status"] not in {"queued", "running"}:
            await service.finish_job(self._pool, job.generation_id)
            return
        request = JobRequest(
            id=str(job.generation_id),
            image_id=row["image_id"],
            prompt=row["prompt"],
            resolution=row["resolution"],
            duration_s=row["duration_s"],
            audio=row["audio"],
        )
        try:
            status = await self._client.submit(request)
            first_submitted_at = job.first_submitted_at or await self._mark_submitted(job.generation_id)
            deadline = first_submitted_at + timedelta(seconds=self._settings.render_timeout_s)
            while status.status in {"queued", "running"}:
                if datetime.now(UTC) >= deadline:
                    await service.settle_failure(
                        self._pool,
                        self._ledger,
                        job.generation_id,
                        f"render_timeout: no video within {self._settings.render_timeout_s} s",
                        row=job.row,
                    )
                    return
                await asyncio.sleep(self._settings.poll_interval_s)
                if not await self._renew_lease(job.generation_id):
                    log.warning("lease_lost", generation_id=str(job.generation_id))
                    return
                status = await self._client.status(request.id)
            await self._finish(job, status)
        except WorkerRejected as rejected:
            await service.settle_failure(
                self._pool, self._ledger, job.generation_id, f"worker_rejected: {rejected}", row=job.row
            )
        except (WorkerUnavailable, JobNotFound) as unavailable:
            await self._retry_later(job, repr(unavailable))

    async def _finish(self, job: ClaimedJob, status: JobStatus) -> None:
        assert self._client is not None
        if status.status == "failed":
            await service.settle_failure(
                self._pool, self._ledger, job.generation_id, f"worker_failed: {status.error or 'unknown'}", row=job.row
            )
            return
        video_dir = self._settings.video_dir
        video_dir.mkdir(parents=True, exist_ok=True)
        destination = Path(video_dir) / f"{job.generation_id}.mp4"
        size_bytes = await self._client.download_result(str(job.generation_id), destination)
        await service.settle_success(
            self._pool, self._ledger, job.generation_id, destination.resolve(), size_bytes, row=job.row
        )

    async def _mark_submitted(self, generation_id: uuid.UUID) -> datetime:
        value = await self._pool.fetchval(queries.MARK_SUBMITTED, generation_id)
        assert isinstance(value, datetime)
        return value

    async def _renew_lease(self, generation_id: uuid.UUID) -> bool:
        renewed = await self._pool.fetchval(
            queries.RENEW_LEASE, generation_id, self.owner, float(self._settings.job_lease_s)
        )
        return bool(renewed)

    async def _retry_later(self, job: ClaimedJob, error: str) -> None:
        attempts = job.attempts + 1
        if attempts >= self._settings.attempts_max:
            await service.settle_failure(
                self._pool,
                self._ledger,
                job.generation_id,
                f"worker_unavailable: gave up after {attempts} attempts ({error[:200]})",
                row=job.row,
            )
            return
        delay_s = backoff_delay_s(
            attempts,
            base_s=self._settings.retry_backoff_base_s,
            cap_s=self._settings.retry_backoff_cap_s,
            rng=self._rng,
        )
        await self._pool.execute(
            queries.RETRY_LATER,
            job.generation_id,
            attempts,
            delay_s,
            error[:1000],
            self.owner,
        )
        log.info(
            "job_retry_scheduled", generation_id=str(job.generation_id), attempts=attempts, delay_s=round(delay_s, 3)
        )


# Other domains' periodic work the sweeper runs too (Stripe events to retry): a name and a coroutine
# function answering how many things it handled.
SweepTask = Callable[[], Awaitable[int]]


class Sweeper:
    def __init__(
        self,
        pool: asyncpg.Pool,
        ledger_service: ledger.Ledger,
        settings: GenerationSettings,
        also: Mapping[str, SweepTask] | None = None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger_service
        self._settings = settings
        self._also = dict(also or {})

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except (OSError, asyncpg.PostgresError, ledger.LedgerUnavailable) as error:
                log.warning("sweep_failed", error=repr(error))
            await asyncio.sleep(self._settings.sweep_interval_s)

    async def sweep_once(self) -> dict[str, int]:
        expired_generations = 0
        for row in await self._pool.fetch(queries.EXPIRED_GENERATIONS, SWEEP_BATCH_MAX):
            if await service.settle_failure(
                self._pool,
                self._ledger,
                row["id"],
                "hold_expired: the video was not delivered in time",
                expired=True,
                row=row,
            ):
                expired_generations += 1
        # Every hold today belongs to a generation and is settled above, with its generation; voiding
        # holds here behind the generations' back would leave a generation running on a voided hold.
        lots_users = await self._ledger.expire_due_lots(datetime.now(UTC))
        swept = {"generations": expired_generations, "lot_users": lots_users}
        for name, task in self._also.items():
            swept[name] = await task()
        return swept
