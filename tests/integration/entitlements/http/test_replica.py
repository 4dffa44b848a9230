"""Reads routed to a real streaming replica (pg_basebackup -R), and what happens when it lags or dies.

One primary and one hot standby for the module (tests/support/replica.py). The proofs that a read was
served by the replica pause its replay: a write made on the primary after the pause is invisible there, so
an answer without it came from the replica and an answer with it from the primary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from entitlements.reads import Reads
from tests.support.generations import body, create, fresh_key, grant, premium_user
from tests.support.http import Api
from tests.support.replica import ReplicaPair, api_with_replica, replica_pair, template_on

# Generous: each condition polled for is met within a second or two here; the deadline only stops a hang.
DEADLINE_S = 30.0
POLL_S = 0.05
# Small enough that a paused replica is seen lagging quickly; the check interval well under it.
TIGHT = {"replica_lag_max_s": 0.5, "replica_check_interval_s": 0.05, "replica_timeout_s": 0.5}
# So loose that a paused replica stays "fresh": every routed read then provably comes from it.
LOOSE = {"replica_lag_max_s": 3600.0, "replica_check_interval_s": 0.05}
# A monitor that measures once at start and not again during the test: what changes is the requests' doing.
UNWATCHED = {"replica_lag_max_s": 3600.0, "replica_check_interval_s": 600.0}


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicaPair]:
    with replica_pair() as started:
        yield started


@pytest.fixture(scope="module")
async def urls(pair: ReplicaPair) -> tuple[str, str]:
    template = await template_on(pair)
    return await pair.create_database(template, "replica_routing")


@pytest.fixture
async def replay_paused(pair: ReplicaPair) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """`pause()` stops the replica's replay; it is resumed (and caught up) after the test whatever happens."""
    await pair.wait_caught_up()
    yield pair.pause_replay
    await pair.resume_replay()
    await pair.wait_caught_up()


def reads_of(api: Api) -> Reads:
    reads: Reads = api.client.app.state.reads
    return reads


async def ready(api: Api) -> dict[str, Any]:
    response = await api.client.get("/readyz")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def until_ready_says(api: Api, **expected: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        answer = await ready(api)
        if all(answer[name] == value for name, value in expected.items()):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz never said {expected}: {answer}")
        await asyncio.sleep(POLL_S)


async def available(api: Api, user: str) -> int:
    response = await api.get(f"/v1/users/{user}/entitlements", "service")
    assert response.status_code == 200, response.text
    moments: int = response.json()["balance"]["available"]
    return moments


async def test_routed_reads_come_from_the_replica_and_own_writes_from_the_primary(
    pair: ReplicaPair, urls: tuple[str, str], replay_paused: Callable[[], Awaitable[None]]
) -> None:
    async with api_with_replica(pair, *urls, **LOOSE) as api:
        await premium_user(api, "alice", 1000)
        await pair.wait_caught_up()
        assert await until_ready_says(api, replica="ok", reads="replica")
        assert reads_of(api).replica() is not reads_of(api).primary
        assert await available(api, "alice") == 1000

        await replay_paused()
        await grant(api, "alice", 500)
        key = fresh_key("gen")
        created = await create(api, "alice", body(), key)
        assert created.status_code == 202, created.text
        generation = created.json()

        # Served by the replica: neither the grant nor the generation has been replayed there.
        assert await available(api, "alice") == 1000
        listed = await api.get("/v1/users/alice/generations", "service")
        assert listed.status_code == 200, listed.text
        assert [item["id"] for item in listed.json()["items"]] == []
        balance = await api.get("/v1/users/alice/balance", "support")
        assert balance.status_code == 200, balance.text
        assert balance.json()["available"] == 1000

        # Served by the primary: the caller's own generation, its idempotent replay, and its user ledger.
        got = await api.get(f"/v1/generations/{generation['id']}", "service")
        assert got.status_code == 200, got.text
        assert got.json()["status"] == "queued"
        replayed = await create(api, "alice", body(), key)
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["id"] == generation["id"]
        ledger = await api.get("/v1/users/alice/ledger", "support")
        assert ledger.status_code == 200, ledger.text
        assert len(ledger.json()["items"]) == 3  # two grants and the generation's hold

        await pair.resume_replay()
        await pair.wait_caught_up()
        assert await available(api, "alice") == 1500 - generation["held"]


async def test_a_replica_further_behind_than_the_bound_is_not_read(
    pair: ReplicaPair, urls: tuple[str, str], replay_paused: Callable[[], Awaitable[None]]
) -> None:
    async with api_with_replica(pair, *urls, **TIGHT) as api:
        await premium_user(api, "bob", 100)
        await pair.wait_caught_up()
        await until_ready_says(api, replica="ok", reads="replica")
        metrics = (await api.client.get("/metrics")).text
        assert "moments_replica_lag_seconds" in metrics

        await replay_paused()
        await grant(api, "bob", 50)  # WAL the paused replica does not replay
        lagging = await until_ready_says(api, replica="lagging", reads="primary")
        assert lagging["status"] == "ready"
        assert lagging["replica_lag_s"] > TIGHT["replica_lag_max_s"]
        assert reads_of(api).replica() is reads_of(api).primary
        assert await available(api, "bob") == 150  # the primary's answer

        await pair.resume_replay()
        await until_ready_says(api, replica="ok", reads="replica")
        assert await available(api, "bob") == 150  # now the replica's, caught up


async def test_a_read_the_stopped_replica_fails_is_answered_by_the_primary_at_once(
    pair: ReplicaPair, urls: tuple[str, str]
) -> None:
    async with api_with_replica(pair, *urls, **UNWATCHED) as api:
        await premium_user(api, "dave", 70)
        await pair.wait_caught_up()
        assert (await ready(api))["reads"] == "replica"
        pair.stop_replica()
        try:
            # The monitor has not looked since: the replica pool's failure sends the read to the primary,
            # and marks the replica down for the reads after it.
            assert await available(api, "dave") == 70
            down = await ready(api)
            assert (down["status"], down["replica"], down["reads"]) == ("ready", "down", "primary")
        finally:
            pair.start_replica()


async def test_a_stopped_replica_leaves_reads_to_the_primary_until_it_is_back(
    pair: ReplicaPair, urls: tuple[str, str]
) -> None:
    async with api_with_replica(pair, *urls, **TIGHT) as api:
        await premium_user(api, "carol", 300)
        await pair.wait_caught_up()
        await until_ready_says(api, replica="ok", reads="replica")
        pair.stop_replica()
        try:
            # Whether or not the monitor has noticed yet, the read is answered (by the primary).
            assert await available(api, "carol") == 300
            down = await until_ready_says(api, replica="down", reads="primary")
            assert down["status"] == "ready"
            await grant(api, "carol", 1)
            assert await available(api, "carol") == 301
            listed = await api.get("/v1/users/carol/generations", "service")
            assert listed.status_code == 200, listed.text
        finally:
            pair.start_replica()
        await until_ready_says(api, replica="ok", reads="replica")
        # "ok" promises at most the bound's staleness, not the grant made while it was down: wait for that.
        await pair.wait_caught_up()
        assert await available(api, "carol") == 301
