"""The bundled worker's jobs: idempotent submission, fault injection, rendering, and their records.

Every job has a record `video_dir/<id>.json`, written atomically at each state change; its video is
`video_dir/<id>.mp4`. The records are the truth: a restarted worker answers for every finished job,
and a job that a crash left `queued` or `running` is rendered again on the next submit or status call
(its fate, drawn once at first submit, is in the record, so it meets the same fate again).

Only jobs in flight are held in memory; finished ones are read back from disk on demand, so memory
does not grow with the number of jobs ever rendered.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import msgspec
import structlog

from generation_client.schemas import FRAME_SIZES, ID_LENGTH_MAX, ID_PATTERN, JobRequest, JobState, JobStatus
from generation_client.worker.files import fsync_directory, partial_path
from generation_client.worker.render import (
    RenderCancelled,
    RenderError,
    RenderSpec,
    find_source_image,
    render_video,
)
from generation_client.worker.settings import WorkerSettings

Fate = Literal["succeed", "fail", "hang"]

RECORD_FORMAT_VERSION: Final = 1
LOCK_FILE_NAME: Final = ".worker.lock"
INJECTED_FAILURE: Final = "injected_failure"
RENDER_FAILED: Final = "render_failed"
CANCELLED: Final = "cancelled"

log = structlog.get_logger(__name__)


class JobRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A job as persisted in `<id>.json`."""

    format_version: int = RECORD_FORMAT_VERSION
    request: JobRequest
    # Drawn once at first submit; retries of the same id, and restarts, meet the same fate.
    fate: Fate
    status: JobState
    error: str | None = None
    bytes: int | None = None
    # Renders started for this job: 1 for a job rendered once; more only if a crash interrupted one.
    renders: int = 0
    created_at: str
    updated_at: str

    def to_status(self) -> JobStatus:
        width, height = FRAME_SIZES[self.request.resolution]
        return JobStatus(
            id=self.request.id,
            status=self.status,
            error=self.error,
            width=width,
            height=height,
            duration_s=self.request.duration_s,
            audio=self.request.audio,
            bytes=self.bytes,
        )


class JobConflict(Exception):
    """The id is taken by a job with a different request."""


class JobMissing(Exception):
    """No job has this id."""


class JobNotReady(Exception):
    """The job has no result (yet): it is queued, running or failed."""

    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"job {status.id!r} is {status.status}")
        self.status = status


class ResultMissing(Exception):
    """The record says succeeded but the video file is gone (deleted behind the worker's back)."""


class WorkerBusy(Exception):
    """`active_jobs_max` jobs are already in flight."""


class VideoDirectoryLocked(Exception):
    """Another worker process owns this video directory."""


@dataclass
class _ActiveJob:
    record: JobRecord
    task: asyncio.Task[None] | None = None
    # Set to stop this job's render at its next frame (cancelled, or the worker shutting down).
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class _KeyedLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


_RECORD_DECODER: Final = msgspec.json.Decoder(JobRecord)
_ENCODER: Final = msgspec.json.Encoder()
_FINAL_STATES: Final[frozenset[JobState]] = frozenset({"succeeded", "failed"})
_JOB_ID: Final = re.compile(ID_PATTERN)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class JobStore:
    """Accepts, runs and remembers jobs. Create, `await start()`, use, `await close()`."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._video_dir = settings.video_dir
        # Seeded for reproducible fault injection; drawn only at first submit of an id.
        self._rng = random.Random(settings.seed)
        self._render_slots = asyncio.Semaphore(settings.max_concurrent_renders)
        # Renders run here, never on the event loop; one thread per render slot.
        self._executor = ThreadPoolExecutor(max_workers=settings.max_concurrent_renders, thread_name_prefix="render")
        # Set on shutdown: renders in progress stop at their next frame.
        self._cancel_renders = threading.Event()
        self._active: dict[str, _ActiveJob] = {}
        self._locks: dict[str, _KeyedLock] = {}
        self._lock_descriptor: int | None = None
        # Instant mode's shared clips, by (resolution, duration_s, audio); the lock renders each once.
        self._clips: dict[tuple[str, int, bool], tuple[Path, int]] = {}
        self._clips_lock = asyncio.Lock()

    async def start(self) -> None:
        self._lock_descriptor = await asyncio.to_thread(_lock_directory, self._video_dir)
        removed = await asyncio.to_thread(_remove_partial_files, self._video_dir)
        log.info(
            "worker_started",
            video_dir=str(self._video_dir),
            partial_files_removed=removed,
            failure_rate=self._settings.failure_rate,
            hang_rate=self._settings.hang_rate,
            latency_ms=self._settings.latency_ms,
            max_concurrent_renders=self._settings.max_concurrent_renders,
        )

    async def close(self) -> None:
        """Stop every job in flight; their records stay queued/running, to be resumed by the next worker."""
        self._cancel_renders.set()
        for active in self._active.values():
            active.stop.set()
        tasks = [active.task for active in self._active.values() if active.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Render threads see the cancel event within one frame; wait for them to remove their files.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)
            self._lock_descriptor = None

    async def submit(self, request: JobRequest) -> JobStatus:
        async with self._locked(request.id):
            record = await self._current(request.id)
            if record is None:
                return await self._create(request)
            if record.request != request:
                raise JobConflict(f"job {request.id!r} exists with a different request")
            return self._resume_if_abandoned(record).to_status()

    async def status(self, job_id: str) -> JobStatus:
        active = self._active.get(job_id)
        if active is not None:
            return active.record.to_status()
        if len(job_id) > ID_LENGTH_MAX or _JOB_ID.match(job_id) is None:
            # No job can have this id (submit validates it), and it must not become a file name.
            raise JobMissing(job_id)
        async with self._locked(job_id):
            record = await self._current(job_id)
            if record is None:
                raise JobMissing(job_id)
            return self._resume_if_abandoned(record).to_status()

    async def cancel(self, job_id: str) -> JobStatus:
        """Stops the job (its render ends at the next frame, its slot is free) and records it failed with
        error `cancelled`; a job already final is returned as it is."""
        if len(job_id) > ID_LENGTH_MAX or _JOB_ID.match(job_id) is None:
            raise JobMissing(job_id)
        async with self._locked(job_id):
            active = self._active.get(job_id)
            if active is not None:
                active.stop.set()
                if active.task is not None:
                    active.task.cancel()
                    await asyncio.gather(active.task, return_exceptions=True)
            record = await asyncio.to_thread(self._read_record, job_id)
            if record is None:
                raise JobMissing(job_id)
            if record.status in _FINAL_STATES:
                return record.to_status()
            cancelled = msgspec.structs.replace(record, status="failed", error=CANCELLED, updated_at=_now())
            await asyncio.to_thread(self._write_record, cancelled)
            log.info("job_cancelled", job_id=job_id, was=record.status)
            return cancelled.to_status()

    async def result_path(self, job_id: str) -> Path:
        status = await self.status(job_id)
        if status.status != "succeeded":
            raise JobNotReady(status)
        path = self._video_path(job_id)
        if not await asyncio.to_thread(path.is_file):
            raise ResultMissing(job_id)
        return path

    async def _create(self, request: JobRequest) -> JobStatus:
        in_flight = len(self._active)
        if in_flight >= self._settings.active_jobs_max:
            raise WorkerBusy(f"{in_flight} jobs in flight, active_jobs_max is {self._settings.active_jobs_max}")
        if self._settings.instant:
            return await self._create_instantly(request)
        fate = self._draw_fate()
        now = _now()
        record = JobRecord(
            request=request,
            fate=fate,
            # A hung job claims to run and never will: no task, no render slot, just the record.
            status="running" if fate == "hang" else "queued",
            created_at=now,
            updated_at=now,
        )
        # Durable before the 202: the fate must survive a crash right after the answer.
        await asyncio.to_thread(self._write_record, record)
        log.info("job_accepted", job_id=request.id, fate=fate)
        if fate != "hang":
            self._launch(record)
        return record.to_status()

    async def _create_instantly(self, request: JobRequest) -> JobStatus:
        """Instant mode: the job is done before its submit answers, with the shared clip linked as its video."""
        clip, size_bytes = await self._clip(request)
        destination = self._video_path(request.id)
        await asyncio.to_thread(_link_over, clip, destination)
        now = _now()
        record = JobRecord(
            request=request,
            fate="succeed",
            status="succeeded",
            bytes=size_bytes,
            renders=0,
            created_at=now,
            updated_at=now,
        )
        await asyncio.to_thread(self._write_record, record)
        return record.to_status()

    async def _clip(self, request: JobRequest) -> tuple[Path, int]:
        shape = (request.resolution, request.duration_s, request.audio)
        async with self._clips_lock:
            found = self._clips.get(shape)
            if found is None:
                width, height = FRAME_SIZES[request.resolution]
                spec = RenderSpec(
                    width=width,
                    height=height,
                    duration_s=request.duration_s,
                    audio=request.audio,
                    image_id="instant",
                    prompt="instant",
                    image_path=None,
                )
                path = self._video_dir / f".clip-{request.resolution}-{request.duration_s}-{int(request.audio)}.mp4"
                size_bytes = await asyncio.get_running_loop().run_in_executor(
                    self._executor, lambda: render_video(spec, path, cancel=self._cancel_renders)
                )
                found = self._clips[shape] = (path, size_bytes)
        return found

    def _draw_fate(self) -> Fate:
        draw = self._rng.random()
        if draw < self._settings.hang_rate:
            return "hang"
        if draw < self._settings.hang_rate + self._settings.failure_rate:
            return "fail"
        return "succeed"

    def _resume_if_abandoned(self, record: JobRecord) -> JobRecord:
        """Restart a job that a crashed worker left queued or running. Call with the job's lock held."""
        job_id = record.request.id
        if record.status in _FINAL_STATES or record.fate == "hang" or job_id in self._active:
            return record
        log.warning("job_resumed", job_id=job_id, status=record.status, renders=record.renders)
        self._launch(record)
        return record

    def _launch(self, record: JobRecord) -> None:
        job_id = record.request.id
        assert job_id not in self._active
        active = _ActiveJob(record=record)
        self._active[job_id] = active
        active.task = asyncio.create_task(self._run(job_id), name=f"job:{job_id}")

    async def _run(self, job_id: str) -> None:
        try:
            record = self._active[job_id].record
            if record.fate == "fail":
                await self._update(job_id, status="running")
                await asyncio.sleep(self._settings.latency_ms / 1000)
                await self._update(job_id, status="failed", error=INJECTED_FAILURE)
            else:
                assert record.fate == "succeed"
                size_bytes = await self._render(job_id)
                await asyncio.sleep(self._settings.latency_ms / 1000)
                await self._update(job_id, status="succeeded", error=None, bytes=size_bytes)
        except RenderError as error:
            log.warning("render_refused", job_id=job_id, error=str(error))
            await self._update(job_id, status="failed", error=error.code)
        except RenderCancelled:
            # Shutdown: the record stays queued/running and the next worker resumes the job.
            log.info("job_interrupted", job_id=job_id)
        except asyncio.CancelledError:
            log.info("job_interrupted", job_id=job_id)
            raise
        except Exception:
            log.exception("job_crashed", job_id=job_id)
            # If even this write fails the record stays running, and the next status call resumes it.
            with contextlib.suppress(Exception):
                await self._update(job_id, status="failed", error=RENDER_FAILED)
        finally:
            self._active.pop(job_id, None)

    async def _render(self, job_id: str) -> int:
        async with self._render_slots:
            record = await self._update(job_id, status="running", renders=self._active[job_id].record.renders + 1)
            request = record.request
            width, height = FRAME_SIZES[request.resolution]
            spec = RenderSpec(
                width=width,
                height=height,
                duration_s=request.duration_s,
                audio=request.audio,
                image_id=request.image_id,
                prompt=request.prompt,
                image_path=await asyncio.to_thread(find_source_image, self._settings.image_dir, request.image_id),
            )
            started_s = time.perf_counter()
            stop = self._active[job_id].stop
            size_bytes = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                lambda: render_video(spec, self._video_path(job_id), cancel=stop),
            )
            log.info(
                "render_finished",
                job_id=job_id,
                resolution=request.resolution,
                duration_s=request.duration_s,
                audio=request.audio,
                source="image" if spec.image_path is not None else "pattern",
                bytes=size_bytes,
                render_s=round(time.perf_counter() - started_s, 3),
            )
            return size_bytes

    async def _update(
        self,
        job_id: str,
        *,
        status: JobState,
        error: str | None = None,
        bytes: int | None = None,  # shadows the builtin: it is the record's field name
        renders: int | None = None,
    ) -> JobRecord:
        """Persist the job's new state, then publish it: a status never reports what a crash could undo."""
        active = self._active[job_id]
        record = msgspec.structs.replace(
            active.record,
            status=status,
            error=error,
            bytes=bytes,
            renders=active.record.renders if renders is None else renders,
            updated_at=_now(),
        )
        await asyncio.to_thread(self._write_record, record)
        active.record = record
        return record

    async def _current(self, job_id: str) -> JobRecord | None:
        active = self._active.get(job_id)
        if active is not None:
            return active.record
        return await asyncio.to_thread(self._read_record, job_id)

    @contextlib.asynccontextmanager
    async def _locked(self, job_id: str) -> AsyncIterator[None]:
        """Serialise the check-then-create of one id; other ids go ahead in parallel."""
        entry = self._locks.get(job_id)
        if entry is None:
            entry = self._locks[job_id] = _KeyedLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                # Dropped when unused, so the table holds only ids being handled right now.
                del self._locks[job_id]

    def _video_path(self, job_id: str) -> Path:
        return self._video_dir / f"{job_id}.mp4"

    def _record_path(self, job_id: str) -> Path:
        return self._video_dir / f"{job_id}.json"

    def _read_record(self, job_id: str) -> JobRecord | None:
        try:
            content = self._record_path(job_id).read_bytes()
        except FileNotFoundError:
            return None
        return _RECORD_DECODER.decode(content)

    def _write_record(self, record: JobRecord) -> None:
        path = self._record_path(record.request.id)
        temporary = partial_path(path, secrets.token_hex(8))
        try:
            with temporary.open("xb") as file:
                file.write(_ENCODER.encode(record))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            fsync_directory(self._video_dir)
        finally:
            temporary.unlink(missing_ok=True)


def _link_over(source: Path, destination: Path) -> None:
    """`destination` becomes another name of `source`, atomically (a link under a temporary name, renamed)."""
    temporary = partial_path(destination, secrets.token_hex(8))
    os.link(source, temporary)
    os.replace(temporary, destination)


def _lock_directory(video_dir: Path) -> int:
    """Create `video_dir` and lock it for this process: two workers on one directory would both render."""
    video_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(video_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise VideoDirectoryLocked(f"another worker process is using {video_dir}") from None
    return descriptor


def _remove_partial_files(video_dir: Path) -> int:
    # Leftovers of a crashed worker (the lock proves no other process is writing them).
    removed = 0
    for path in video_dir.glob(".*.partial"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
