"""The typed async client of the generation worker API (the bundled worker or a hosted model).

The client makes exactly one attempt per call and classifies what went wrong; retries and backoff
belong to the caller (the dispatcher), which knows the job's lease and deadline. Errors:

- `WorkerUnavailable`: connect error, timeout, 5xx, a malformed answer. Retrying may succeed.
- `WorkerRejected`: a 4xx other than 404 (409 id reused with another body, 422 invalid request,
  409 result not ready), or a result larger than `result_bytes_max`. Retrying the same call will not help.
- `JobNotFound`: 404, the worker does not know the job (never submitted, or lost with its disk).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self
from urllib.parse import quote

import httpx
import msgspec

from generation_client.schemas import JobRequest, JobStatus

__all__ = [
    "JobNotFound",
    "JobRequest",
    "JobStatus",
    "WorkerClient",
    "WorkerError",
    "WorkerRejected",
    "WorkerUnavailable",
]

RESULT_BYTES_MAX_DEFAULT: Final = 512 * 1024 * 1024
POOL_CONNECTIONS_MAX_DEFAULT: Final = 32
# The MP4 is written to disk in chunks of this size: big enough that the thread hop per write is
# negligible, small enough that memory stays bounded whatever the file size.
DOWNLOAD_CHUNK_BYTES: Final = 1024 * 1024
# Error bodies are read only this far: enough for a problem+json document, never a whole file.
ERROR_BODY_BYTES_MAX: Final = 64 * 1024
# A status document is a few hundred bytes; anything far larger is not a worker talking.
STATUS_BODY_BYTES_MAX: Final = 64 * 1024


class WorkerError(Exception):
    """Base of every error of this client. `status_code` is the HTTP status when there was one."""

    def __init__(
        self,
        detail: str,
        *,
        base_url: str,
        status_code: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.base_url = base_url
        self.status_code = status_code
        self.code = code


class WorkerUnavailable(WorkerError):
    """The worker could not be reached or failed on its side (connect error, timeout, 5xx): retryable."""


class WorkerRejected(WorkerError):
    """The worker refused the request (4xx other than 404): definitive, retrying will not help."""


class JobNotFound(WorkerError):
    """The worker does not know this job id (404)."""


class _ErrorBody(msgspec.Struct, kw_only=True):
    # Best effort: the bundled worker answers problem+json; another worker may answer anything.
    detail: str | None = None
    code: str | None = None


_STATUS_DECODER: Final = msgspec.json.Decoder(JobStatus)
_ERROR_DECODER: Final = msgspec.json.Decoder(_ErrorBody)
_ENCODER: Final = msgspec.json.Encoder()


def _normalise_base_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"worker base URL must be http(s)://host[:port][/prefix], got {base_url!r}")
    return base_url.rstrip("/")


def _rendezvous_weight(base_url: str, job_id: str) -> int:
    digest = hashlib.sha256(f"{base_url}\n{job_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class WorkerClient:
    """An async client of one or more generation workers.

    Use as an async context manager: it owns one `httpx.AsyncClient` (one bounded connection pool)
    for all the workers. Each job id maps to one base URL by rendezvous hashing, so a job's submit,
    status and result calls go to the worker that renders it, from any dispatcher process, and adding
    a worker moves only the jobs that now hash to it.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        request_timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        result_bytes_max: int = RESULT_BYTES_MAX_DEFAULT,
        pool_connections_max: int = POOL_CONNECTIONS_MAX_DEFAULT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network, for tests (`httpx.MockTransport`); None uses HTTP."""
        if isinstance(base_urls, str):
            # A bare string is a Sequence[str] of characters: a classic mistake, caught here.
            raise TypeError("base_urls must be a sequence of URLs, not one string")
        if not base_urls:
            raise ValueError("base_urls must name at least one worker")
        if request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        if result_bytes_max <= 0:
            raise ValueError(f"result_bytes_max must be > 0, got {result_bytes_max}")
        if pool_connections_max <= 0:
            raise ValueError(f"pool_connections_max must be > 0, got {pool_connections_max}")
        self._base_urls: tuple[str, ...] = tuple(_normalise_base_url(url) for url in base_urls)
        if len(set(self._base_urls)) != len(self._base_urls):
            raise ValueError(f"base_urls has duplicates: {list(base_urls)!r}")
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.result_bytes_max = result_bytes_max
        self.pool_connections_max = pool_connections_max
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    @property
    def base_urls(self) -> tuple[str, ...]:
        return self._base_urls

    async def __aenter__(self) -> Self:
        if self._http is not None:
            raise RuntimeError("WorkerClient is already open")
        self._http = httpx.AsyncClient(
            # request_timeout_s bounds each of read, write and pool wait; the connect phase has its own.
            timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=self.pool_connections_max,
                max_keepalive_connections=self.pool_connections_max,
            ),
            # Workers are addressed directly: no proxy from the environment, no redirects to follow.
            trust_env=False,
            follow_redirects=False,
            transport=self._transport,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def base_url_for(self, job_id: str) -> str:
        """The worker that owns `job_id`: the same answer in every process, for the job's whole life."""
        return max(self._base_urls, key=lambda base_url: _rendezvous_weight(base_url, job_id))

    async def submit(self, job: JobRequest) -> JobStatus:
        """Submit a job (idempotent by `job.id`); returns its status, which may already be final."""
        base_url = self.base_url_for(job.id)
        status_code, body = await self._send(
            "POST",
            base_url,
            "/v1/jobs",
            content=_ENCODER.encode(job),
            headers={"content-type": "application/json"},
        )
        return _decode_status(status_code, body, base_url, job.id)

    async def status(self, job_id: str) -> JobStatus:
        base_url = self.base_url_for(job_id)
        status_code, body = await self._send("GET", base_url, f"/v1/jobs/{quote(job_id, safe='')}")
        return _decode_status(status_code, body, base_url, job_id)

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job nobody will collect (idempotent): the worker stops rendering it, and it ends
        `failed` with error `cancelled`; a job already final keeps its state, which is returned."""
        base_url = self.base_url_for(job_id)
        status_code, body = await self._send("POST", base_url, f"/v1/jobs/{quote(job_id, safe='')}/cancel")
        return _decode_status(status_code, body, base_url, job_id)

    async def download_result(self, job_id: str, destination: Path) -> int:
        """Stream a succeeded job's MP4 to `destination`; returns its size in bytes.

        The bytes go to a temporary file beside `destination` that is fsynced and then renamed over
        it, so `destination` is either absent, the previous file, or the whole new file: never a torn
        download. Larger than `result_bytes_max` → `WorkerRejected`, and nothing is left behind.
        """
        http = self._require_open()
        base_url = self.base_url_for(job_id)
        url = f"{base_url}/v1/jobs/{quote(job_id, safe='')}/result"
        temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(8)}.partial")
        try:
            async with http.stream("GET", url) as response:
                if response.status_code != 200:
                    body = await _read_bounded(response, ERROR_BODY_BYTES_MAX)
                    raise _error_for_status(response.status_code, body, base_url, job_id)
                declared_bytes = _content_length(response)
                if declared_bytes is not None and declared_bytes > self.result_bytes_max:
                    raise WorkerRejected(
                        f"result of job {job_id!r} is {declared_bytes} bytes, over result_bytes_max "
                        f"{self.result_bytes_max}",
                        base_url=base_url,
                        status_code=response.status_code,
                        code="result_too_large",
                    )
                written_bytes = await self._stream_to_file(response, temporary, base_url, job_id)
                if declared_bytes is not None and written_bytes != declared_bytes:
                    raise WorkerUnavailable(
                        f"result of job {job_id!r} ended after {written_bytes} of {declared_bytes} bytes",
                        base_url=base_url,
                        status_code=response.status_code,
                    )
            await asyncio.to_thread(_replace_durably, temporary, destination)
            return written_bytes
        except httpx.RequestError as error:
            raise _unavailable(error, base_url) from error
        finally:
            # After a successful rename this finds nothing; after any failure it removes the part.
            temporary.unlink(missing_ok=True)

    async def _stream_to_file(self, response: httpx.Response, temporary: Path, base_url: str, job_id: str) -> int:
        file = await asyncio.to_thread(_open_exclusive, temporary)
        try:
            written_bytes = 0
            async for chunk in response.aiter_bytes(chunk_size=DOWNLOAD_CHUNK_BYTES):
                written_bytes += len(chunk)
                if written_bytes > self.result_bytes_max:
                    raise WorkerRejected(
                        f"result of job {job_id!r} exceeds result_bytes_max {self.result_bytes_max}",
                        base_url=base_url,
                        status_code=response.status_code,
                        code="result_too_large",
                    )
                await asyncio.to_thread(file.write, chunk)
            await asyncio.to_thread(_flush_and_sync, file)
            return written_bytes
        finally:
            file.close()

    def _require_open(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("WorkerClient is not open: use `async with WorkerClient(...) as client`")
        return self._http

    async def _send(
        self,
        method: str,
        base_url: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request; returns the status code and the (bounded) body."""
        http = self._require_open()
        try:
            async with http.stream(method, f"{base_url}{path}", content=content, headers=headers) as response:
                body_bytes_max = STATUS_BODY_BYTES_MAX if response.is_success else ERROR_BODY_BYTES_MAX
                return response.status_code, await _read_bounded(response, body_bytes_max)
        except httpx.RequestError as error:
            raise _unavailable(error, base_url) from error


def _decode_status(status_code: int, body: bytes, base_url: str, job_id: str) -> JobStatus:
    if not 200 <= status_code < 300:
        raise _error_for_status(status_code, body, base_url, job_id)
    try:
        status = _STATUS_DECODER.decode(body)
    except msgspec.DecodeError as error:
        raise WorkerUnavailable(
            f"worker answered an unreadable job status: {error}", base_url=base_url, status_code=status_code
        ) from error
    if status.id != job_id:
        # A misrouting proxy or a broken worker; never hand another job's status to the caller.
        raise WorkerUnavailable(
            f"worker answered for job {status.id!r} when asked about {job_id!r}",
            base_url=base_url,
            status_code=status_code,
        )
    return status


async def _read_bounded(response: httpx.Response, bytes_max: int) -> bytes:
    """The body, or its first `bytes_max` bytes: an answer can never make this client run out of memory."""
    parts: list[bytes] = []
    read_bytes = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk[: bytes_max - read_bytes])
        read_bytes += len(parts[-1])
        if read_bytes >= bytes_max:
            break
    return b"".join(parts)


def _content_length(response: httpx.Response) -> int | None:
    """The declared size of the decoded body, if the response says it."""
    if response.headers.get("content-encoding", "identity") != "identity":
        # Content-Length counts compressed bytes; the file gets the decoded ones.
        return None
    value = response.headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _error_for_status(status_code: int, body: bytes, base_url: str, job_id: str) -> WorkerError:
    try:
        error_body = _ERROR_DECODER.decode(body)
    except msgspec.DecodeError:
        error_body = _ErrorBody()
    detail = error_body.detail or f"worker answered HTTP {status_code} for job {job_id!r}"
    error_type: type[WorkerError]
    if status_code == 404:
        error_type = JobNotFound
    elif 400 <= status_code < 500:
        error_type = WorkerRejected
    else:
        # 5xx, and anything else a worker should never send here (1xx, 3xx): retryable.
        error_type = WorkerUnavailable
    return error_type(detail, base_url=base_url, status_code=status_code, code=error_body.code)


def _unavailable(error: httpx.RequestError, base_url: str) -> WorkerUnavailable:
    return WorkerUnavailable(f"{type(error).__name__}: {error}", base_url=base_url)


def _open_exclusive(path: Path) -> IO[bytes]:
    # "x": the name carries a random token, so an existing file would be someone else's: never reuse it.
    return path.open("xb")


def _flush_and_sync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


def _replace_durably(source: Path, destination: Path) -> None:
    os.replace(source, destination)
    # The rename lives in the directory: fsync it too, or a crash may forget the new name.
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
