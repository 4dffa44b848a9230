"""The dispatcher and the sweeper.

The dispatcher takes due jobs from the outbox (`FOR UPDATE SKIP LOCKED`) under a lease, has the worker
render them (the generation id is the worker's idempotency key, so a retaken job never renders twice),
and settles each generation: capture on a delivered video, void on a definitive failure, a render past
its deadline, or retries spent. If the process dies, the lease lapses and any dispatcher retakes the job.

A job is never started when its hold would expire before a render (of the measured mean length) could
end; a render is given up at its own deadline (`RENDER_TIMEOUT_S` after its first submission, or its
hold's expiry if that comes first) and cancelled on the worker, which frees both sides' slots. An
unreachable worker is retried with backoff for `WORKER_RETRY_BUDGET_S` (a restart takes seconds to
minutes); a video that cannot be written to `VIDEO_DIR` fails the generation after
`VIDEO_STORE_ATTEMPTS_MAX` tries, its moments given back at once. On shutdown the dispatcher hands its
leases back so another process takes the jobs at once.

The sweeper voids generations whose hold expired (cancelling their worker jobs), expires lots past their
expiry, and retries Stripe events stored but not yet applied.
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
from entitlements.database import is_unavailable
from entitlements.generations import queries, service
from entitlements.generations.admission import Admission
from entitlements.generations.store import VideoStore, describe
from entitlements.settings import GenerationSettings
from generation_client import (
    JobNotFound,
    JobRequest,
    JobStatus,
    WorkerClient,
    WorkerError,
    WorkerRejected,
    WorkerUnavailable,
    backoff_delay_s,
)

log = structlog.get_logger("moments.dispatcher")

SWEEP_BATCH_MAX = 200


# Jobs leased by one claim at most: one statement for many free slots.
CLAIM_BATCH_MAX = 64
# Shutdown hands the leases back within this long, or leaves them to lapse.
RELEASE_TIMEOUT_S = 1.0
# A cancellation is a courtesy to the worker: never waited for longer than this.
CANCEL_TIMEOUT_S = 2.0
# Between tries to store a video: the first delay, doubled each time.
STORE_RETRY_BASE_S = 0.25


async def cancel_quietly(client: WorkerClient | None, generation_id: uuid.UUID) -> None:
    """Tells the worker nobody will collect this job, so it stops rendering it; a worker that does not
    answer is not waited for (its render then ends by itself)."""
    if client is None:
        return
    try:
        await asyncio.wait_for(client.cancel(str(generation_id)), CANCEL_TIMEOUT_S)
    except (WorkerError, TimeoutError) as error:
        log.info("worker_cancel_failed", generation_id=str(generation_id), error=repr(error)[:200])


def _fault(error: BaseException) -> bool:
    """A database or ledger that did not answer: the job is retaken once its lease lapses."""
    return isinstance(error, ledger.LedgerUnavailable) or is_unavailable(error)


@dataclass(frozen=True)
class ClaimedJob:
    generation_id: uuid.UUID
    attempts: int
    first_submitted_at: datetime | None
    unavailable_since: datetime | None
    hold_expires_at: datetime
    # The generation as claimed: what the worker needs, and its user and hold for the settlement.
    row: asyncpg.Record


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        ledger_service: ledger.Ledger,
        settings: GenerationSettings,
        client: WorkerClient | None,
        admission: Admission | None = None,
        store: VideoStore | None = None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger_service
        self._settings = settings
        self._client = client
        self._admission = admission or Admission(pool, settings)
        self._store = store or VideoStore(settings.video_dir, required=True)
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
            except Exception as error:
                if not _fault(error):
                    raise
                log.warning("claim_failed", error=repr(error)[:300])
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
        """Stops every job in flight and hands its lease back: nothing settles half-way (a settlement is one
        transaction), and another dispatcher retakes the jobs at once rather than after JOB_LEASE_S."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await asyncio.wait_for(self._pool.execute(queries.RELEASE_LEASES, self.owner), RELEASE_TIMEOUT_S)
        except Exception as error:
            if not _fault(error):
                raise
            log.warning("leases_not_released", error=repr(error)[:300])

    async def _claim(self, jobs_max: int) -> list[ClaimedJob]:
        rows = await self._pool.fetch(queries.CLAIM_JOBS, self.owner, float(self._settings.job_lease_s), jobs_max)
        queued = [row["generation_id"] for row in rows if row["status"] == "queued"]
        if queued:
            await self._pool.execute(queries.MARK_RUNNING_MANY, queued)
        return [
            ClaimedJob(
                generation_id=row["generation_id"],
                attempts=row["attempts"],
                first_submitted_at=row["first_submitted_at"],
                unavailable_since=row["unavailable_since"],
                hold_expires_at=row["hold_expires_at"],
                row=row,
            )
            for row in rows
        ]

    async def _process_guarded(self, job: ClaimedJob) -> None:
        try:
            await self.process(job)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The lease lapses and another attempt picks the job up; nothing settled, nothing lost.
            if _fault(error):
                log.warning("job_interrupted", generation_id=str(job.generation_id), error=repr(error)[:300])
            else:
                log.exception("job_crashed", generation_id=str(job.generation_id))
        finally:
            self._slots.release()

    async def process(self, job: ClaimedJob) -> None:
        assert self._client is not None
        row = job.row
        if row["status"] not in {"queued", "running"}:
            await service.finish_job(self._pool, job.generation_id)
            return
        if job.first_submitted_at is None and not await self._time_to_render(job):
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
            render_deadline = first_submitted_at + timedelta(seconds=self._settings.render_timeout_s)
            while status.status in {"queued", "running"}:
                now = datetime.now(UTC)
                if now >= render_deadline or now >= job.hold_expires_at:
                    await self._give_up(job, expired=now >= job.hold_expires_at)
                    return
                await asyncio.sleep(self._settings.poll_interval_s)
                if not await self._renew_lease(job.generation_id):
                    await self._lease_lost(job)
                    return
                status = await self._client.status(request.id)
            await self._finish(job, status)
        except WorkerRejected as rejected:
            await service.settle_failure(
                self._pool, self._ledger, job.generation_id, f"worker_rejected: {rejected}", row=job.row
            )
        except (WorkerUnavailable, JobNotFound) as unavailable:
            await self._retry_later(job, repr(unavailable))

    async def _time_to_render(self, job: ClaimedJob) -> bool:
        """Whether a render started now can end before the hold expires; if not, the moments go back now
        rather than after a render nobody could be charged for."""
        render_s = await self._admission.render_estimate_s()
        left_s = (job.hold_expires_at - datetime.now(UTC)).total_seconds()
        if left_s >= render_s:
            return True
        await service.settle_failure(
            self._pool,
            self._ledger,
            job.generation_id,
            f"hold_expiring: {max(left_s, 0):.0f} s left on the hold, a render takes about {render_s:.0f} s",
            row=job.row,
        )
        return False

    async def _give_up(self, job: ClaimedJob, *, expired: bool) -> None:
        """The render's own deadline passed: the worker stops it (its slot and ours are free) and the
        generation fails, its moments back."""
        await cancel_quietly(self._client, job.generation_id)
        reason = (
            "hold_expired: the video was not delivered in time"
            if expired
            else f"render_timeout: no video within {self._settings.render_timeout_s} s"
        )
        await service.settle_failure(self._pool, self._ledger, job.generation_id, reason, expired=expired, row=job.row)

    async def _lease_lost(self, job: ClaimedJob) -> None:
        # Settled elsewhere (the sweeper at the hold's expiry, support) means nobody will collect the video.
        if await self._pool.fetchval(queries.JOB_DONE, job.generation_id):
            await cancel_quietly(self._client, job.generation_id)
        else:
            log.warning("lease_lost", generation_id=str(job.generation_id))

    async def _finish(self, job: ClaimedJob, status: JobStatus) -> None:
        assert self._client is not None
        if status.status == "failed":
            await service.settle_failure(
                self._pool, self._ledger, job.generation_id, f"worker_failed: {status.error or 'unknown'}", row=job.row
            )
            return
        stored = await self._store_video(job)
        if stored is None:
            return
        destination, size_bytes = stored
        await service.settle_success(
            self._pool, self._ledger, job.generation_id, destination.resolve(), size_bytes, row=job.row
        )

    async def _store_video(self, job: ClaimedJob) -> tuple[Path, int] | None:
        """Downloads the MP4 into VIDEO_DIR. A store that refuses it (not writable, full) is tried
        `video_store_attempts_max` times; then the generation fails with the reason and None is returned."""
        assert self._client is not None
        destination = Path(self._settings.video_dir) / f"{job.generation_id}.mp4"
        attempts_max = self._settings.video_store_attempts_max
        for attempt in range(1, attempts_max + 1):
            try:
                await asyncio.to_thread(destination.parent.mkdir, parents=True, exist_ok=True)
                size_bytes = await self._client.download_result(str(job.generation_id), destination)
            except OSError as error:
                self._store.record_failure(error)
                if attempt == attempts_max:
                    await service.settle_failure(
                        self._pool,
                        self._ledger,
                        job.generation_id,
                        f"video_store_failed: {describe(error)} (after {attempts_max} attempts)",
                        row=job.row,
                    )
                    return None
                await asyncio.sleep(STORE_RETRY_BASE_S * 2 ** (attempt - 1))
                continue
            self._store.record_success()
            return destination, size_bytes
        raise AssertionError("unreachable: the last attempt returns")

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
        """The worker did not answer: try again after a backoff, until the retry budget (time since the
        first unanswered attempt) or the attempts run out, and never past the hold's expiry."""
        attempts = job.attempts + 1
        now = datetime.now(UTC)
        unavailable_s = (now - job.unavailable_since).total_seconds() if job.unavailable_since else 0.0
        if attempts >= self._settings.attempts_max or unavailable_s >= self._settings.worker_retry_budget_s:
            await service.settle_failure(
                self._pool,
                self._ledger,
                job.generation_id,
                f"worker_unavailable: gave up after {attempts} attempts over {unavailable_s:.0f} s ({error[:200]})",
                row=job.row,
            )
            return
        delay_s = backoff_delay_s(
            attempts,
            base_s=max(self._settings.retry_backoff_base_s, 0.001),
            cap_s=max(self._settings.retry_backoff_cap_s, 0.001),
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
        client: WorkerClient | None = None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger_service
        self._settings = settings
        self._also = dict(also or {})
        self._client = client

    def cancels_through(self, client: WorkerClient) -> None:
        """The worker client through which the jobs of expired generations are cancelled."""
        self._client = client

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception as error:
                if not _fault(error):
                    raise
                log.warning("sweep_failed", error=repr(error)[:300])
            await asyncio.sleep(self._settings.sweep_interval_s)

    async def sweep_once(self) -> dict[str, int]:
        expired: list[uuid.UUID] = []
        for row in await self._pool.fetch(queries.EXPIRED_GENERATIONS, SWEEP_BATCH_MAX):
            if await service.settle_failure(
                self._pool,
                self._ledger,
                row["id"],
                "hold_expired: the video was not delivered in time",
                expired=True,
                row=row,
            ):
                expired.append(row["id"])
        # Whatever the worker still renders for them, nobody will collect: cancelled at once, all together.
        await asyncio.gather(*(cancel_quietly(self._client, generation_id) for generation_id in expired))
        expired_generations = len(expired)
        # Every hold today belongs to a generation and is settled above, with its generation; voiding
        # holds here behind the generations' back would leave a generation running on a voided hold.
        lots_users = await self._ledger.expire_due_lots(datetime.now(UTC))
        swept = {"generations": expired_generations, "lot_users": lots_users}
        for name, task in self._also.items():
            swept[name] = await task()
        return swept
