"""The ledger's endpoints of API.md, through HTTP, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.http import Api, api_for


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url) as client:
        yield client


async def grant(api: Api, user: str, moments: int, key: str, role: str = "support") -> dict:
    response = await api.post(f"/v1/users/{user}/grants", role, {"moments": moments, "reason": "goodwill"}, key)
    assert response.status_code == 201, response.text
    return response.json()


async def test_grant_credits_and_replays_the_same_answer(api: Api) -> None:
    first = await grant(api, "u1", 500, "g-1")
    assert first["balance"] == {"available": 500, "held": 0}
    again = await api.post("/v1/users/u1/grants", "support", {"moments": 500, "reason": "goodwill"}, "g-1")
    assert again.status_code == 201
    assert again.json() == first
    history = (await api.get("/v1/users/u1/ledger", "support")).json()
    assert [item["kind"] for item in history["items"]] == ["grant"]
    assert history["items"][0]["delta_available"] == 500


async def test_grant_with_a_reused_key_and_another_body_is_409(api: Api) -> None:
    await grant(api, "u1", 500, "g-1")
    response = await api.post("/v1/users/u1/grants", "support", {"moments": 501, "reason": "goodwill"}, "g-1")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_reused"


async def test_grant_needs_an_idempotency_key(api: Api) -> None:
    response = await api.post("/v1/users/u1/grants", "support", {"moments": 5, "reason": "x"})
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_required"
    too_long = await api.post("/v1/users/u1/grants", "support", {"moments": 5, "reason": "x"}, "k" * 256)
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"moments": 0, "reason": "x"}, "moments"),
        ({"moments": -5, "reason": "x"}, "moments"),
        ({"moments": 1.5, "reason": "x"}, "moments"),
        ({"moments": "5", "reason": "x"}, "moments"),
        ({"moments": 5, "reason": ""}, "reason"),
        ({"moments": 5}, "reason"),
        ({"moments": 5, "reason": "x", "category": "gold"}, "category"),
        ({"moments": 5, "reason": "x", "expires_at": "yesterday"}, "expires_at"),
        ({"moments": 5, "reason": "x", "bonus": 1}, "bonus"),
    ],
)
async def test_bad_grants_are_422_naming_the_field_and_write_nothing(api: Api, body: dict, field: str) -> None:
    response = await api.post("/v1/users/u1/grants", "support", body, "bad")
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert field in problem["detail"]
    history = (await api.get("/v1/users/u1/ledger", "support")).json()
    assert history["items"] == []


async def test_grant_expiring_in_the_past_is_refused(api: Api) -> None:
    body = {"moments": 5, "reason": "x", "expires_at": "2020-01-01T00:00:00Z"}
    response = await api.post("/v1/users/u1/grants", "support", body, "past")
    assert response.status_code == 422
    assert "expires_at" in response.json()["detail"]


async def test_concurrent_grants_with_one_key_make_one_effect(api: Api) -> None:
    responses = await asyncio.gather(
        *[api.post("/v1/users/u1/grants", "support", {"moments": 7, "reason": "x"}, "same") for _ in range(10)]
    )
    assert {response.status_code for response in responses} == {201}
    assert len({response.text for response in responses}) == 1
    history = (await api.get("/v1/users/u1/ledger", "finance")).json()
    assert len(history["items"]) == 1


async def test_history_pages_newest_first_with_a_cursor(api: Api) -> None:
    for number in range(5):
        await grant(api, "u1", number + 1, f"g-{number}")
    seen = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/users/u1/ledger", "finance", **params)).json()
        seen += [item["delta_available"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    bad_limit = await api.get("/v1/users/u1/ledger", "finance", limit=100_000)
    assert bad_limit.status_code == 422
    assert bad_limit.json()["errors"][0]["field"] == "limit"
    bad_cursor = await api.get("/v1/users/u1/ledger", "finance", cursor="nonsense!")
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["errors"][0]["field"] == "cursor"


async def test_transactions_list_postings_and_filter(api: Api) -> None:
    await grant(api, "u1", 10, "a")
    await grant(api, "u2", 20, "b")
    page = (await api.get("/v1/ledger/transactions", "finance", kind="grant")).json()
    assert [item["kind"] for item in page["items"]] == ["grant", "grant"]
    postings = page["items"][1]["postings"]
    assert sorted((p["account"], p["amount"]) for p in postings) == [
        ("system:promotions", -20),
        ("user:u2:available", 20),
    ]
    assert all(sum(p["amount"] for p in item["postings"]) == 0 for item in page["items"])
    none = (await api.get("/v1/ledger/transactions", "finance", kind="refund")).json()
    assert none["items"] == []
    wrong_kind = await api.get("/v1/ledger/transactions", "finance", kind="bogus")
    assert wrong_kind.status_code == 422
    later = (await api.get("/v1/ledger/transactions", "finance", since="2999-01-01T00:00:00Z")).json()
    assert later["items"] == []


async def test_audit_endpoint_and_command_agree_and_see_corruption(api: Api, database_url: str) -> None:
    await grant(api, "u1", 100, "a")
    report = (await api.get("/v1/ledger/audit", "finance")).json()
    assert report["ok"] is True
    assert {check["name"] for check in report["checks"]} >= {
        "transactions_balanced",
        "trial_balance_zero",
        "cached_balances_match_postings",
        "held_equals_open_holds",
        "available_equals_lots",
    }
    environment = os.environ | {"DATABASE_URL": database_url}
    command = [sys.executable, "-m", "entitlements.cli", "audit"]
    clean = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "audit passed" in clean.stdout

    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("UPDATE ledger_balances SET available = available + 1 WHERE user_id = 'u1'")
    finally:
        await connection.close()
    corrupted = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, check=False)
    assert corrupted.returncode == 1
    assert "FAIL cached_balances_match_postings" in corrupted.stdout
    report = (await api.get("/v1/ledger/audit", "finance")).json()
    assert report["ok"] is False


async def test_a_nul_character_in_a_grant_reason_is_422_naming_it(api: Api) -> None:
    response = await api.post("/v1/users/u1/grants", "support", {"moments": 5, "reason": "a\x00b"}, "nul")
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "reason"
