"""Faults under a steady load of generations: PostgreSQL killed and restarted, PostgreSQL frozen, the worker
killed and restarted, an API process killed, a flood past the workers' capacity, an unwritable video store.

Each ends with the same checks (tests/support/chaos.py): every accepted generation final and settled
once, nothing held for a refused request, every user's moments tied, `moments audit` clean, no answer but
202 and 503 (with Retry-After) while the fault lasted, and a new generation delivered within seconds of
the fault's end.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.chaos import (
    API_SETTINGS,
    ChaosDatabase,
    Load,
    check_books,
    failure_reasons,
    keys_for,
    prepare_users,
    recovers,
    steady_load,
)
from tests.support.processes import RunningProcess, start_api, start_worker

# A scenario is a fault, its recovery and the settling of everything it accepted: more than a unit's time.
pytestmark = pytest.mark.timeout(240)
# Connection failures a client sees while an API process is dead (never an HTTP answer).
CONNECTION_FAILURES = {"ConnectError", "RemoteProtocolError", "ReadError", "WriteError"}
FAULT_S = 3.0
WARM_UP_S = 1.5
# Where the fault is not the worker's, it renders nothing (each job is done at its submit, with a real clip
# to download): the machine's cores go to the processes under test, and the scenario ends sooner.
INSTANT_WORKER = {"WORKER_INSTANT": "true"}


@dataclass
class Stack:
    database_url: str
    worker: RunningProcess
    apis: list[RunningProcess]
    keys: dict[str, str]
    video_dir: Path
    worker_video_dir: Path
    worker_env: Mapping[str, str] | None

    @property
    def urls(self) -> list[str]:
        return [api.base_url for api in self.apis]

    def restart_worker(self) -> None:
        """A new worker where the old one was: same port, same directory (its job records survive)."""
        self.worker = start_worker(self.worker_video_dir, port=self.worker.port, env=self.worker_env)


@asynccontextmanager
async def stack(
    database: ChaosDatabase,
    folder: Path,
    *,
    apis: int = 1,
    api_env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    database_url = await database.new_database()
    keys = await keys_for(database_url)
    worker_video_dir = folder / "worker-videos"
    worker = start_worker(worker_video_dir, env=worker_env)
    video_dir = folder / "videos"
    video_dir.mkdir()
    started: list[RunningProcess] = []
    the_stack = Stack(database_url, worker, started, keys, video_dir, worker_video_dir, worker_env)
    try:
        for _ in range(apis):
            started.append(
                start_api(
                    database_url,
                    log_dir=folder,
                    worker_url=worker.base_url,
                    video_dir=video_dir,
                    env=API_SETTINGS | dict(api_env or {}),
                    wait=False,
                )
            )
        for api in started:
            api.wait_healthy()
        await prepare_users(started[0].base_url, keys)
        yield the_stack
    finally:
        for api in started:
            api.stop()
        the_stack.worker.stop()


def answered_only(load: Load, allowed: set[int | str]) -> None:
    statuses = load.statuses()
    assert 500 not in statuses, statuses
    assert set(statuses) <= allowed, statuses


async def readyz(url: str) -> tuple[int, float]:
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(f"{url}/readyz")
    return response.status_code, time.monotonic() - started


async def test_postgres_killed_and_restarted(chaos_db: ChaosDatabase, chaos_dir: Path) -> None:
    async with stack(chaos_db, chaos_dir, worker_env=INSTANT_WORKER) as running:
        async with steady_load(running.urls, running.keys["service"]) as load:
            await asyncio.sleep(WARM_UP_S)
            during = len(load.requests)
            chaos_db.kill()
            await asyncio.sleep(FAULT_S)
            assert (await readyz(running.urls[0]))[0] == 503
            assert load.statuses_since(during)[503] > 0, load.statuses()
            chaos_db.start()
            await recovers(load, running.urls[0])
        answered_only(load, {202, 503})
        await check_books(running.database_url, load)
        assert not await failure_reasons(running.database_url)


async def test_postgres_stalled(chaos_db: ChaosDatabase, chaos_dir: Path) -> None:
    async with stack(chaos_db, chaos_dir, worker_env=INSTANT_WORKER) as running:
        async with steady_load(running.urls, running.keys["service"]) as load:
            await asyncio.sleep(WARM_UP_S)
            chaos_db.stall()
            try:
                await asyncio.sleep(1.0)
                # The probe answers within its own 2 s limit, whatever the database does.
                status, elapsed_s = await readyz(running.urls[0])
                assert status == 503
                assert elapsed_s < 3.0, elapsed_s
                await asyncio.sleep(FAULT_S)
            finally:
                chaos_db.resume()
            await recovers(load, running.urls[0])
        answered_only(load, {202, 503})
        await check_books(running.database_url, load)
        assert not await failure_reasons(running.database_url)


async def test_worker_killed_and_restarted(chaos_db: ChaosDatabase, chaos_dir: Path) -> None:
    async with stack(chaos_db, chaos_dir) as running:
        async with steady_load(running.urls, running.keys["service"]) as load:
            await asyncio.sleep(WARM_UP_S)
            running.worker.kill()
            await asyncio.sleep(FAULT_S)
            running.restart_worker()
            await recovers(load, running.urls[0])
        answered_only(load, {202})
        statuses = await check_books(running.database_url, load)
        # The retry budget outlasts the restart: nothing in flight failed.
        assert not await failure_reasons(running.database_url), statuses


async def test_api_process_killed(chaos_db: ChaosDatabase, chaos_dir: Path) -> None:
    async with stack(chaos_db, chaos_dir, apis=2, worker_env=INSTANT_WORKER) as running:
        async with steady_load(running.urls, running.keys["service"], rate_per_s=3.0) as load:
            await asyncio.sleep(WARM_UP_S)
            victim, survivor = running.apis
            victim.kill()
            # Its leased jobs come back to the survivor once their leases lapse (JOB_LEASE_S).
            await asyncio.sleep(FAULT_S)
            await recovers(load, survivor.base_url)
        answered_only(load, {202, 503} | CONNECTION_FAILURES)
        await check_books(running.database_url, load)
        assert not await failure_reasons(running.database_url)


async def test_flood_past_the_workers_capacity(chaos_db: ChaosDatabase, chaos_dir: Path) -> None:
    """Far more generations than one render slot can deliver before their holds expire: the surplus is
    refused (503, Retry-After) before anything is held, and everything accepted is delivered."""
    api_env = {
        "HOLD_TTL_S": "20",
        "ADMISSION_QUEUE_DEPTH_MIN": "4",
        "ADMISSION_WINDOW_S": "10",
        "DISPATCHER_CONCURRENCY": "2",
    }
    worker_env = {"WORKER_MAX_CONCURRENT_RENDERS": "1"}
    async with stack(chaos_db, chaos_dir, api_env=api_env, worker_env=worker_env) as running:
        async with steady_load(running.urls, running.keys["service"], rate_per_s=1.0) as warm_up:
            await asyncio.sleep(WARM_UP_S * 2)
        flood = Load(urls=running.urls, service_key=running.keys["service"], rate_per_s=40.0, drain_s=3.0)
        flooding = asyncio.create_task(flood.run())
        await asyncio.sleep(2.5)
        flood.stop()
        await flooding
        assert flood.statuses()[503] > 0, flood.statuses()
        refused = [request for request in flood.requests if request.generation_id is None]
        assert refused, flood.statuses()
        await recovers(flood, running.urls[0])
        answered_only(flood, {202, 503})
        flood.requests += warm_up.requests
        statuses = await check_books(running.database_url, flood)
        # Nothing accepted was left to expire: every accepted generation was delivered.
        assert not await failure_reasons(running.database_url), statuses
        assert set(statuses) == {"succeeded"}


async def test_unwritable_video_store(chaos_db: ChaosDatabase, chaos_dir: Path) -> None:
    """VIDEO_DIR replaced by a file (root ignores permission bits): each video that cannot be stored fails
    its generation with the reason after a few tries, the moments go back at once, and /readyz and /metrics
    say the store is unusable until it is back."""
    async with stack(chaos_db, chaos_dir, worker_env=INSTANT_WORKER) as running:
        async with steady_load(running.urls, running.keys["service"]) as load:
            await asyncio.sleep(WARM_UP_S)
            away = running.video_dir.with_name("videos-away")
            os.replace(running.video_dir, away)
            running.video_dir.write_bytes(b"not a directory")
            try:
                await asyncio.sleep(FAULT_S)
                status, _ = await readyz(running.urls[0])
                assert status == 503
                async with httpx.AsyncClient(timeout=5.0) as client:
                    metrics = (await client.get(f"{running.urls[0]}/metrics")).text
                assert "moments_video_store_writable 0.0" in metrics
            finally:
                running.video_dir.unlink()
                os.replace(away, running.video_dir)
            await recovers(load, running.urls[0])
            assert (await readyz(running.urls[0]))[0] == 200
        answered_only(load, {202})
        await check_books(running.database_url, load)
        reasons = await failure_reasons(running.database_url)
        assert set(reasons) == {"video_store_failed"}, reasons
