"""Rate limits per API key and endpoint class, and the cap on a user's generations in progress, against
real PostgreSQL with concurrent callers and two app instances (each with its own pool) sharing one limit.

The rates are set so low (one request per thousand seconds) that nothing comes back during a test: what
passes is exactly the burst, however the requests interleave, and no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

import ledger
from entitlements.app import create_app
from entitlements.generations import service as generations
from tests.support.app import settings_for
from tests.support.generations import body, create, fresh_key, premium_user, price_of
from tests.support.http import Api
from tests.support.processes import create_role_keys

# Practically no refill within a test: one request per thousand seconds.
SLOW_PER_S = 0.001
POLICY = re.compile(r'^"(?P<name>[a-z]+)";q=(?P<q>[0-9]+);w=(?P<w>[0-9]+)$')
STATE = re.compile(r'^"(?P<name>[a-z]+)";r=(?P<r>[0-9]+);t=(?P<t>[0-9]+)$')


def limited(**classes: tuple[float, int]) -> dict[str, Any]:
    """Rate-limit settings: each named class at (per_s, burst), every other class unlimited."""
    settings: dict[str, Any] = {"enabled": True}
    for name in ("generations", "writes", "reads"):
        per_s, burst = classes.get(name, (0.0, 1))
        settings[f"{name}_per_s"], settings[f"{name}_burst"] = per_s, burst
    return settings


@asynccontextmanager
async def apps(database_url: str, count: int, **settings: Any) -> AsyncIterator[list[Api]]:
    """`count` app instances on one database (as many processes would be), sharing the same keys."""
    keys = await create_role_keys(database_url)
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(count):
            app = create_app(settings_for(database_url, **settings))
            client = await stack.enter_async_context(AsyncTestClient(app=app))
            found.append(Api(client, keys))
        yield found


def rate_headers(response: Any) -> tuple[dict[str, str], dict[str, str]]:
    policy, state = POLICY.match(response.headers["ratelimit-policy"]), STATE.match(response.headers["ratelimit"])
    assert policy is not None, response.headers
    assert state is not None, response.headers
    return policy.groupdict(), state.groupdict()


async def test_exactly_the_burst_passes_of_many_concurrent_requests(database_url: str) -> None:
    async with apps(database_url, 1, rate_limits=limited(reads=(SLOW_PER_S, 7))) as (api,):
        responses = await asyncio.gather(*(api.get("/v1/pricing", "service") for _ in range(40)))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == Counter({200: 7, 429: 33})
    for response in responses:
        assert rate_headers(response)[0] == {"name": "reads", "q": "7", "w": str(round(7 / SLOW_PER_S))}
    # Each allowed request saw one fewer remaining: 6, 5, … 0, whatever order they ran in.
    remaining = sorted(int(rate_headers(r)[1]["r"]) for r in responses if r.status_code == 200)
    assert remaining == [0, 1, 2, 3, 4, 5, 6]


async def test_two_app_instances_share_one_limit(database_url: str) -> None:
    async with apps(database_url, 2, rate_limits=limited(reads=(SLOW_PER_S, 9))) as (first, second):
        responses = await asyncio.gather(
            *(api.get("/v1/pricing", "finance") for _ in range(15) for api in (first, second))
        )
    assert Counter(response.status_code for response in responses) == Counter({200: 9, 429: 21})


async def test_a_refusal_is_a_problem_with_retry_after_and_the_headers(database_url: str) -> None:
    async with apps(database_url, 1, rate_limits=limited(reads=(0.5, 2))) as (api,):
        first = await api.get("/v1/pricing", "service")
        assert first.status_code == 200
        assert rate_headers(first) == ({"name": "reads", "q": "2", "w": "4"}, {"name": "reads", "r": "1", "t": "2"})
        await api.get("/v1/pricing", "service")
        refused = await api.get("/v1/pricing", "service")
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["code"] == "rate_limited"
    assert problem["status"] == 429
    assert "reads" in problem["detail"]
    # Two requests at 0.5 a second: the next is allowed about 2 s after the first; never less than 1 s.
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    policy, state = rate_headers(refused)
    assert policy == {"name": "reads", "q": "2", "w": "4"}
    assert state["r"] == "0"
    assert 1 <= int(state["t"]) <= 4
    assert "retry-after" not in first.headers


async def test_classes_and_keys_are_limited_apart(database_url: str) -> None:
    settings = limited(reads=(SLOW_PER_S, 2), writes=(SLOW_PER_S, 1), generations=(SLOW_PER_S, 1))
    async with apps(database_url, 1, rate_limits=settings) as (api,):
        assert [(await api.get("/v1/pricing", "service")).status_code for _ in range(3)] == [200, 200, 429]
        # Another key of the same role has a limit of its own; quotes count as reads.
        assert (await api.get("/v1/pricing", "support")).status_code == 200
        assert (await api.post("/v1/quotes", "service", {"mode": "advanced"})).status_code == 429
        # Writes are another class: not touched by the reads above.
        subscription = await api.put("/v1/users/u1/subscription", "admin", {"tier": "PREMIUM"})
        assert subscription.status_code == 200, subscription.text
        assert rate_headers(subscription)[0]["name"] == "writes"
        assert (await api.put("/v1/users/u1/subscription", "admin", {"tier": "PREMIUM"})).status_code == 429


async def test_a_replay_of_a_stored_answer_is_never_limited_nor_counted(database_url: str) -> None:
    async with apps(database_url, 1, rate_limits=limited(writes=(SLOW_PER_S, 2))) as (api,):
        grant = {"moments": 5, "reason": "goodwill", "category": "promotional"}
        first = await api.post("/v1/users/u1/grants", "support", grant, "grant-a")
        assert first.status_code == 201, first.text
        replays = [await api.post("/v1/users/u1/grants", "support", grant, "grant-a") for _ in range(5)]
        assert [response.status_code for response in replays] == [201] * 5
        assert all(response.json() == first.json() for response in replays)
        # The replays carry the class's headers and used none of the allowance: one new request remains.
        assert rate_headers(replays[-1])[1]["r"] == "1"
        assert (await api.post("/v1/users/u1/grants", "support", grant, "grant-b")).status_code == 201
        refused = await api.post("/v1/users/u1/grants", "support", grant, "grant-c")
        assert refused.status_code == 429
        assert refused.json()["code"] == "rate_limited"
        # Still a replay once the allowance is gone.
        assert (await api.post("/v1/users/u1/grants", "support", grant, "grant-a")).status_code == 201


async def test_a_generation_replay_is_not_limited_either(database_url: str) -> None:
    async with apps(database_url, 1, rate_limits=limited(generations=(SLOW_PER_S, 1))) as (api,):
        await premium_user(api, "u1", 10 * await price_of(api, body()))
        key = fresh_key("replayed")
        first = await create(api, "u1", body(), key)
        assert first.status_code == 202, first.text
        again = await create(api, "u1", body(), key)
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]
        assert (await create(api, "u1", body())).status_code == 429


async def test_limits_off_answer_no_rate_headers(database_url: str) -> None:
    async with apps(database_url, 1, rate_limits={"enabled": False}) as (api,):
        responses = [await api.get("/v1/pricing", "service") for _ in range(3)]
    assert [response.status_code for response in responses] == [200] * 3
    assert all("ratelimit" not in response.headers for response in responses)


async def test_public_routes_are_not_limited(database_url: str) -> None:
    async with apps(database_url, 1, rate_limits=limited(reads=(SLOW_PER_S, 1))) as (api,):
        responses = [await api.client.get("/healthz") for _ in range(3)]
    assert [response.status_code for response in responses] == [200] * 3
    assert "ratelimit" not in responses[0].headers


# --- the cap on generations in progress --------------------------------------------------------------


@pytest.mark.parametrize("instances", [1, 2])
async def test_concurrent_creates_never_exceed_the_open_generations_cap(database_url: str, instances: int) -> None:
    async with apps(database_url, instances, open_generations_per_user_max=3) as found:
        api = found[0]
        await premium_user(api, "capped", 20 * await price_of(api, body()))
        await premium_user(api, "other", 20 * await price_of(api, body()))
        responses = await asyncio.gather(
            *(create(found[n % instances], "capped", body(), fresh_key(f"cap{n}")) for n in range(12))
        )
        statuses = Counter(response.status_code for response in responses)
        assert statuses == Counter({202: 3, 429: 9}), [r.text for r in responses if r.status_code not in {202, 429}]
        refusals = [response.json() for response in responses if response.status_code == 429]
        assert {problem["code"] for problem in refusals} == {"concurrency_limited"}
        assert all("3 generations in progress" in problem["detail"] for problem in refusals)
        # Nothing was held for the refused ones, and another user is not affected.
        held = (await api.get("/v1/users/capped/entitlements", "service")).json()["balance"]["held"]
        assert held == 3 * await price_of(api, body())
        assert (await create(api, "other", body())).status_code == 202
        audit = await api.get("/v1/ledger/audit", "finance")
        assert audit.status_code == 200
        assert audit.json()["ok"] is True, audit.json()


async def test_a_refused_create_can_be_sent_again_with_its_key_once_a_generation_ends(
    database_url: str, pool: asyncpg.Pool
) -> None:
    async with apps(database_url, 1, open_generations_per_user_max=1) as (api,):
        await premium_user(api, "one", 10 * await price_of(api, body()))
        first = await create(api, "one", body(), fresh_key("first"))
        assert first.status_code == 202, first.text
        key = fresh_key("second")
        refused = await create(api, "one", body(), key)
        assert refused.status_code == 429
        assert refused.json()["code"] == "concurrency_limited"
        # The first generation fails (its hold is voided): the same key now creates the second.
        await fail_generation(pool, first.json()["id"])
        accepted = await create(api, "one", body(), key)
        assert accepted.status_code == 202, accepted.text


async def test_no_cap_when_the_setting_is_zero(database_url: str) -> None:
    async with apps(database_url, 1, open_generations_per_user_max=0) as (api,):
        await premium_user(api, "free-running", 30 * await price_of(api, body()))
        statuses = [(await create(api, "free-running", body())).status_code for _ in range(25)]
    assert statuses == [202] * 25


async def fail_generation(pool: asyncpg.Pool, generation_id: str) -> None:
    """Settles a generation as failed, as the dispatcher would after its last attempt."""
    async with ledger.Ledger(pool, batch_settings=ledger.BatchSettings(committers=1)) as ledger_service:
        settled = await generations.settle_failure(
            pool, ledger_service, uuid.UUID(generation_id), "test: failed on purpose"
        )
    assert settled


async def test_a_limit_that_cannot_be_read_lets_the_request_through(database_url: str) -> None:
    async with apps(database_url, 1, rate_limits=limited(reads=(SLOW_PER_S, 1))) as (api,):
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("DROP TABLE rate_limits")
        finally:
            await connection.close()
        responses = [await api.get("/v1/pricing", "service") for _ in range(3)]
    assert [response.status_code for response in responses] == [200] * 3
    assert "ratelimit" not in responses[0].headers
