"""The business figures /metrics shows (DESIGN.md, "API conventions"): generations by outcome, the work in
progress and the queue's age, the open holds, and the ledger's batch sizes and commit times."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

import ledger
from entitlements.generations import settle_failure
from tests.support.generations import body, create_ok, premium_user, price_of
from tests.support.http import Api, api_for


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url) as found:
        yield found


async def metric(api: Api, name: str) -> float:
    text = (await api.client.get("/metrics")).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def test_work_in_progress_open_holds_and_outcomes(api: Api, pool: asyncpg.Pool) -> None:
    price = await price_of(api, body())
    await premium_user(api, "watched", 10 * price)
    created_before = await metric(api, "moments_generations_created_total")
    failed_before = await metric(api, 'moments_generations_settled_total{outcome="failed"}')
    first = await create_ok(api, "watched", body())
    await create_ok(api, "watched", body())

    assert await metric(api, "moments_generations_created_total") == created_before + 2
    assert await metric(api, 'moments_generations_in_progress{status="queued"}') == 2
    assert await metric(api, 'moments_generations_in_progress{status="running"}') == 0
    assert await metric(api, "moments_holds_open") == 2
    assert await metric(api, "moments_moments_held") == 2 * price
    assert await metric(api, "moments_generation_queue_oldest_seconds") >= 0

    async with ledger.Ledger(pool, batch_settings=ledger.BatchSettings(committers=1)) as ledger_service:
        assert await settle_failure(pool, ledger_service, uuid.UUID(first["id"]), "test: failed on purpose")
    assert await metric(api, 'moments_generations_settled_total{outcome="failed"}') == failed_before + 1
    assert await metric(api, "moments_holds_open") == 1
    assert await metric(api, "moments_moments_held") == price


async def test_the_ledgers_batches_are_measured(api: Api) -> None:
    await premium_user(api, "batched", 10 * await price_of(api, body()))
    before = await metric(api, "moments_ledger_batch_operations_count")
    await create_ok(api, "batched", body())  # a generation's hold goes through the group commit
    assert await metric(api, "moments_ledger_batch_operations_count") > before
    assert await metric(api, "moments_ledger_batch_operations_sum") >= 1
    assert await metric(api, "moments_ledger_batch_seconds_count") > 0
