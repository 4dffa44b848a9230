"""A dispatcher killed mid-render: another API process takes the job over when the lease lapses.

Real processes throughout: a slow `moments worker` (the video is rendered, then the job stays `running`
for 4 s more), API process A (`moments serve`) that takes the job and is SIGKILLed while the worker
renders it, and API process B started afterwards. B must finish the flow: exactly one capture, one
render, the video delivered, the audit clean.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

from tests.support.generations import (
    assert_audit_ok,
    balance,
    body,
    create_ok,
    premium_user,
    price_of,
    transaction_kinds,
    wait_final,
    worker_record,
)
from tests.support.processes import api_process, create_role_keys, remote_api, start_api, worker_process

USER = "crash-user"
LEASE_S = 2
DISPATCHER_ENV = {
    "JOB_LEASE_S": str(LEASE_S),
    "DISPATCHER_POLL_INTERVAL_S": "0.2",
    "SWEEP_INTERVAL_S": "1",
}
WAIT_S_MAX = 30.0


async def test_killed_dispatcher_is_taken_over_without_a_second_render_or_charge(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    keys = await create_role_keys(database_url)
    worker_videos = tmp_path / "worker" / "videos"
    with worker_process(worker_videos, latency_ms=4000) as worker:
        process_a = start_api(
            database_url,
            log_dir=tmp_path / "a",
            worker_url=worker.base_url,
            video_dir=tmp_path / "a" / "videos",
            env=DISPATCHER_ENV,
        )
        try:
            async with remote_api(process_a.base_url, keys) as api_a:
                price = await price_of(api_a, body())
                await premium_user(api_a, USER, price + 100)
                generation_id = (await create_ok(api_a, USER, body()))["id"]

                # Wait until the worker renders the job and A holds its lease.
                deadline = time.monotonic() + WAIT_S_MAX
                async with httpx.AsyncClient(base_url=worker.base_url, timeout=5.0) as worker_http:
                    while True:
                        assert time.monotonic() < deadline, "the worker never reported the job running under A"
                        job = await worker_http.get(f"/v1/jobs/{generation_id}")
                        lease = await pool.fetchrow(
                            "SELECT lease_owner, lease_expires_at > now() AS live FROM generation_jobs "
                            "WHERE generation_id = $1::uuid",
                            generation_id,
                        )
                        assert lease is not None
                        if job.status_code == 200 and job.json()["status"] == "running" and lease["live"]:
                            break
                        await asyncio.sleep(0.05)
            # The lease owner is "host:pid:nonce": the pid is A's server process.
            owner_pid = int(lease["lease_owner"].split(":")[-2])
            assert owner_pid in process_a.group_pids(), (lease["lease_owner"], process_a.group_pids())
            process_a.kill()
        finally:
            process_a.stop()

        # A died mid-flight: nothing settled, the job still leased to the dead process.
        row = await pool.fetchrow(
            "SELECT g.status, j.done, j.lease_owner FROM generations g "
            "JOIN generation_jobs j ON j.generation_id = g.id WHERE g.id = $1::uuid",
            generation_id,
        )
        assert row is not None
        assert row["status"] in {"queued", "running"}, row
        assert row["done"] is False
        assert row["lease_owner"] == lease["lease_owner"]
        assert await transaction_kinds(pool, generation_id) == Counter({"hold": 1})

        with api_process(
            database_url,
            log_dir=tmp_path / "b",
            worker_url=worker.base_url,
            video_dir=tmp_path / "b" / "videos",
            env=DISPATCHER_ENV,
        ) as process_b:
            async with remote_api(process_b.base_url, keys) as api_b:
                generation = await wait_final(api_b, generation_id, timeout_s=WAIT_S_MAX)
                assert generation["status"] == "succeeded", (generation, process_b.log_tail())
                assert generation["charged"] == price
                assert await transaction_kinds(pool, generation_id) == Counter({"hold": 1, "capture": 1})
                assert await balance(api_b, USER) == {"available": 100, "held": 0}

                # B delivered it, from the worker's single render.
                video_path = await pool.fetchval(
                    "SELECT video_path FROM generations WHERE id = $1::uuid", generation_id
                )
                assert Path(video_path).parent == (tmp_path / "b" / "videos").resolve()
                record = worker_record(worker_videos, generation_id)
                assert record["status"] == "succeeded"
                assert record["renders"] == 1, record
                video = await api_b.client.get(generation["video_url"], headers=api_b.headers("service"))
                assert video.status_code == 200
                assert len(video.content) == record["bytes"]
                await assert_audit_ok(api_b)
