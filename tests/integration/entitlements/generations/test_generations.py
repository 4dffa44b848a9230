"""The generation flow of DESIGN.md through HTTP: gate, validation, hold, dispatch, settle, refund.

The API runs in-process (its dispatcher and sweeper too, when a test turns them on) against a fresh
clone of the migrated database; the bundled worker is a real `moments worker` process, one per module
and fault mode (job ids are UUIDs, so tests share it safely). The concurrency tests talk to a real
`moments serve` process instead: the in-process test client serves one request at a time, which
would make "50 requests at once" sequential. Every test ends with the ledger audit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import ledger
from entitlements.generations import Sweeper
from tests.support.app import settings_for
from tests.support.database import clone_database, drop_database, dsn_with_database
from tests.support.generations import (
    DURATION_TOLERANCE_S,
    FRAME_SIZES,
    assert_audit_ok,
    assert_nothing_held,
    balance,
    body,
    create,
    create_ok,
    fresh_key,
    get_generation,
    grant,
    hold_of,
    ledger_history,
    ledger_kinds,
    premium_user,
    price_of,
    probe_video,
    set_tier,
    stripe_clawback,
    transaction_kinds,
    wait_final,
)
from tests.support.http import Api, api_for
from tests.support.processes import (
    RunningProcess,
    api_process,
    create_role_keys,
    remote_api,
    unused_worker_url,
    worker_process,
)

USER = "user-1"
# The in-process dispatcher polls the worker this often; small so that a 4 s render settles promptly.
POLL_INTERVAL_S = 0.1


# --- processes and apps ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    with worker_process(tmp_path_factory.mktemp("failing-worker") / "videos", failure_rate=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def hanging_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    with worker_process(tmp_path_factory.mktemp("hanging-worker") / "videos", hang_rate=1.0) as running:
        yield running


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    """The API with no dispatcher and no sweeper: generations stay queued."""
    async with api_for(database_url) as client:
        yield client


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


@pytest.fixture
async def live_api(database_url: str, worker: RunningProcess, tmp_path: Path) -> AsyncIterator[Api]:
    """The API with its dispatcher and sweeper, rendering on the shared healthy worker."""
    async with dispatching(database_url, worker.base_url, tmp_path / "videos") as client:
        yield client


@pytest.fixture(scope="module")
async def module_database_url(postgres_admin_dsn: str, template_database: str) -> AsyncIterator[str]:
    name = await clone_database(postgres_admin_dsn, template_database)
    yield dsn_with_database(postgres_admin_dsn, name)
    await drop_database(postgres_admin_dsn, name)


@pytest.fixture(scope="module")
def api_server(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    """A real `moments serve --no-dispatcher`: requests are served concurrently; generations stay queued."""
    with api_process(module_database_url, log_dir=tmp_path_factory.mktemp("api"), dispatcher=False) as running:
        yield running


@pytest.fixture
async def server_api(module_database_url: str, api_server: RunningProcess) -> AsyncIterator[Api]:
    async with remote_api(api_server.base_url, await create_role_keys(module_database_url)) as client:
        yield client


# --- the gate ------------------------------------------------------------------------------------------


async def test_free_user_is_refused_and_nothing_is_held(api: Api, pool: asyncpg.Pool) -> None:
    # No subscription row at all: the gate fails closed.
    response = await create(api, USER, body())
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "tier_required"
    await assert_nothing_held(api, pool, USER, available=0, transactions=0)

    # An explicit FREE tier with plenty of moments is refused too, and keeps its moments.
    await set_tier(api, USER, "FREE")
    await grant(api, USER, 2_000)
    response = await create(api, USER, body())
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "tier_required"
    await assert_nothing_held(api, pool, USER, available=2_000, transactions=1)
    await assert_audit_ok(api)


async def test_premium_user_short_of_moments_gets_402_and_nothing_is_held(api: Api, pool: asyncpg.Pool) -> None:
    price = await price_of(api, body())
    await premium_user(api, USER, price - 1)
    response = await create(api, USER, body())
    assert response.status_code == 402, response.text
    problem = response.json()
    assert problem["code"] == "insufficient_moments"
    assert problem["required"] == price
    assert problem["available"] == price - 1
    await assert_nothing_held(api, pool, USER, available=price - 1, transactions=1)
    await assert_audit_ok(api)


async def test_user_in_debt_gets_402_in_debt(api: Api, pool: asyncpg.Pool) -> None:
    await premium_user(api, USER, 100)
    await stripe_clawback(pool, USER, 150)
    async with ledger.Ledger(pool) as service:
        assert (await service.balances(USER)).owed == 50
    response = await create(api, USER, body())
    assert response.status_code == 402, response.text
    assert response.json()["code"] == "in_debt"
    entitlements = (await api.get(f"/v1/users/{USER}/entitlements", "service")).json()
    assert entitlements["video"] == {"allowed": False, "reason": "in_debt"}
    await assert_nothing_held(api, pool, USER, available=0, transactions=2)
    await assert_audit_ok(api)


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        (body(prompt=""), "prompt"),
        (body(prompt="x" * 5_001), "prompt"),
        (body(image_id="i" * 201), "image_id"),
        (body(image_id=""), "image_id"),
        (body(mode="adult", resolution="1080p", duration_s=None), "resolution"),
        (body(mode="adult", resolution=None, duration_s=4), "duration_s"),
        (body(mode="adult", resolution=None, duration_s=None, audio=True), "audio"),
        (body(resolution="4k"), "resolution"),
        (body(duration_s=3), "duration_s"),
        (body(duration_s=16), "duration_s"),
        (body(mode="cartoon"), "mode"),
        (body(image_id="../etc"), "image_id"),
        (body() | {"duration_s": "4"}, "duration_s"),
        (body() | {"colour": "red"}, "colour"),
    ],
    ids=[
        "prompt-empty",
        "prompt-5001",
        "image_id-201",
        "image_id-empty",
        "adult-1080p",
        "adult-4s",
        "adult-audio",
        "resolution-4k",
        "duration-3",
        "duration-16",
        "mode-unknown",
        "image_id-path",
        "duration-string",
        "unknown-field",
    ],
)
async def test_invalid_request_is_422_naming_the_field_and_holds_nothing(
    api: Api, pool: asyncpg.Pool, request_body: dict[str, Any], field: str
) -> None:
    await premium_user(api, USER, 5_000)
    response = await create(api, USER, request_body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert field in problem["detail"]
    assert [error["field"] for error in problem["errors"]] == [field]
    await assert_nothing_held(api, pool, USER, available=5_000, transactions=1)
    await assert_audit_ok(api)


# PostgreSQL text cannot hold NUL (U+0000): it must be refused as bad input, never reach the write.
async def test_prompt_with_a_nul_character_is_422_not_500(api: Api, pool: asyncpg.Pool) -> None:
    await premium_user(api, USER, 5_000)
    response = await create(api, USER, body(prompt="a\x00b"))
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["prompt"]
    await assert_nothing_held(api, pool, USER, available=5_000, transactions=1)


async def test_listing_with_a_nul_in_the_image_filter_is_not_a_500(api: Api) -> None:
    response = await api.get(f"/v1/users/{USER}/generations", "service", image_id="a\x00b")
    assert response.status_code in {200, 422}, response.text


async def test_missing_idempotency_key_is_400_and_holds_nothing(api: Api, pool: asyncpg.Pool) -> None:
    await premium_user(api, USER, 5_000)
    response = await api.post(f"/v1/users/{USER}/generations", "service", body())
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "idempotency_key_required"
    await assert_nothing_held(api, pool, USER, available=5_000, transactions=1)
    await assert_audit_ok(api)


async def test_prompt_and_image_id_at_their_limits_are_accepted(api: Api, pool: asyncpg.Pool) -> None:
    price = await price_of(api, body())
    await premium_user(api, USER, price)
    await grant(api, USER, price)
    # 5,000 characters, counted as characters: 5,000 four-byte emoji are as long as 5,000 ASCII letters.
    for prompt, image_id in (("p" * 5_000, "i" * 200), ("\U0001f600" * 5_000, "j" * 200)):
        generation = await create_ok(api, USER, body(image_id=image_id, prompt=prompt))
        assert generation["prompt"] == prompt
        assert generation["image_id"] == image_id
        assert generation["status"] == "queued"
    assert await balance(api, USER) == {"available": 0, "held": 2 * price}
    await assert_audit_ok(api)


# --- the happy path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "resolution", "duration_s", "audio"),
    [
        (body(resolution="480p", duration_s=4, audio=True), "480p", 4, True),
        (body(resolution="480p", duration_s=4, audio=False), "480p", 4, False),
        (body(mode="adult", resolution=None, duration_s=None), "720p", 8, False),
    ],
    ids=["480p-4s-audio", "480p-4s-silent", "adult-720p-8s"],
)
async def test_generation_succeeds_captures_once_and_serves_the_video(
    live_api: Api,
    pool: asyncpg.Pool,
    tmp_path: Path,
    request_body: dict[str, Any],
    resolution: str,
    duration_s: int,
    audio: bool,
) -> None:
    api = live_api
    price = await price_of(api, request_body)
    granted = price + 1_000
    await set_tier(api, USER, "PREMIUM")
    await grant(api, USER, granted, role="support")

    created = await create_ok(api, USER, request_body)
    assert created["status"] == "queued"
    assert created["moments"] == price
    # Reserved, not yet paid: charged is 0 until the video is delivered.
    assert (created["held"], created["charged"]) == (price, 0)
    assert (created["mode"], created["resolution"], created["duration_s"], created["audio"]) == (
        request_body["mode"],
        resolution,
        duration_s,
        audio,
    )
    assert created["video_url"] is None
    assert created["error"] is None

    generation = await wait_final(api, created["id"])
    assert generation["status"] == "succeeded", generation
    assert generation["error"] is None
    assert (generation["held"], generation["charged"]) == (0, price)
    assert generation["video_url"] == f"/v1/generations/{created['id']}/video"
    assert await balance(api, USER) == {"available": granted - price, "held": 0}

    history = await ledger_history(api, USER)
    assert [item["kind"] for item in history] == ["capture", "hold", "grant"]
    capture, hold, _ = history
    assert (hold["delta_available"], hold["delta_held"]) == (-price, price)
    assert (capture["delta_available"], capture["delta_held"]) == (0, -price)
    assert hold["reference"] == capture["reference"] == f"generation:{created['id']}"
    # A hold's reason is for support to read: the request in words, not Python (`audio=True`).
    with_audio = "with audio" if audio else "without audio"
    assert hold["reason"] == f"video: {request_body['mode']}, {resolution}, {duration_s} s, {with_audio}"
    assert await transaction_kinds(pool, created["id"]) == Counter({"hold": 1, "capture": 1})
    assert (await hold_of(pool, created["id"]))["status"] == "captured"

    response = await api.client.get(generation["video_url"], headers=api.headers("service"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    path = tmp_path / "downloaded.mp4"
    path.write_bytes(response.content)
    probe = probe_video(path)
    assert probe.codec == "h264"
    assert (probe.width, probe.height) == FRAME_SIZES[resolution]
    assert abs(probe.duration_s - duration_s) <= DURATION_TOLERANCE_S, probe
    assert probe.audio_streams == (1 if audio else 0)
    await assert_audit_ok(api)


async def test_video_is_409_until_the_generation_succeeds_and_404_for_no_generation(api: Api) -> None:
    await premium_user(api, USER, 5_000)
    generation = await create_ok(api, USER, body())
    response = await api.client.get(f"/v1/generations/{generation['id']}/video", headers=api.headers("service"))
    assert response.status_code == 409
    assert response.json()["code"] == "video_unavailable"
    assert (await api.get(f"/v1/generations/{generation['id']}", "finance")).status_code == 403
    assert (await api.client.get(f"/v1/generations/{generation['id']}")).status_code == 401
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        assert (await api.get(f"/v1/generations/{missing}", "service")).status_code == 404
        video = await api.client.get(f"/v1/generations/{missing}/video", headers=api.headers("support"))
        assert video.status_code == 404
    await assert_audit_ok(api)


# --- listing ----------------------------------------------------------------------------------------


async def test_listing_is_newest_first_filters_by_image_and_pages_with_a_cursor(api: Api) -> None:
    await premium_user(api, USER, 5_000)
    await premium_user(api, "someone-else", 5_000)
    images = ["img-a", "img-b", "img-a", "img-b", "img-a"]
    created = [(await create_ok(api, USER, body(image, prompt=f"p{n}")))["id"] for n, image in enumerate(images)]
    await create_ok(api, "someone-else", body("img-a"))
    newest_first = list(reversed(created))

    page = (await api.get(f"/v1/users/{USER}/generations", "service")).json()
    assert [item["id"] for item in page["items"]] == newest_first
    assert page["next_cursor"] is None

    only_a = (await api.get(f"/v1/users/{USER}/generations", "support", image_id="img-a")).json()
    assert [item["id"] for item in only_a["items"]] == [created[4], created[2], created[0]]
    assert {item["image_id"] for item in only_a["items"]} == {"img-a"}

    for image_id, expected in ((None, newest_first), ("img-b", [created[3], created[1]])):
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 2}
            if image_id is not None:
                params["image_id"] = image_id
            if cursor is not None:
                params["cursor"] = cursor
            response = await api.get(f"/v1/users/{USER}/generations", "service", **params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= 2
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected

    bad_cursor = await api.get(f"/v1/users/{USER}/generations", "service", cursor="bm9wZQ")
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["code"] == "validation_failed"
    await assert_audit_ok(api)


# --- failures: the user gets the moments back, once -------------------------------------------------


async def assert_failed_and_returned_once(
    api: Api, pool: asyncpg.Pool, generation_id: str, *, error_prefix: str, granted: int, hold_status: str
) -> dict[str, Any]:
    generation = await wait_final(api, generation_id)
    assert generation["status"] == "failed", generation
    assert generation["error"] is not None
    assert generation["error"].startswith(error_prefix), generation["error"]
    assert (generation["held"], generation["charged"]) == (0, 0)
    assert generation["video_url"] is None
    assert await balance(api, USER) == {"available": granted, "held": 0}
    assert await transaction_kinds(pool, generation_id) == Counter({"hold": 1, "void": 1})
    assert (await hold_of(pool, generation_id))["status"] == hold_status
    assert await ledger_kinds(api, USER) == ["void", "hold", "grant"]
    video = await api.client.get(f"/v1/generations/{generation_id}/video", headers=api.headers("service"))
    assert video.status_code == 409
    assert video.json()["code"] == "video_unavailable"
    refund = await api.post(f"/v1/generations/{generation_id}/refund", "support", {"reason": "x"}, fresh_key("r"))
    assert refund.status_code == 409, refund.text
    assert refund.json()["code"] == "not_refundable"
    return generation


async def test_worker_failure_fails_the_generation_and_returns_the_moments_once(
    database_url: str, pool: asyncpg.Pool, failing_worker: RunningProcess, tmp_path: Path
) -> None:
    async with dispatching(database_url, failing_worker.base_url, tmp_path / "videos") as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        await assert_failed_and_returned_once(
            api, pool, generation["id"], error_prefix="worker_failed", granted=1_000, hold_status="voided"
        )
        await assert_audit_ok(api)


async def test_worker_hang_past_the_render_timeout_fails_and_returns_the_moments_once(
    database_url: str, pool: asyncpg.Pool, hanging_worker: RunningProcess, tmp_path: Path
) -> None:
    async with dispatching(database_url, hanging_worker.base_url, tmp_path / "videos", render_timeout_s=2) as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        await assert_failed_and_returned_once(
            api, pool, generation["id"], error_prefix="render_timeout", granted=1_000, hold_status="voided"
        )
        await assert_audit_ok(api)


async def test_worker_down_fails_after_the_attempts_and_returns_the_moments_once(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with dispatching(
        database_url,
        unused_worker_url(),
        tmp_path / "videos",
        attempts_max=2,
        retry_backoff_base_s=0.05,
        retry_backoff_cap_s=0.1,
        worker_request_timeout_s=1.0,
    ) as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        failed = await assert_failed_and_returned_once(
            api, pool, generation["id"], error_prefix="worker_unavailable", granted=1_000, hold_status="voided"
        )
        assert "2 attempts" in failed["error"]
        await assert_audit_ok(api)


async def test_expired_hold_is_voided_by_the_sweeper_once(database_url: str, pool: asyncpg.Pool) -> None:
    async with api_for(database_url, hold_ttl_s=5) as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        hold = await hold_of(pool, generation["id"])
        assert 4 <= (hold["expires_at"] - hold["created_at"]).total_seconds() <= 6

        # Settlements run in the ledger's group commit: the ledger must be running.
        async with ledger.Ledger(pool) as running_ledger:
            sweeper = Sweeper(pool, running_ledger, settings_for(database_url, hold_ttl_s=5).generation)
            # Not expired yet: the sweeper leaves it alone.
            assert (await sweeper.sweep_once())["generations"] == 0
            assert (await get_generation(api, generation["id"]))["status"] == "queued"

            # The guard trigger lets expires_at change (only status and amounts are frozen).
            await pool.execute("UPDATE ledger_holds SET expires_at = now() - interval '1 s' WHERE id = $1", hold["id"])
            assert (await sweeper.sweep_once())["generations"] == 1
            failed = await assert_failed_and_returned_once(
                api, pool, generation["id"], error_prefix="hold_expired", granted=1_000, hold_status="expired"
            )
            transactions = await pool.fetchval("SELECT count(*) FROM ledger_transactions")

            assert (await sweeper.sweep_once())["generations"] == 0
            assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == transactions
            assert await get_generation(api, generation["id"]) == failed
            assert await pool.fetchval(
                "SELECT done FROM generation_jobs WHERE generation_id = $1::uuid", generation["id"]
            )
        await assert_audit_ok(api)


async def test_hold_expiring_while_the_worker_hangs_is_voided_by_the_running_sweeper(
    database_url: str, pool: asyncpg.Pool, hanging_worker: RunningProcess, tmp_path: Path
) -> None:
    async with dispatching(
        database_url, hanging_worker.base_url, tmp_path / "videos", hold_ttl_s=5, sweep_interval_s=0.2
    ) as api:
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        await assert_failed_and_returned_once(
            api, pool, generation["id"], error_prefix="hold_expired", granted=1_000, hold_status="expired"
        )
        # The dispatcher still polls the hung job; it must never settle the generation a second time.
        await asyncio.sleep(1.0)
        assert await transaction_kinds(pool, generation["id"]) == Counter({"hold": 1, "void": 1})
        assert (await get_generation(api, generation["id"]))["status"] == "failed"
        await assert_audit_ok(api)


# --- concurrency (a real API process) ---------------------------------------------------------------


async def test_fifty_concurrent_creates_hold_exactly_what_the_user_can_afford(
    server_api: Api, module_database_url: str
) -> None:
    api, user = server_api, "concurrent-user"
    price = await price_of(api, body())
    await premium_user(api, user, 7 * price)
    responses = await asyncio.gather(*(create(api, user, body(), fresh_key(f"c{n}")) for n in range(50)))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == Counter({202: 7, 402: 43}), [r.text for r in responses if r.status_code not in {202, 402}]
    assert {r.json()["code"] for r in responses if r.status_code == 402} == {"insufficient_moments"}
    assert len({r.json()["id"] for r in responses if r.status_code == 202}) == 7
    assert await balance(api, user) == {"available": 0, "held": 7 * price}
    connection = await asyncpg.connect(module_database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM generations WHERE user_id = $1", user) == 7
        assert await connection.fetchval("SELECT count(*) FROM ledger_holds WHERE user_id = $1", user) == 7
    finally:
        await connection.close()
    await assert_audit_ok(api)


async def test_one_key_sent_ten_times_at_once_creates_one_generation(server_api: Api, module_database_url: str) -> None:
    api, user = server_api, "same-key-user"
    price = await price_of(api, body())
    await premium_user(api, user, 10 * price)
    key = fresh_key("same")
    responses = await asyncio.gather(*(create(api, user, body(), key) for _ in range(10)))
    assert [response.status_code for response in responses] == [202] * 10, [r.text for r in responses]
    bodies = [response.json() for response in responses]
    assert all(each == bodies[0] for each in bodies)
    assert await balance(api, user) == {"available": 9 * price, "held": price}
    connection = await asyncpg.connect(module_database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM generations WHERE user_id = $1", user) == 1
        assert await connection.fetchval("SELECT count(*) FROM ledger_holds WHERE user_id = $1", user) == 1
    finally:
        await connection.close()

    later = await create(api, user, body(), key)
    assert (later.status_code, later.json()) == (202, bodies[0])
    reused = await create(api, user, body(prompt="something else"), key)
    assert reused.status_code == 409, reused.text
    assert reused.json()["code"] == "idempotency_key_reused"
    assert await balance(api, user) == {"available": 9 * price, "held": price}
    await assert_audit_ok(api)


async def test_refund_reason_with_a_nul_character_is_422_not_500(live_api: Api) -> None:
    await premium_user(live_api, USER, 1_000)
    generation = await create_ok(live_api, USER, body())
    assert (await wait_final(live_api, generation["id"]))["status"] == "succeeded"
    response = await live_api.post(
        f"/v1/generations/{generation['id']}/refund", "support", {"reason": "a\x00b", "moments": 1}, fresh_key("r")
    )
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["reason"]


# --- refunds ----------------------------------------------------------------------------------------


async def refund(api: Api, generation_id: str, key: str, moments: int | None = None, role: str = "support") -> Any:
    request: dict[str, Any] = {"reason": "the video was poor"}
    if moments is not None:
        request["moments"] = moments
    return await api.post(f"/v1/generations/{generation_id}/refund", role, request, key)


async def test_refunds_whole_partial_over_replayed_and_forbidden(live_api: Api, pool: asyncpg.Pool) -> None:
    api = live_api
    price = await price_of(api, body())
    assert price > 181, "the partial refunds below need a price above 180"
    granted = 3 * price + 500
    await premium_user(api, USER, granted)
    ids = [(await create_ok(api, USER, body(f"img-{n}")))["id"] for n in range(3)]
    for generation_id in ids:
        assert (await wait_final(api, generation_id))["status"] == "succeeded"
    whole, partial, other = ids
    assert await balance(api, USER) == {"available": granted - 3 * price, "held": 0}

    # Only support (and admin) may refund.
    for role in ("service", "finance"):
        forbidden = await refund(api, other, fresh_key("r"), role=role)
        assert forbidden.status_code == 403, forbidden.text
        assert forbidden.json()["code"] == "forbidden"
    by_admin = await refund(api, other, fresh_key("r"), moments=1, role="admin")
    assert by_admin.status_code == 201, by_admin.text
    assert by_admin.json()["generation"]["charged"] == price - 1
    missing_key = await api.post(f"/v1/generations/{other}/refund", "support", {"reason": "x"})
    assert missing_key.status_code == 400
    assert missing_key.json()["code"] == "idempotency_key_required"
    zero = await refund(api, other, fresh_key("r"), moments=0)
    assert zero.status_code == 422
    assert await transaction_kinds(pool, other) == Counter({"hold": 1, "capture": 1, "refund": 1})

    # Whole refund, replayed with the same key: one ledger transaction, the same answer.
    first = await refund(api, whole, "refund-whole")
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["refunded"] == price
    assert answer["generation"]["status"] == "refunded"
    assert answer["generation"]["charged"] == 0
    replay = await refund(api, whole, "refund-whole")
    assert (replay.status_code, replay.json()) == (201, answer)
    assert await transaction_kinds(pool, whole) == Counter({"hold": 1, "capture": 1, "refund": 1})
    reused = await refund(api, whole, "refund-whole", moments=1)
    assert reused.status_code == 409
    assert reused.json()["code"] == "idempotency_key_reused"
    again = await refund(api, whole, fresh_key("r"))
    assert again.status_code == 409
    assert again.json()["code"] == "not_refundable"
    assert await balance(api, USER) == {"available": granted - 2 * price + 1, "held": 0}
    # A refunded generation keeps its video.
    video = await api.client.get(f"/v1/generations/{whole}/video", headers=api.headers("support"))
    assert video.status_code == 200

    # Partial refunds: charged goes down, the status stays succeeded until nothing is charged.
    step = await refund(api, partial, fresh_key("r"), moments=100)
    assert step.status_code == 201, step.text
    assert (step.json()["refunded"], step.json()["generation"]["charged"]) == (100, price - 100)
    assert step.json()["generation"]["status"] == "succeeded"
    step = await refund(api, partial, fresh_key("r"), moments=80)
    assert step.status_code == 201, step.text
    assert step.json()["generation"]["charged"] == price - 180
    assert step.json()["generation"]["status"] == "succeeded"
    over = await refund(api, partial, fresh_key("r"), moments=price - 180 + 1)
    assert over.status_code == 409, over.text
    assert over.json()["code"] == "not_refundable"
    assert (await get_generation(api, partial))["charged"] == price - 180
    rest = await refund(api, partial, fresh_key("r"))
    assert rest.status_code == 201, rest.text
    assert rest.json()["refunded"] == price - 180
    assert rest.json()["generation"]["status"] == "refunded"
    assert rest.json()["generation"]["charged"] == 0
    assert await transaction_kinds(pool, partial) == Counter({"hold": 1, "capture": 1, "refund": 3})

    assert await balance(api, USER) == {"available": granted - price + 1, "held": 0}
    assert (await get_generation(api, other))["charged"] == price - 1
    await assert_audit_ok(api)
