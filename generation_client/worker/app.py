"""The bundled worker's HTTP API (Litestar), and `serve` to run it under granian.

POST /v1/jobs               submit (idempotent by id)  → 202 job status; 409 id reused; 422 invalid
GET  /v1/jobs/{id}          status                     → 200 job status; 404 unknown
GET  /v1/jobs/{id}/result   the MP4, streamed from disk → 200 video/mp4; 404 unknown; 409 not succeeded
POST /v1/jobs/{id}/cancel   stop it (idempotent)       → 200 job status (failed `cancelled`, or as it ended); 404
GET  /healthz               liveness                   → 200

Errors are RFC 9457 problem+json with a stable `code`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.response import File

from generation_client.logs import configure_logging, granian_log_config
from generation_client.schemas import JobRequest, JobStatus
from generation_client.worker.jobs import (
    JobConflict,
    JobMissing,
    JobNotReady,
    JobStore,
    ResultMissing,
    WorkerBusy,
)
from generation_client.worker.settings import WorkerSettings

# The granian-spawned process imports the app by this name and calls it (factory=True); the settings
# reach it through the WORKER_* environment variables.
APP_FACTORY_TARGET: Final = "generation_client.worker.app:create_app"
# The largest valid body is a 5,000-character prompt (up to 20,000 UTF-8 bytes) plus two short ids.
REQUEST_BODY_BYTES_MAX: Final = 64 * 1024
# What a 503 tells the client to wait before trying again, in seconds.
BUSY_RETRY_AFTER_S: Final = 1
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
_JOB_REQUEST_DECODER: Final = msgspec.json.Decoder(JobRequest)


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details, with the stable machine `code` the project uses everywhere."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    job: JobStatus | None = None
    errors: list[dict[str, Any]] | None = None


def _problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    job: JobStatus | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    return Response(
        # type "about:blank": the status code and `code` say it all (RFC 9457 section 4.2.1).
        Problem(type="about:blank", title=title, status=status, code=code, detail=detail, job=job, errors=errors),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _validation_failed(_: Request[Any, Any, Any], error: ValidationException) -> Response[Problem]:
    # Litestar answers 400 by default; an invalid body is 422 everywhere in this project.
    extra = error.extra if isinstance(error.extra, list) else None
    return _problem(422, "validation_failed", "Unprocessable Content", error.detail, errors=extra)


def _job_conflict(_: Request[Any, Any, Any], error: JobConflict) -> Response[Problem]:
    return _problem(409, "job_id_reused", "Conflict", str(error))


def _job_missing(_: Request[Any, Any, Any], error: JobMissing) -> Response[Problem]:
    return _problem(404, "job_not_found", "Not Found", f"no job has id {str(error)!r}")


def _job_not_ready(_: Request[Any, Any, Any], error: JobNotReady) -> Response[Problem]:
    return _problem(409, "job_not_succeeded", "Conflict", str(error), job=error.status)


def _result_missing(_: Request[Any, Any, Any], error: ResultMissing) -> Response[Problem]:
    return _problem(500, "result_missing", "Internal Server Error", f"the video of job {str(error)!r} is gone")


def _worker_busy(_: Request[Any, Any, Any], error: WorkerBusy) -> Response[Problem]:
    return _problem(
        503,
        "worker_busy",
        "Service Unavailable",
        str(error),
        headers={"retry-after": str(BUSY_RETRY_AFTER_S)},
    )


@post("/v1/jobs", status_code=202, operation_id="submitJob")
async def submit_job(request: Request[Any, Any, Any], jobs: JobStore) -> JobStatus:
    """Submit a render (a JobRequest). The same id with the same body returns the existing job; a
    different body is 409."""
    return await jobs.submit(_decode_job_request(await request.body()))


def _decode_job_request(body: bytes) -> JobRequest:
    # Decoded here rather than by Litestar, which converts leniently ("4" would pass as 4): a hosted
    # model's API is strict about types, and so is this one.
    try:
        return _JOB_REQUEST_DECODER.decode(body)
    except msgspec.DecodeError as error:
        raise ValidationException("Validation failed for POST /v1/jobs", extra=[{"message": str(error)}]) from None


@get("/v1/jobs/{job_id:str}", operation_id="getJob")
async def get_job(job_id: str, jobs: JobStore) -> JobStatus:
    return await jobs.status(job_id)


@post("/v1/jobs/{job_id:str}/cancel", status_code=200, operation_id="cancelJob")
async def cancel_job(job_id: str, jobs: JobStore) -> JobStatus:
    """Cancel a job its client abandoned: its render stops and frees its slot, and it ends failed with error
    `cancelled`. A job already succeeded or failed is left as it is."""
    return await jobs.cancel(job_id)


@get("/v1/jobs/{job_id:str}/result", operation_id="getJobResult", media_type="video/mp4")
async def get_job_result(job_id: str, jobs: JobStore) -> File:
    # File streams from disk in chunks, with Content-Length: the video is never held in memory.
    return File(
        path=await jobs.result_path(job_id),
        media_type="video/mp4",
        filename=f"{job_id}.mp4",
        content_disposition_type="inline",
    )


@get("/healthz", operation_id="health")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def create_app(settings: WorkerSettings | None = None) -> Litestar:
    """The worker app; `settings` None reads them from the environment (WorkerSettings.from_env)."""
    settings = WorkerSettings.from_env() if settings is None else settings
    configure_logging(settings.log_format)
    store = JobStore(settings)

    def provide_jobs() -> JobStore:
        return store

    @asynccontextmanager
    async def run_store(_: Litestar) -> AsyncIterator[None]:
        await store.start()
        try:
            yield
        finally:
            await store.close()

    return Litestar(
        route_handlers=[submit_job, get_job, cancel_job, get_job_result, healthz],
        dependencies={"jobs": Provide(provide_jobs, sync_to_thread=False)},
        exception_handlers={
            ValidationException: _validation_failed,
            JobConflict: _job_conflict,
            JobMissing: _job_missing,
            JobNotReady: _job_not_ready,
            ResultMissing: _result_missing,
            WorkerBusy: _worker_busy,
        },
        lifespan=[run_store],
        request_max_body_size=REQUEST_BODY_BYTES_MAX,
        openapi_config=OpenAPIConfig(title="Moments generation worker", version="1"),
    )


def serve(host: str, port: int, settings: WorkerSettings) -> None:
    """Run the worker under granian (one process, ASGI) until interrupted. Blocks."""
    # Imported here: granian is only needed to serve, not to build the app (tests, other servers).
    from granian import Granian
    from granian.constants import Interfaces

    # The app is built inside granian's worker process, which inherits this environment.
    os.environ.update(settings.to_env())
    Granian(
        target=APP_FACTORY_TARGET,
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        log_dictconfig=granian_log_config(settings.log_format),
    ).serve()
