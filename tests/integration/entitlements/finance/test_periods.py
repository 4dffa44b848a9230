"""Period close: only once the commit horizon has passed the period's end, once, frozen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from entitlements.finance import service
from tests.support.finance import a_user, backdated_purchase
from tests.support.http import Api, api_for


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with api_for(database_url, finance_settings={"export_dir": tmp_path}) as client:
        yield client


OCTOBER = datetime(2026, 10, 15, tzinfo=UTC)


async def test_a_past_period_closes_once_frozen_with_its_rollforward(api: Api, pool: asyncpg.Pool) -> None:
    await a_user(pool, "alice")
    await backdated_purchase(pool, "alice", 100, datetime(2026, 9, 30, 23, 59, 59, 999999, tzinfo=UTC), "sep")
    await backdated_purchase(pool, "alice", 40, OCTOBER, "oct")
    closed = await api.post("/v1/ledger/periods", "finance", {"period": "2026-10"})
    assert closed.status_code == 201, closed.text
    period = closed.json()
    assert period["period"] == "2026-10"
    assert period["seal_head"] is None
    assert period["since"].startswith("2026-10-01T00:00:00")
    assert period["until"].startswith("2026-11-01T00:00:00")
    report = period["report"]
    assert report["ties"]
    assert report["final"]
    assert report["opening"]["liability"] == 100
    assert report["flows"]["sold"] == 40
    assert report["closing"]["liability"] == 140
    again = await api.post("/v1/ledger/periods", "finance", {"period": "2026-10"})
    assert again.status_code == 409
    assert "already closed" in again.json()["detail"]

    # A row dated inside the closed period appears later (only a superuser could write one): the closed
    # period keeps what it was closed with; the roll-forward computed afresh shows the difference.
    await backdated_purchase(pool, "alice", 7, OCTOBER, "oct-late")
    listed = (await api.get("/v1/ledger/periods", "finance")).json()
    assert listed["items"] == [period]
    fresh = (await api.get("/v1/ledger/rollforward", "finance", since=period["since"], until=period["until"])).json()
    assert fresh["closing"]["liability"] == 147
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE finance_periods SET seal_head = 'x'")
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("DELETE FROM finance_periods")


async def test_periods_are_listed_newest_first_and_paged(api: Api) -> None:
    for period in ("2026-08", "2026-06", "2026-07"):
        assert (await api.post("/v1/ledger/periods", "finance", {"period": period})).status_code == 201
    first = (await api.get("/v1/ledger/periods", "finance", limit=2)).json()
    assert [item["period"] for item in first["items"]] == ["2026-08", "2026-07"]
    rest = (await api.get("/v1/ledger/periods", "finance", limit=2, cursor=first["next_cursor"])).json()
    assert [item["period"] for item in rest["items"]] == ["2026-06"]
    assert rest["next_cursor"] is None
    assert (await api.get("/v1/ledger/periods", "finance", cursor="forged")).status_code == 422


async def test_the_current_and_future_months_cannot_be_closed(api: Api, pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    for period in (f"{now:%Y-%m}", f"{now.year + 1}-01"):
        response = await api.post("/v1/ledger/periods", "finance", {"period": period})
        assert response.status_code == 409, response.text
        assert "commit horizon" in response.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM finance_periods") == 0


async def test_a_transaction_that_began_before_the_end_and_is_still_open_holds_the_close_back(
    pool: asyncpg.Pool,
) -> None:
    """`created_at` is the writing transaction's start: one that began before the end could still commit
    rows dated inside the period, whether or not it has written anything yet."""
    connection = await pool.acquire()
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("SELECT 1")
        async with pool.acquire() as checker:
            end = await checker.fetchval("SELECT clock_timestamp()")
            waiting = await service._still_running_before(checker, end)
            assert waiting is not None
            assert "still open" in waiting
            await transaction.commit()
            assert await service._still_running_before(checker, end) is None
    finally:
        await pool.release(connection)


async def test_two_concurrent_closes_of_one_period_close_it_once(api: Api, pool: asyncpg.Pool) -> None:
    answers = await asyncio.gather(
        *(api.post("/v1/ledger/periods", "finance", {"period": "2026-05"}) for _ in range(4))
    )
    assert sorted(answer.status_code for answer in answers) == [201, 409, 409, 409]
    assert await pool.fetchval("SELECT count(*) FROM finance_periods") == 1


@pytest.mark.parametrize("period", ["2026-13", "2026-00", "26-11", "2026-1", "1999-12", "2026-11-01", ""])
async def test_a_bad_period_is_422(api: Api, period: str) -> None:
    response = await api.post("/v1/ledger/periods", "finance", {"period": period})
    assert response.status_code == 422, response.text
    assert "period" in response.json()["detail"]


async def test_closing_is_for_finance(api: Api) -> None:
    assert (await api.post("/v1/ledger/periods", "support", {"period": "2026-05"})).status_code == 403
    assert (await api.get("/v1/ledger/periods", "support")).status_code == 403
