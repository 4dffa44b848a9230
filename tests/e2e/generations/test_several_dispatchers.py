"""Two `moments serve` processes against one database and one worker: every generation settles once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import asyncpg

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
from tests.support.processes import create_role_keys, remote_api, running, start_api, start_worker

USER = "busy-user"
GENERATIONS = 10
DISPATCHER_ENV = {"JOB_LEASE_S": "5", "DISPATCHER_POLL_INTERVAL_S": "0.2", "SWEEP_INTERVAL_S": "1"}


async def test_two_api_processes_settle_every_generation_exactly_once(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    keys = await create_role_keys(database_url)
    worker_videos = tmp_path / "worker" / "videos"
    worker = start_worker(worker_videos, wait=False)
    processes = [worker]
    try:
        for name in ("a", "b"):
            processes.append(
                start_api(
                    database_url,
                    log_dir=tmp_path / name,
                    worker_url=worker.base_url,
                    video_dir=tmp_path / name / "videos",
                    env=DISPATCHER_ENV,
                    wait=False,
                )
            )
    except BaseException:
        for process in processes:
            process.stop()
        raise
    with running(*processes) as (_, process_a, process_b):
        async with remote_api(process_a.base_url, keys) as api_a, remote_api(process_b.base_url, keys) as api_b:
            price = await price_of(api_a, body())
            await premium_user(api_a, USER, GENERATIONS * price)
            apis = [api_a, api_b]
            created = await asyncio.gather(
                *(create_ok(apis[n % 2], USER, body(f"img-{n}")) for n in range(GENERATIONS))
            )
            ids = [generation["id"] for generation in created]
            assert len(set(ids)) == GENERATIONS

            # One at a time: they all render meanwhile, and the API processes are not flooded with polls.
            finals = [await wait_final(apis[n % 2], generation_id) for n, generation_id in enumerate(ids)]
            assert [generation["status"] for generation in finals] == ["succeeded"] * GENERATIONS, finals
            for generation_id in ids:
                assert await transaction_kinds(pool, generation_id) == Counter({"hold": 1, "capture": 1})
                record = worker_record(worker_videos, generation_id)
                assert (record["status"], record["renders"]) == ("succeeded", 1), record
            assert await pool.fetchval("SELECT count(*) FROM generation_jobs WHERE NOT done") == 0
            assert await balance(api_b, USER) == {"available": 0, "held": 0}
            paths = [row["video_path"] for row in await pool.fetch("SELECT video_path FROM generations")]
            # Which process delivered each video (not asserted: either may take any job).
            print("videos delivered by", Counter(Path(path).parent.parent.name for path in paths))

            # Refunds racing through both processes on one generation: never more than was charged.
            target = ids[0]
            refunds = await asyncio.gather(
                *(
                    apis[n % 2].post(
                        f"/v1/generations/{target}/refund", "support", {"reason": "race", "moments": 100}, f"race-{n}"
                    )
                    for n in range(4)
                )
            )
            outcomes = Counter(response.status_code for response in refunds)
            refunded = 100 * outcomes[201]
            fits = min(4, price // 100)
            assert outcomes == Counter({201: fits, 409: 4 - fits}), [r.text for r in refunds]
            assert {r.json()["code"] for r in refunds if r.status_code == 409} <= {"not_refundable"}
            assert (await wait_final(api_a, target))["charged"] == price - refunded
            assert await transaction_kinds(pool, target) == Counter({"hold": 1, "capture": 1, "refund": outcomes[201]})
            assert await balance(api_b, USER) == {"available": refunded, "held": 0}
            await assert_audit_ok(api_a)
            await assert_audit_ok(api_b)
