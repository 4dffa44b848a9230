"""What the generation flow does when its surroundings fail: admission control refuses work the workers
cannot finish before anything is held; a job is not started when its hold would expire first; an
unusable video store fails the generation with its reason and gives the moments back at once (and says
so on /readyz and /metrics); an unreachable worker is retried for a time budget; a stopping dispatcher
hands its leases back; database errors that are not the request's fault are 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import ledger
from entitlements.generations import Admission, Dispatcher
from generation_client import WorkerClient
from tests.support.app import settings_for
from tests.support.generations import (
    assert_audit_ok,
    balance,
    body,
    create,
    create_ok,
    fresh_key,
    premium_user,
    transaction_kinds,
    wait_final,
)
from tests.support.http import api_for
from tests.support.processes import RunningProcess, unused_worker_url

USER = "fault-user"
POLL_INTERVAL_S = 0.1


def dispatching(database_url: str, worker_url: str, video_dir: Path, **overrides: Any) -> Any:
    return api_for(
        database_url,
        **(
            {
                "dispatcher_enabled": True,
                "worker_urls": (worker_url,),
                "video_dir": video_dir,
                "poll_interval_s": POLL_INTERVAL_S,
            }
            | overrides
        ),
    )


# --- admission control ---------------------------------------------------------------------------------


async def test_a_queue_past_its_maximum_refuses_before_anything_is_held(database_url: str, pool: asyncpg.Pool) -> None:
    # No dispatcher: what is accepted stays queued, so the queue's depth is what was accepted.
    async with api_for(
        database_url, admission_queue_depth_min=2, admission_queue_depth_max=2, admission_refresh_s=0.05
    ) as api:
        await premium_user(api, USER, 10_000)
        first_key = fresh_key("admitted")
        first = await create(api, USER, body(), first_key)
        assert first.status_code == 202, first.text
        assert (await create(api, USER, body())).status_code == 202
        await asyncio.sleep(0.1)
        before = await balance(api, USER)
        transactions = await pool.fetchval("SELECT count(*) FROM ledger_transactions")

        refused_key = fresh_key("refused")
        refused = await create(api, USER, body(), refused_key)
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "unavailable"
        assert refused.headers["retry-after"].isdigit()
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # Nothing held, nothing written, and the key is free to be sent again.
        assert await balance(api, USER) == before
        assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == transactions
        assert not await pool.fetchval("SELECT count(*) FROM api_idempotency WHERE idempotency_key = $1", refused_key)

        # The replay of an accepted request is answered, not refused.
        replay = await create(api, USER, body(), first_key)
        assert replay.status_code == 202, replay.text
        assert replay.json()["id"] == first.json()["id"]
        metrics = (await api.client.get("/metrics")).text
        assert "moments_generation_queue_depth 2.0" in metrics
        assert "moments_holds_open 2.0" in metrics
        assert "moments_generations_refused_total" in metrics
        await assert_audit_ok(api)


async def test_with_nothing_finished_only_the_floor_is_queued(database_url: str) -> None:
    async with api_for(
        database_url, admission_queue_depth_min=1, admission_queue_depth_max=100, admission_refresh_s=0.05
    ) as api:
        await premium_user(api, USER, 10_000)
        assert (await create(api, USER, body())).status_code == 202
        await asyncio.sleep(0.1)
        refused = await create(api, USER, body())
        assert refused.status_code == 503, refused.text


# --- the dispatcher --------------------------------------------------------------------------------------


async def test_a_job_whose_hold_expires_before_a_render_could_end_is_not_started(
    database_url: str, pool: asyncpg.Pool
) -> None:
    async with api_for(database_url) as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        # Half a second left; a render is expected to take at least one poll interval (2 s here).
        await pool.execute(
            "UPDATE ledger_holds SET expires_at = now() + interval '0.5 s' WHERE id = "
            "(SELECT hold_id FROM generations WHERE id = $1::uuid)",
            generation["id"],
        )
        settings = dataclasses.replace(
            settings_for(database_url).generation, worker_urls=(unused_worker_url(),), poll_interval_s=2.0
        )
        async with ledger.Ledger(pool) as running_ledger, WorkerClient(settings.worker_urls) as client:
            dispatcher = Dispatcher(pool, running_ledger, settings, client, admission=Admission(pool, settings))
            (job,) = await dispatcher._claim(1)
            await dispatcher.process(job)
        failed = await wait_final(api, generation["id"])
        assert failed["status"] == "failed"
        assert failed["error"].startswith("hold_expiring:"), failed["error"]
        assert await balance(api, USER) == {"available": 1_000, "held": 0}
        assert await transaction_kinds(pool, generation["id"]) == Counter({"hold": 1, "void": 1})
        await assert_audit_ok(api)


async def test_an_unreachable_worker_is_retried_for_the_budget_then_fails(
    database_url: str, pool: asyncpg.Pool
) -> None:
    async with dispatching(
        database_url,
        unused_worker_url(),
        Path("/nonexistent"),
        worker_retry_budget_s=1.0,
        attempts_max=1000,
        retry_backoff_base_s=0.05,
        retry_backoff_cap_s=0.1,
        worker_request_timeout_s=0.5,
    ) as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        failed = await wait_final(api, generation["id"])
        assert failed["status"] == "failed"
        assert failed["error"].startswith("worker_unavailable: gave up after"), failed["error"]
        attempts = await pool.fetchval(
            "SELECT attempts FROM generation_jobs WHERE generation_id = $1::uuid", generation["id"]
        )
        # Many attempts (not a handful) over the second of budget.
        assert attempts > 3
        assert await balance(api, USER) == {"available": 1_000, "held": 0}
        await assert_audit_ok(api)


async def test_a_stopping_dispatcher_hands_its_leases_back(database_url: str, pool: asyncpg.Pool) -> None:
    async with api_for(database_url) as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        settings = dataclasses.replace(settings_for(database_url).generation, worker_urls=(unused_worker_url(),))
        async with ledger.Ledger(pool) as running_ledger, WorkerClient(settings.worker_urls) as client:
            dispatcher = Dispatcher(pool, running_ledger, settings, client)
            (job,) = await dispatcher._claim(1)
            assert (
                await pool.fetchval(
                    "SELECT lease_owner FROM generation_jobs WHERE generation_id = $1::uuid", generation["id"]
                )
                == dispatcher.owner
            )
            await dispatcher.close()
        row = await pool.fetchrow(
            "SELECT lease_owner, lease_expires_at, done FROM generation_jobs WHERE generation_id = $1::uuid",
            generation["id"],
        )
        assert (row["lease_owner"], row["lease_expires_at"], row["done"]) == (None, None, False)
        assert job.generation_id == uuid.UUID(generation["id"])


# --- the video store ---------------------------------------------------------------------------------------


async def test_an_unusable_video_store_fails_the_generation_with_its_reason_and_says_so(
    database_url: str, pool: asyncpg.Pool, worker: RunningProcess, tmp_path: Path
) -> None:
    # Root ignores permission bits: a regular file where the directory's parent should be is unusable to all.
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    async with dispatching(database_url, worker.base_url, blocker / "videos", video_store_attempts_max=2) as api:
        await premium_user(api, USER, 1_000)
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["code"] == "not_ready"
        assert "video store" in ready.json()["detail"]
        assert ready.headers["retry-after"].isdigit()

        generation = await create_ok(api, USER, body())
        failed = await wait_final(api, generation["id"])
        assert failed["status"] == "failed"
        assert failed["error"].startswith("video_store_failed: NotADirectoryError"), failed["error"]
        assert "after 2 attempts" in failed["error"]
        assert await balance(api, USER) == {"available": 1_000, "held": 0}
        assert await transaction_kinds(pool, generation["id"]) == Counter({"hold": 1, "void": 1})
        metrics = (await api.client.get("/metrics")).text
        assert "moments_video_store_writable 0.0" in metrics
        assert 'moments_generations_settled_total{outcome="failed",reason="video_store_failed"}' in metrics

        # Usable again: ready again.
        blocker.unlink()
        assert (await api.client.get("/readyz")).status_code == 200
        await assert_audit_ok(api)


# --- database faults ---------------------------------------------------------------------------------------


class _Refusing:
    """The key cache of a process whose database refuses connections (what asyncpg raises then)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def find(self, *_: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_a_database_that_does_not_answer_is_503_on_the_key_lookup(
    database_url: str, error: BaseException
) -> None:
    async with api_for(database_url) as api:
        app: Any = api.client.app
        real_cache = app.state.key_cache
        app.state.key_cache = _Refusing(error)
        try:
            for path in ("/v1/pricing", f"/v1/users/{USER}/entitlements"):
                response = await api.get(path, "service")
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "unavailable"
                assert response.headers["retry-after"] == "1"
        finally:
            app.state.key_cache = real_cache
        assert (await api.get("/v1/pricing", "service")).status_code == 200


async def test_a_closed_pool_is_503_in_handlers_and_in_the_console(database_url: str) -> None:
    async with api_for(database_url) as api:
        await premium_user(api, USER, 100)
        app: Any = api.client.app
        real_pool = app.state.pool
        closed = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
        assert closed is not None
        await closed.close()
        app.state.pool = closed
        api.client.cookies.set("moments_console", "x" * 43)
        try:
            # The key is in this process's cache; the handler's own query meets the closed pool.
            response = await api.get(f"/v1/users/{USER}/entitlements", "service")
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "unavailable"
            page = await api.client.get("/console/search")
            assert page.status_code == 503, page.text
            assert page.headers["retry-after"] == "1"
            assert (await api.client.get("/readyz")).status_code == 503
        finally:
            app.state.pool = real_pool
            api.client.cookies.clear()
        assert (await api.get(f"/v1/users/{USER}/entitlements", "service")).status_code == 200


async def test_a_bug_in_the_database_layer_is_still_500(database_url: str) -> None:
    async with api_for(database_url) as api:
        app: Any = api.client.app
        real_cache = app.state.key_cache
        app.state.key_cache = _Refusing(asyncpg.exceptions.UndefinedTableError("relation does not exist"))
        try:
            response = await api.get("/v1/pricing", "service")
        finally:
            app.state.key_cache = real_cache
        assert response.status_code == 500
        assert response.json()["code"] == "internal_error"
