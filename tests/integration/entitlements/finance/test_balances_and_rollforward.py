"""Balances at a moment and the roll-forward, against real PostgreSQL and a model: the users' balances as the
ledger answered them after each transaction, read back at many moments (inside a period with holds open
across its end too), and a hypothesis test that random sequences of ledger operations always tie."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import ledger as L
from entitlements.finance import service
from tests.integration.entitlements.finance.ledger_script import Script, Step, run
from tests.support.database import clone_database, drop_database, dsn_with_database
from tests.support.http import api_for

USERS = ("alice", "bob", "carol")
SCRIPT = [
    Step("credit", 0, 100),
    Step("credit", 1, 50, category="promotional", expiring=True),
    Step("hold", 0, 40),
    Step("hold", 1, 20),
    Step("credit", 2, 30, category="subscription"),
    Step("capture", 0, part=50),
    Step("hold", 0, 10),  # stays open to the end
    Step("refund", 0),
    Step("clawback", 2, 45),  # 30 available: 15 becomes debt
    Step("credit", 2, 20),  # repays the debt first
    Step("expire", 1),  # bob's promotional lot, less what his open hold drew
    Step("void", 1),
    Step("hold", 2, 3),
]


@pytest.fixture
async def script(pool: asyncpg.Pool) -> Script:
    async with L.Ledger(pool) as led:
        return await run(pool, led, Script(users=USERS), SCRIPT)


def instants(script: Script) -> list:
    """Every transaction's moment, a microsecond after it, and before the first."""
    found = []
    for moment in script.moments:
        found += [moment.created_at, moment.created_at + timedelta(microseconds=1)]
    return [script.moments[0].created_at - timedelta(seconds=1), *found]


async def test_user_balances_at_every_moment_match_the_model(pool: asyncpg.Pool, script: Script) -> None:
    assert len(script.moments) == len(SCRIPT)
    for instant in instants(script):
        for user_id in USERS:
            found = await service.user_balance_at(pool, user_id, at=instant, position=None)
            expected = script.balances_before(user_id, instant)
            assert (found.available, found.held, found.owed) == (expected.available, expected.held, expected.owed)


async def test_user_balances_at_every_commit_position_match_the_model(pool: asyncpg.Pool, script: Script) -> None:
    for moment in script.moments:
        assert moment.position is not None
        cursor = L.encode_position(moment.position)
        for user_id in USERS:
            found = await service.user_balance_at(pool, user_id, at=None, position=cursor)
            expected = script.balances_before(user_id, moment.created_at + timedelta(microseconds=1))
            assert (found.available, found.held, found.owed) == (expected.available, expected.held, expected.owed)


async def test_system_accounts_at_every_moment_mirror_the_users(pool: asyncpg.Pool, script: Script) -> None:
    for instant in instants(script):
        balances = [
            (await service.account_balance_at(pool, code, at=instant, position=None)).balance
            for code in service.SYSTEM_ACCOUNTS
        ]
        assert -sum(balances) == script.liability_before(instant)
    sales = await service.account_balance_at(pool, "system:sales", at=None, position=None)
    assert sales.balance == -(100 + 20)


async def test_a_rollforward_inside_the_script_with_holds_open_across_its_end_ties(
    pool: asyncpg.Pool, script: Script
) -> None:
    # From just after the first hold to just after the second-to-last step: holds are open at both ends.
    since = script.moments[3].created_at + timedelta(microseconds=1)
    until = script.moments[-2].created_at + timedelta(microseconds=1)
    report = await service.rollforward(pool, since=since, until=until)
    assert report.ties, report.failing
    assert report.opening.held == 60
    assert report.closing.held == 10
    assert report.opening.liability == script.liability_before(since)
    assert report.closing.liability == script.liability_before(until)
    flows = report.flows
    assert flows.subscription_grants == 30
    assert flows.sold == 20
    assert flows.revenue == 20
    assert flows.refunds_to_users == 1
    assert flows.clawbacks == 45
    assert report.debt == type(report.debt)(opening=0, created=15, repaid=15, closing=0)
    # Bob's promotional 50: the 30 left of the lot expire, then the void gives the 20 his hold drew back to
    # the expired lot, which expires them too.
    assert flows.breakage == 50
    assert report.final


async def test_the_rollforward_through_http_in_json_and_csv(database_url: str, script: Script, tmp_path: Path) -> None:
    since = script.moments[0].created_at.isoformat()
    until = (script.moments[-1].created_at + timedelta(seconds=1)).isoformat()
    async with api_for(database_url, finance_settings={"export_dir": tmp_path}) as api:
        report = (await api.get("/v1/ledger/rollforward", "finance", since=since, until=until)).json()
        assert report["ties"] is True
        assert report["failing"] == []
        assert report["opening"]["liability"] == 0
        response = await api.get("/v1/ledger/rollforward", "finance", since=since, until=until, format="csv")
        assert response.headers["content-type"].startswith("text/csv")
        rows = dict(csv.reader(io.StringIO(response.text)))
        assert int(rows["closing_liability"]) == report["closing"]["liability"]
        assert rows["ties"] == "true"
        missing = await api.get("/v1/ledger/rollforward", "finance", since=since)
        assert missing.status_code == 422
        assert missing.json()["errors"][0]["field"] == "until"
        backwards = await api.get("/v1/ledger/rollforward", "finance", since=until, until=since)
        assert backwards.status_code == 422
        assert (await api.get("/v1/ledger/rollforward", "support", since=since, until=until)).status_code == 403


async def test_balances_through_http(database_url: str, script: Script, tmp_path: Path) -> None:
    moment = script.moments[2]
    at = (moment.created_at + timedelta(microseconds=1)).isoformat()
    async with api_for(database_url, finance_settings={"export_dir": tmp_path}) as api:
        for role in ("support", "finance"):
            answer = (await api.get("/v1/users/alice/balance", role, at=at)).json()
            assert answer == {
                "user_id": "alice",
                "at": answer["at"],
                "position": None,
                "available": 60,
                "held": 40,
                "owed": 0,
            }
        assert (await api.get("/v1/users/alice/balance", "service")).status_code == 403
        assert moment.position is not None
        cursor = L.encode_position(moment.position)
        by_position = (await api.get("/v1/users/alice/balance", "finance", position=cursor)).json()
        assert (by_position["available"], by_position["held"], by_position["at"]) == (60, 40, None)
        both = await api.get("/v1/users/alice/balance", "finance", at=at, position=cursor)
        assert both.status_code == 422
        forged = await api.get("/v1/users/alice/balance", "finance", position="AAAA")
        assert forged.status_code == 422
        assert forged.json()["errors"][0]["field"] == "position"
        far = await api.get("/v1/users/alice/balance", "finance", at="9999-12-31T23:59:59Z")
        assert far.status_code == 200
        assert far.json()["held"] == 10
        nobody = (await api.get("/v1/users/nobody/balance", "finance")).json()
        assert (nobody["available"], nobody["held"], nobody["owed"]) == (0, 0, 0)
        sales = (await api.get("/v1/ledger/accounts/system:sales/balance", "finance", at=at)).json()
        assert sales == {"account": "system:sales", "at": sales["at"], "position": None, "balance": -100}
        assert (await api.get("/v1/ledger/accounts/user:alice:available/balance", "finance")).status_code == 404
        assert (await api.get("/v1/ledger/accounts/system:sales/balance", "support")).status_code == 403


# --- Random sequences always tie ------------------------------------------------------------------------

STEPS = st.lists(
    st.builds(
        Step,
        op=st.sampled_from(["credit", "credit", "hold", "hold", "capture", "void", "refund", "clawback", "expire"]),
        user=st.integers(0, 2),
        amount=st.integers(1, 60),
        part=st.sampled_from([1, 50, 100]),
        category=st.sampled_from(["paid", "subscription", "promotional"]),
        expiring=st.booleans(),
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=20,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS, cuts=st.lists(st.integers(0, 40), min_size=2, max_size=2))
def test_random_sequences_of_ledger_operations_always_give_a_rollforward_that_ties(
    postgres_admin_dsn: str, template_database: str, steps: list[Step], cuts: list[int]
) -> None:
    asyncio.run(_random_sequence_ties(postgres_admin_dsn, template_database, steps, cuts))


async def _random_sequence_ties(admin_dsn: str, template: str, steps: list[Step], cuts: list[int]) -> None:
    name = await clone_database(admin_dsn, template)
    try:
        pool = await asyncpg.create_pool(dsn_with_database(admin_dsn, name), min_size=1, max_size=4)
        assert pool is not None
        try:
            async with L.Ledger(pool) as led:
                script = await run(pool, led, Script(users=USERS), steps)
            moments = instants(script) if script.moments else []
            if len(moments) < 2:
                return
            since, until = sorted(moments[cut % len(moments)] for cut in cuts)
            report = await service.rollforward(pool, since=since, until=until)
            assert report.ties, report.failing
            assert report.opening.liability == script.liability_before(since)
            assert report.closing.liability == script.liability_before(until)
            whole = await service.rollforward(pool, since=moments[0], until=moments[-1] + timedelta(seconds=1))
            assert whole.ties
            assert whole.opening.liability == 0
            assert whole.closing.liability == script.liability_before(moments[-1] + timedelta(seconds=1))
        finally:
            await pool.close()
    finally:
        await drop_database(admin_dsn, name)
