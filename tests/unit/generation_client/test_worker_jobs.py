"""The worker's job store, in process: the video directory lock and the leftovers of a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation_client.worker.jobs import JobStore, VideoDirectoryLocked
from generation_client.worker.settings import WorkerSettings


def settings_for(video_dir: Path) -> WorkerSettings:
    return WorkerSettings(video_dir=video_dir, image_dir=None, failure_rate=0.0, latency_ms=0, hang_rate=0.0)


async def test_second_store_on_the_same_directory_refuses_to_start(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "videos")
    first = JobStore(settings)
    await first.start()
    try:
        with pytest.raises(VideoDirectoryLocked, match="another worker process"):
            await JobStore(settings).start()
    finally:
        await first.close()
    # Closing releases the lock for the next worker.
    second = JobStore(settings)
    await second.start()
    await second.close()


async def test_start_removes_the_partial_files_of_a_crashed_worker(tmp_path: Path) -> None:
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    (video_dir / ".gen_1.mp4.0123abcd.partial").write_bytes(b"half a video")
    (video_dir / ".gen_1.json.0123abcd.partial").write_bytes(b"{")
    (video_dir / "gen_2.mp4").write_bytes(b"a finished video")
    store = JobStore(settings_for(video_dir))
    await store.start()
    await store.close()
    assert sorted(path.name for path in video_dir.iterdir()) == [".worker.lock", "gen_2.mp4"]


async def test_instant_mode_finishes_every_job_in_its_submit_with_one_shared_clip(tmp_path: Path) -> None:
    from generation_client.schemas import JobRequest

    video_dir = tmp_path / "videos"
    settings = WorkerSettings(
        video_dir=video_dir, image_dir=None, failure_rate=0.0, latency_ms=0, hang_rate=0.0, instant=True
    )
    store = JobStore(settings)
    await store.start()
    try:
        statuses = [
            await store.submit(
                JobRequest(id=f"job-{number}", image_id="img", prompt="p", resolution="480p", duration_s=4, audio=False)
            )
            for number in range(3)
        ]
        assert [status.status for status in statuses] == ["succeeded"] * 3
        paths = [await store.result_path(f"job-{number}") for number in range(3)]
        # Rendered once, then linked: every job's video is the same file.
        assert len({path.stat().st_ino for path in paths}) == 1
        assert paths[0].stat().st_size > 0
        # A resubmit is idempotent, as for any job.
        again = await store.submit(
            JobRequest(id="job-0", image_id="img", prompt="p", resolution="480p", duration_s=4, audio=False)
        )
        assert again.status == "succeeded"
    finally:
        await store.close()


def test_instant_mode_takes_no_faults(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fault-free"):
        WorkerSettings(video_dir=tmp_path, image_dir=None, failure_rate=0.5, latency_ms=0, hang_rate=0.0, instant=True)
    assert WorkerSettings.from_env({"WORKER_INSTANT": "true"}).instant
    with pytest.raises(ValueError, match="WORKER_INSTANT"):
        WorkerSettings.from_env({"WORKER_INSTANT": "sometimes"})
