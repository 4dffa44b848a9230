"""The bundled worker as a real process (granian on 127.0.0.1), driven through WorkerClient.

Each test renders 4 s at 480p: long enough to be a real video, short enough that the file runs in
seconds. The MP4s are probed with PyAV: container duration, codecs, frame size, frame count.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from generation_client import (
    JobNotFound,
    JobRequest,
    JobStatus,
    WorkerClient,
    WorkerRejected,
    WorkerUnavailable,
)

ROOT = Path(__file__).resolve().parents[3]
WORKER_STARTUP_S_MAX = 30.0
WORKER_SHUTDOWN_S_MAX = 15.0
JOB_FINAL_S_MAX = 30.0
POLL_INTERVAL_S = 0.05
DURATION_S = 4
FRAMES_PER_SECOND = 24
# A source image of one flat colour: a frame rendered from it must have (about) that colour.
SOURCE_RGB = (200, 40, 30)


@dataclass(frozen=True)
class RunningWorker:
    base_url: str
    video_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _worker_environment() -> dict[str, str]:
    # Settings come from the command line only: nothing inherited from the developer's shell.
    return {name: value for name, value in os.environ.items() if not name.startswith("WORKER_") and name != "IMAGE_DIR"}


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + WORKER_STARTUP_S_MAX
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"worker exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"worker not healthy after {WORKER_STARTUP_S_MAX} s:\n{log_path.read_text()}")


def _stop(process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    # The whole group: granian's main process and the worker process it spawned.
    os.killpg(process.pid, stop_signal)
    try:
        process.wait(timeout=WORKER_SHUTDOWN_S_MAX)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=WORKER_SHUTDOWN_S_MAX)


def _start(
    video_dir: Path,
    *,
    image_dir: Path | None = None,
    failure_rate: float = 0.0,
    hang_rate: float = 0.0,
    latency_ms: int = 0,
) -> RunningWorker:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "generation_client.worker",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--video-dir={video_dir}",
        f"--failure-rate={failure_rate}",
        f"--hang-rate={hang_rate}",
        f"--latency-ms={latency_ms}",
        "--seed=1",
    ]
    if image_dir is not None:
        command.append(f"--image-dir={image_dir}")
    video_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = video_dir.parent / f"worker-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_worker_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RunningWorker(base_url=f"http://127.0.0.1:{port}", video_dir=video_dir, process=process, log_path=log_path)


@contextmanager
def running_workers(*workers: RunningWorker) -> Iterator[None]:
    """Wait until every worker answers /healthz (they start in parallel), stop them all at the end."""
    try:
        for worker in workers:
            _wait_healthy(worker.base_url, worker.process, worker.log_path)
        yield
    finally:
        for worker in workers:
            _stop(worker.process)


@contextmanager
def running_worker(video_dir: Path, *, latency_ms: int = 0) -> Iterator[RunningWorker]:
    worker = _start(video_dir, latency_ms=latency_ms)
    with running_workers(worker):
        yield worker


def _write_source_image(path: Path) -> None:
    pixels = np.empty((360, 640, 3), np.uint8)
    pixels[:, :] = SOURCE_RGB
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    _write_source_image(directory / "red_image.png")
    return directory


@dataclass(frozen=True)
class Fleet:
    healthy: RunningWorker  # no faults, source images in image_dir
    failing: RunningWorker  # failure_rate=1
    hanging: RunningWorker  # hang_rate=1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Iterator[Fleet]:
    # Started together: most of a worker's start-up is importing, and the imports overlap.
    root = tmp_path_factory.mktemp("fleet")
    started = Fleet(
        healthy=_start(root / "healthy" / "videos", image_dir=image_dir),
        failing=_start(root / "failing" / "videos", failure_rate=1.0),
        hanging=_start(root / "hanging" / "videos", hang_rate=1.0),
    )
    with running_workers(started.healthy, started.failing, started.hanging):
        yield started


@pytest.fixture
def worker(fleet: Fleet) -> RunningWorker:
    return fleet.healthy


def job(job_id: str, **changes: object) -> JobRequest:
    fields: dict[str, object] = {
        "id": job_id,
        "image_id": "no_such_image",
        "prompt": "a lighthouse at dusk, waves rolling in",
        "resolution": "480p",
        "duration_s": DURATION_S,
        "audio": True,
    }
    fields.update(changes)
    return JobRequest(**fields)  # type: ignore[arg-type]


async def wait_final(client: WorkerClient, job_id: str) -> JobStatus:
    deadline = time.monotonic() + JOB_FINAL_S_MAX
    while True:
        status = await client.status(job_id)
        if status.status in ("succeeded", "failed"):
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status.status} after {JOB_FINAL_S_MAX} s"
        await asyncio.sleep(POLL_INTERVAL_S)


def record(worker: RunningWorker, job_id: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((worker.video_dir / f"{job_id}.json").read_text())
    return loaded


@dataclass(frozen=True)
class Probe:
    duration_s: float
    video_codec: str
    width: int
    height: int
    pixel_format: str
    frames: int
    average_rate: float
    audio_codecs: list[str]
    audio_sample_rates: list[int]
    first_frame_mean_rgb: tuple[float, float, float]


def probe(path: Path) -> Probe:
    with av.open(str(path)) as container:
        assert container.duration is not None
        video = container.streams.video[0]
        audio = list(container.streams.audio)
        frames = list(container.decode(video=0))
        mean = frames[0].to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
        return Probe(
            duration_s=container.duration / av.time_base,
            video_codec=video.codec_context.name,
            width=video.codec_context.width,
            height=video.codec_context.height,
            pixel_format=str(video.codec_context.pix_fmt),
            frames=len(frames),
            average_rate=float(video.average_rate or 0),
            audio_codecs=[stream.codec_context.name for stream in audio],
            audio_sample_rates=[stream.codec_context.sample_rate for stream in audio],
            first_frame_mean_rgb=(float(mean[0]), float(mean[1]), float(mean[2])),
        )


async def test_render_with_audio_is_a_real_mp4(worker: RunningWorker, tmp_path: Path) -> None:
    async with WorkerClient([worker.base_url]) as client:
        accepted = await client.submit(job("render_audio"))
        assert accepted.status in ("queued", "running")
        assert (accepted.width, accepted.height, accepted.bytes) == (854, 480, None)

        # While the render runs in its thread, the event loop keeps answering.
        health_latencies_s = []
        async with httpx.AsyncClient(base_url=worker.base_url) as http:
            while (await client.status("render_audio")).status != "succeeded":
                started_s = time.perf_counter()
                assert (await http.get("/healthz")).status_code == 200
                health_latencies_s.append(time.perf_counter() - started_s)
                await asyncio.sleep(POLL_INTERVAL_S)
        assert max(health_latencies_s, default=0.0) < 0.5

        status = await wait_final(client, "render_audio")
        assert status.status == "succeeded"
        assert status.error is None
        destination = tmp_path / "render_audio.mp4"
        size_bytes = await client.download_result("render_audio", destination)

    assert size_bytes == status.bytes == destination.stat().st_size
    assert destination.read_bytes() == (worker.video_dir / "render_audio.mp4").read_bytes()
    result = probe(destination)
    assert result.duration_s == pytest.approx(DURATION_S, abs=0.1)
    assert (result.video_codec, result.width, result.height) == ("h264", 854, 480)
    assert result.pixel_format == "yuv420p"
    assert result.frames == DURATION_S * FRAMES_PER_SECOND
    assert result.average_rate == FRAMES_PER_SECOND
    assert result.audio_codecs == ["aac"]
    assert result.audio_sample_rates == [48_000]
    print(f"\n480p {DURATION_S} s with audio: {size_bytes} bytes")


async def test_render_from_source_image_without_audio(worker: RunningWorker, tmp_path: Path) -> None:
    async with WorkerClient([worker.base_url]) as client:
        await client.submit(job("render_image", image_id="red_image", audio=False))
        status = await wait_final(client, "render_image")
        assert status.status == "succeeded"
        assert status.audio is False
        destination = tmp_path / "render_image.mp4"
        size_bytes = await client.download_result("render_image", destination)

    result = probe(destination)
    assert result.duration_s == pytest.approx(DURATION_S, abs=0.1)
    assert (result.video_codec, result.width, result.height) == ("h264", 854, 480)
    assert result.frames == DURATION_S * FRAMES_PER_SECOND
    assert result.audio_codecs == []
    # The picture is the source image's colour (within the loss of yuv420p and H.264).
    for channel, expected in zip(result.first_frame_mean_rgb, SOURCE_RGB, strict=True):
        assert channel == pytest.approx(expected, abs=12)
    print(f"\n480p {DURATION_S} s from an image, no audio: {size_bytes} bytes")


async def test_same_id_same_body_renders_once(worker: RunningWorker) -> None:
    request = job("idempotent")
    async with WorkerClient([worker.base_url]) as client:
        # Concurrent duplicates (a dispatcher retrying after a timeout) race for the same id.
        statuses = await asyncio.gather(*(client.submit(request) for _ in range(8)))
        assert {status.id for status in statuses} == {"idempotent"}
        first = await wait_final(client, "idempotent")
        video = worker.video_dir / "idempotent.mp4"
        rendered = video.stat()

        again = await client.submit(request)
        await asyncio.sleep(0.5)  # time for a (wrong) second render to start and finish
        assert again == first
        assert await client.status("idempotent") == first

    assert record(worker, "idempotent")["renders"] == 1
    assert (video.stat().st_ino, video.stat().st_mtime_ns) == (rendered.st_ino, rendered.st_mtime_ns)


async def test_same_id_different_body_rejected(worker: RunningWorker) -> None:
    async with WorkerClient([worker.base_url]) as client:
        await client.submit(job("conflict"))
        with pytest.raises(WorkerRejected) as raised:
            await client.submit(job("conflict", prompt="something else entirely"))
        assert (raised.value.status_code, raised.value.code) == (409, "job_id_reused")
        # The original job is untouched.
        assert (await wait_final(client, "conflict")).status == "succeeded"


@pytest.mark.parametrize(
    "changes",
    [
        {"duration_s": 0},
        {"duration_s": 61},
        {"prompt": ""},
        {"prompt": "x" * 5_001},
        {"resolution": "4k"},
        {"image_id": "../../etc/passwd"},
        {"id": ".hidden"},
        {"id": "gen_1\n"},
        {"id": "a/b"},
        {"id": "x" * 201},
    ],
)
async def test_invalid_request_rejected_with_422(worker: RunningWorker, changes: dict[str, object]) -> None:
    async with WorkerClient([worker.base_url]) as client:
        with pytest.raises(WorkerRejected) as raised:
            await client.submit(job("invalid", **changes))
    assert (raised.value.status_code, raised.value.code) == (422, "validation_failed")


async def test_limits_accepted_at_their_bound(worker: RunningWorker) -> None:
    async with WorkerClient([worker.base_url]) as client:
        status = await client.submit(job("x" * 200, prompt="p" * 5_000, duration_s=1, audio=False))
        assert status.id == "x" * 200
        assert (await wait_final(client, "x" * 200)).status == "succeeded"


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "u", "image_id": "i", "prompt": "p", "resolution": "480p", "duration_s": 4, '
        b'"audio": true, "priority": 1}',
        b'{"id": "u", "image_id": "i", "prompt": "p", "resolution": "480p", "duration_s": "4", "audio": true}',
        b'{"id": "u"}',
        b"not json",
    ],
)
async def test_unknown_fields_and_bad_types_are_422_problem_json(worker: RunningWorker, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=worker.base_url) as http:
        response = await http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "validation_failed"


async def test_unknown_job_is_not_found(worker: RunningWorker, tmp_path: Path) -> None:
    async with WorkerClient([worker.base_url]) as client:
        with pytest.raises(JobNotFound):
            await client.status("never_submitted")
        with pytest.raises(JobNotFound):
            await client.download_result("never_submitted", tmp_path / "never.mp4")
        # Ids no job can have (the lock file's name, a path, a space) are simply unknown.
        for odd_id in (".worker", ".worker.lock", "../videos/x", "a b", "x" * 300):
            with pytest.raises(JobNotFound):
                await client.status(odd_id)
    assert list(tmp_path.iterdir()) == []


async def test_result_larger_than_result_bytes_max_rejected(worker: RunningWorker, tmp_path: Path) -> None:
    async with WorkerClient([worker.base_url], result_bytes_max=10_000) as client:
        await client.submit(job("too_large"))
        assert (await wait_final(client, "too_large")).status == "succeeded"
        with pytest.raises(WorkerRejected, match="result_bytes_max"):
            await client.download_result("too_large", tmp_path / "too_large.mp4")
    assert list(tmp_path.iterdir()) == []


async def test_unreachable_worker_is_unavailable() -> None:
    async with WorkerClient([f"http://127.0.0.1:{_free_port()}"], connect_timeout_s=0.5) as client:
        with pytest.raises(WorkerUnavailable):
            await client.status("any")


async def test_failure_rate_one_fails_every_job(fleet: Fleet, tmp_path: Path) -> None:
    async with WorkerClient([fleet.failing.base_url]) as client:
        await client.submit(job("doomed"))
        status = await wait_final(client, "doomed")
        assert (status.status, status.error, status.bytes) == ("failed", "injected_failure", None)
        # A retry of the same id meets the same fate, without a second attempt.
        assert await client.submit(job("doomed")) == status
        with pytest.raises(WorkerRejected) as raised:
            await client.download_result("doomed", tmp_path / "doomed.mp4")
        assert (raised.value.status_code, raised.value.code) == (409, "job_not_succeeded")
    assert not (fleet.failing.video_dir / "doomed.mp4").exists()


async def test_hang_rate_one_never_finishes(fleet: Fleet, tmp_path: Path) -> None:
    async with WorkerClient([fleet.hanging.base_url]) as client:
        assert (await client.submit(job("stuck"))).status == "running"
        await asyncio.sleep(1.5)  # a 4 s 480p render would be done by now
        status = await client.status("stuck")
        assert (status.status, status.error, status.bytes) == ("running", None, None)
        assert await client.submit(job("stuck")) == status
        with pytest.raises(WorkerRejected) as raised:
            await client.download_result("stuck", tmp_path / "stuck.mp4")
        assert raised.value.status_code == 409
    assert not (fleet.hanging.video_dir / "stuck.mp4").exists()


async def test_restarts_keep_finished_jobs_and_resume_interrupted_ones(tmp_path: Path) -> None:
    video_dir = tmp_path / "videos"
    with running_worker(video_dir) as first:
        async with WorkerClient([first.base_url]) as client:
            await client.submit(job("durable"))
            durable = await wait_final(client, "durable")
            assert durable.status == "succeeded"
    rendered = (video_dir / "durable.mp4").stat()

    # Second life: latency_ms keeps a job `running` after its render, long enough to kill the worker
    # at the worst moment (video written, job not yet marked succeeded).
    with running_worker(video_dir, latency_ms=60_000) as second:
        async with WorkerClient([second.base_url]) as client:
            assert await client.status("durable") == durable
            assert await client.submit(job("durable")) == durable
            with pytest.raises(WorkerRejected):
                await client.submit(job("durable", audio=False))

            await client.submit(job("interrupted"))
            deadline = time.monotonic() + JOB_FINAL_S_MAX
            while not (video_dir / "interrupted.mp4").exists():
                assert time.monotonic() < deadline
                await asyncio.sleep(POLL_INTERVAL_S)
            assert (await client.status("interrupted")).status == "running"
        _stop(second.process, signal.SIGKILL)

    with running_worker(video_dir) as third:
        async with WorkerClient([third.base_url]) as client:
            # The first status call finds the abandoned job and renders it again.
            assert (await client.status("interrupted")).status in ("queued", "running")
            interrupted = await wait_final(client, "interrupted")
            assert interrupted.status == "succeeded"
            assert await client.download_result("interrupted", tmp_path / "interrupted.mp4") == interrupted.bytes
            assert await client.status("durable") == durable
            assert await client.download_result("durable", tmp_path / "durable.mp4") == durable.bytes
        assert record(third, "interrupted")["renders"] == 2
        assert record(third, "durable")["renders"] == 1
    assert (video_dir / "durable.mp4").stat().st_mtime_ns == rendered.st_mtime_ns
    assert probe(tmp_path / "interrupted.mp4").frames == DURATION_S * FRAMES_PER_SECOND
    # The killed worker's temporary files are gone.
    assert not list(video_dir.glob(".*.partial"))


async def test_the_worker_logs_json_lines_when_not_on_a_terminal(worker: RunningWorker) -> None:
    await asyncio.sleep(0.2)  # granian's "Started worker-1" comes just after /healthz answers
    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line, granian's own included, is JSON
    assert any(event.get("event") == "worker_started" for event in events), lines
    assert all({"event", "level", "timestamp"} <= set(event) for event in events), lines


async def test_cancel_stops_a_hung_job_once_and_is_idempotent(fleet: Fleet) -> None:
    async with WorkerClient([fleet.hanging.base_url]) as client:
        assert (await client.submit(job("abandoned"))).status == "running"
        cancelled = await client.cancel("abandoned")
        assert (cancelled.status, cancelled.error) == ("failed", "cancelled")
        assert await client.status("abandoned") == cancelled
        # Again, and a resubmission of the same id: the job stays as it ended.
        assert await client.cancel("abandoned") == cancelled
        assert await client.submit(job("abandoned")) == cancelled
    assert record(fleet.hanging, "abandoned")["error"] == "cancelled"


async def test_cancel_stops_a_render_in_progress_and_frees_its_slot(tmp_path: Path) -> None:
    # latency_ms keeps the job running after its frames; cancelling it must end it at once, not after.
    with running_worker(tmp_path / "videos", latency_ms=60_000) as slow:
        async with WorkerClient([slow.base_url]) as client:
            await client.submit(job("slow"))
            cancelled = await client.cancel("slow")
            assert (cancelled.status, cancelled.error) == ("failed", "cancelled")
            assert (await client.status("slow")).status == "failed"
    assert not (tmp_path / "videos" / "slow.mp4.partial").exists()


async def test_cancel_leaves_a_finished_job_as_it_is_and_unknown_jobs_are_not_found(worker: RunningWorker) -> None:
    async with WorkerClient([worker.base_url]) as client:
        await client.submit(job("finished-before-cancel"))
        done = await wait_final(client, "finished-before-cancel")
        assert done.status == "succeeded"
        assert await client.cancel("finished-before-cancel") == done
        with pytest.raises(JobNotFound):
            await client.cancel("never-submitted")
        with pytest.raises(JobNotFound):
            await client.cancel("bad\nid")
