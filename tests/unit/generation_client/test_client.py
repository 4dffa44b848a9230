"""WorkerClient against httpx.MockTransport: routing by job id and the classification of errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import msgspec
import pytest

from generation_client import (
    JobNotFound,
    JobRequest,
    JobStatus,
    WorkerClient,
    WorkerRejected,
    WorkerUnavailable,
)

BASE_URLS = ["http://worker-a:8100", "http://worker-b:8100", "http://worker-c:8100"]
STATUS = {
    "id": "gen_1",
    "status": "queued",
    "error": None,
    "width": 854,
    "height": 480,
    "duration_s": 4,
    "audio": True,
    "bytes": None,
}
JOB = JobRequest(id="gen_1", image_id="img_1", prompt="a cat", resolution="480p", duration_s=4, audio=True)


def client_answering(handler: httpx.MockTransport, **options: int) -> WorkerClient:
    return WorkerClient(["http://worker:8100"], transport=handler, **options)


def test_job_sticks_to_one_worker_and_jobs_spread() -> None:
    client = WorkerClient(BASE_URLS)
    owners = {f"gen_{n}": client.base_url_for(f"gen_{n}") for n in range(3_000)}
    # Deterministic: another client (another dispatcher process) picks the same worker.
    other = WorkerClient(list(reversed(BASE_URLS)))
    assert all(other.base_url_for(job_id) == owner for job_id, owner in owners.items())
    counts = Counter(owners.values())
    assert set(counts) == set(BASE_URLS)
    assert min(counts.values()) > 800


def test_adding_a_worker_moves_only_its_share_of_jobs() -> None:
    before = WorkerClient(BASE_URLS)
    after = WorkerClient([*BASE_URLS, "http://worker-d:8100"])
    job_ids = [f"gen_{n}" for n in range(3_000)]
    moved = [job_id for job_id in job_ids if before.base_url_for(job_id) != after.base_url_for(job_id)]
    assert all(after.base_url_for(job_id) == "http://worker-d:8100" for job_id in moved)
    assert 0.15 < len(moved) / len(job_ids) < 0.35


@pytest.mark.parametrize(
    ("base_urls", "error"),
    [([], ValueError), (["ftp://worker"], ValueError), (["http://a", "http://a/"], ValueError)],
)
def test_bad_base_urls_rejected(base_urls: list[str], error: type[Exception]) -> None:
    with pytest.raises(error):
        WorkerClient(base_urls)


def test_one_string_is_not_a_list_of_urls() -> None:
    with pytest.raises(TypeError):
        WorkerClient("http://worker:8100")


@pytest.mark.parametrize("option", ["request_timeout_s", "connect_timeout_s", "result_bytes_max"])
def test_non_positive_limits_rejected(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        WorkerClient(BASE_URLS, **{option: 0})


async def test_calls_outside_the_context_manager_are_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await WorkerClient(BASE_URLS).status("gen_1")


async def test_submit_sends_the_request_and_decodes_the_status() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=STATUS)

    async with client_answering(httpx.MockTransport(handler)) as client:
        status = await client.submit(JOB)
    assert status == msgspec.convert(STATUS, JobStatus)
    assert seen[0].method == "POST"
    assert seen[0].url == "http://worker:8100/v1/jobs"
    assert json.loads(seen[0].content) == {
        "id": "gen_1",
        "image_id": "img_1",
        "prompt": "a cat",
        "resolution": "480p",
        "duration_s": 4,
        "audio": True,
    }


async def test_status_tolerates_fields_a_newer_worker_adds() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json={**STATUS, "eta_s": 3}))
    async with client_answering(transport) as client:
        assert (await client.status("gen_1")).status == "queued"


@pytest.mark.parametrize(
    ("status_code", "body", "error", "code"),
    [
        (404, {"code": "job_not_found", "detail": "no job"}, JobNotFound, "job_not_found"),
        (409, {"code": "job_id_reused", "detail": "taken"}, WorkerRejected, "job_id_reused"),
        (422, {"code": "validation_failed", "detail": "bad"}, WorkerRejected, "validation_failed"),
        (400, "not json", WorkerRejected, None),
        (500, {"code": "boom", "detail": "boom"}, WorkerUnavailable, "boom"),
        (503, "<html>busy</html>", WorkerUnavailable, None),
        (302, "", WorkerUnavailable, None),
    ],
)
async def test_http_errors_classified(status_code: int, body: object, error: type[Exception], code: str | None) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status_code, text=body)
        return httpx.Response(status_code, json=body)

    async with client_answering(httpx.MockTransport(handler)) as client:
        with pytest.raises(error) as raised:
            await client.status("gen_1")
    assert getattr(raised.value, "status_code", None) == status_code
    assert getattr(raised.value, "code", None) == code


@pytest.mark.parametrize(
    "exception", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("bad")]
)
async def test_transport_errors_are_unavailable(exception: Exception) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        raise exception

    async with client_answering(httpx.MockTransport(handler)) as client:
        with pytest.raises(WorkerUnavailable) as raised:
            await client.submit(JOB)
    assert raised.value.base_url == "http://worker:8100"
    assert raised.value.status_code is None


@pytest.mark.parametrize(
    "body", [b"{not json", json.dumps({**STATUS, "status": "exploded"}).encode(), b'{"id": "gen_1"}']
)
async def test_malformed_status_is_unavailable(body: bytes) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body))
    async with client_answering(transport) as client:
        with pytest.raises(WorkerUnavailable, match="unreadable"):
            await client.status("gen_1")


async def test_status_of_another_job_is_refused() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json={**STATUS, "id": "gen_2"}))
    async with client_answering(transport) as client:
        with pytest.raises(WorkerUnavailable, match="gen_2"):
            await client.status("gen_1")


async def test_download_writes_the_file_atomically(tmp_path: Path) -> None:
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40_000
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=video, headers={"content-type": "video/mp4"}))
    destination = tmp_path / "gen_1.mp4"
    destination.write_bytes(b"old")
    async with client_answering(transport) as client:
        assert await client.download_result("gen_1", destination) == len(video)
    assert destination.read_bytes() == video
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gen_1.mp4"]


@pytest.mark.parametrize("declare_length", [True, False])
async def test_download_past_result_bytes_max_rejected_and_cleaned_up(tmp_path: Path, declare_length: bool) -> None:
    result_bytes_max = 100_000

    async def body() -> object:
        for _ in range(10):
            yield b"x" * 50_000

    def handler(_: httpx.Request) -> httpx.Response:
        if declare_length:
            return httpx.Response(200, content=b"x" * (result_bytes_max + 1))
        return httpx.Response(200, content=body())  # chunked: no Content-Length to check first

    destination = tmp_path / "gen_1.mp4"
    async with client_answering(httpx.MockTransport(handler), result_bytes_max=result_bytes_max) as client:
        with pytest.raises(WorkerRejected, match="result_bytes_max") as raised:
            await client.download_result("gen_1", destination)
    assert raised.value.code == "result_too_large"
    assert list(tmp_path.iterdir()) == []


async def test_download_at_result_bytes_max_accepted(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=b"x" * 1_000))
    async with client_answering(transport, result_bytes_max=1_000) as client:
        assert await client.download_result("gen_1", tmp_path / "out.mp4") == 1_000


async def test_download_of_unknown_job_is_not_found(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(404, json={"code": "job_not_found"}))
    async with client_answering(transport) as client:
        with pytest.raises(JobNotFound):
            await client.download_result("gen_1", tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


async def test_job_ids_are_percent_encoded_in_paths() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={})

    async with client_answering(httpx.MockTransport(handler)) as client:
        with pytest.raises(JobNotFound):
            await client.status("a/../b c")
    assert seen == ["/v1/jobs/a%2F..%2Fb%20c"]
