"""Leases of a key's allowance (`limits.Leases`): one statement takes many requests' worth, against real
PostgreSQL, with two lease holders (as two processes would be) sharing one key's row.

The rate is one request per thousand seconds and the leases last an hour (or lapse at once): nothing comes
back and nothing lapses by the clock during a test, so no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg
import pytest

from entitlements import limits
from entitlements.http.limits import POLICIES_STATE_KEY
from tests.integration.entitlements.limits.test_rate_limits import apps, limited

SLOW_PER_S = 0.001
HOUR_S = 3600.0


def leased(burst: int, lease_max: int, lease_s: float = HOUR_S) -> limits.Policy:
    return limits.Policy("reads", per_s=SLOW_PER_S, burst=burst, lease_max=lease_max, lease_s=lease_s)


class CountingPool:
    """The real pool, counting the statements the leases send."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements = 0

    async def fetchrow(self, *args: Any) -> Any:
        self.statements += 1
        return await self.pool.fetchrow(*args)


async def test_two_holders_never_allow_more_than_the_burst_and_write_once_per_lease(pool: asyncpg.Pool) -> None:
    policy = leased(burst=40, lease_max=8)
    counting = CountingPool(pool)
    holders = [limits.Leases(), limits.Leases()]
    decisions = await asyncio.gather(
        *(
            holders[n % 2].check(counting, policy, key_id=7, idempotency_key=None)  # type: ignore[arg-type]
            for n in range(100)
        )
    )
    assert Counter(decision.allowed for decision in decisions) == Counter({True: 40, False: 60})
    # 40 allowed through five leases of 8, each taken in one statement; each refusal asked the database.
    assert counting.statements == 40 // 8 + 60
    assert all(decision.retry_after_s >= 1 for decision in decisions if not decision.allowed)


async def test_a_lease_takes_what_is_left_when_less_than_its_size(pool: asyncpg.Pool) -> None:
    policy = leased(burst=10, lease_max=8)
    holder = limits.Leases()
    allowed = [(await holder.check(pool, policy, key_id=8, idempotency_key=None)).allowed for _ in range(12)]
    # 8, then the 2 the allowance still had, then refusals.
    assert allowed == [True] * 10 + [False] * 2


async def test_what_a_lapsed_lease_held_is_not_used(pool: asyncpg.Pool) -> None:
    # The leases lapse at once: each request takes a lease of 4 and the 3 it does not use are lost, so the
    # burst of 8 serves two requests. This is the bound a lease puts on the others: what it holds.
    policy = leased(burst=8, lease_max=4, lease_s=0.0)
    holder = limits.Leases()
    allowed = [(await holder.check(pool, policy, key_id=9, idempotency_key=None)).allowed for _ in range(3)]
    assert allowed == [True, True, False]


async def test_a_request_given_back_after_its_lease_lapsed_goes_back_to_the_row(pool: asyncpg.Pool) -> None:
    policy = leased(burst=8, lease_max=4, lease_s=0.0)
    holder = limits.Leases()
    assert (await holder.check(pool, policy, key_id=11, idempotency_key=None)).allowed  # took 4, 3 lapsed
    await holder.give_back(pool, policy, key_id=11)  # the row has 5 again
    allowed = [(await holder.check(pool, policy, key_id=11, idempotency_key=None)).allowed for _ in range(3)]
    # A lease of 4 and then the 1 left; without the one given back, the second would have been refused.
    assert allowed == [True, True, False]


async def test_the_headers_count_what_the_lease_still_holds(pool: asyncpg.Pool) -> None:
    policy = leased(burst=16, lease_max=4)
    holder = limits.Leases()
    remaining = [(await holder.check(pool, policy, key_id=10, idempotency_key=None)).remaining for _ in range(6)]
    assert remaining == [15, 14, 13, 12, 11, 10]


@pytest.mark.parametrize("lease_s", [HOUR_S, 0.0])
async def test_replays_and_reused_keys_use_none_of_a_lease(database_url: str, lease_s: float) -> None:
    # lease_s 0: every lease has lapsed by the time its replay is known, so it goes back to the key's row.
    async with apps(database_url, 1, rate_limits=limited(writes=(SLOW_PER_S, 16))) as (api,):
        app: Any = api.client.app
        app.state[POLICIES_STATE_KEY]["writes"] = limits.Policy(
            "writes", per_s=SLOW_PER_S, burst=16, lease_max=4, lease_s=lease_s
        )
        grant = {"moments": 5, "reason": "goodwill", "category": "promotional"}
        first = await api.post("/v1/users/u1/grants", "support", grant, "grant-a")
        assert first.status_code == 201, first.text
        replays = [await api.post("/v1/users/u1/grants", "support", grant, "grant-a") for _ in range(5)]
        assert all(response.status_code == 201 and response.json() == first.json() for response in replays)
        other = {"moments": 6, "reason": "goodwill", "category": "promotional"}
        reused = await api.post("/v1/users/u1/grants", "support", other, "grant-a")
        assert reused.status_code == 409, reused.text
        # Neither the replays nor the 409 used any of it: with lapsing leases each new request takes a
        # lease of 4 and loses 3, so the burst of 16 serves 4 (the lease's bound); else all 15 left.
        expected = 15 if lease_s else 3
        statuses = [
            (await api.post("/v1/users/u1/grants", "support", grant, f"grant-{n}")).status_code
            for n in range(expected + 3)
        ]
        assert statuses == [201] * expected + [429] * 3
        # The allowance is gone and the lease empty: a replay still gets its stored answer.
        replay = await api.post("/v1/users/u1/grants", "support", grant, "grant-a")
        assert replay.status_code == 201
        assert replay.json() == first.json()


@pytest.mark.parametrize(
    ("per_s", "burst", "lease_s", "expected"),
    [
        (20.0, 100, 0.1, 2),  # the default generations class: two a lease
        (200.0, 1000, 0.1, 20),  # the default reads class
        (0.001, 1000, 0.1, 1),  # a slow key: every request checked in the database
        (100_000.0, 1_000_000, 0.1, limits.service.LEASE_REQUESTS_MAX),
        (1000.0, 16, 1.0, 2),  # at most an eighth of the burst
        (1000.0, 1000, 0.0, 1),  # leases off
    ],
)
def test_a_lease_is_bounded_by_the_rate_the_burst_and_a_maximum(
    per_s: float, burst: int, lease_s: float, expected: int
) -> None:
    assert limits.lease_max(per_s, burst, lease_s) == expected
