"""Support's limits on goodwill (API and console share them) and four eyes on large grants and refunds,
through HTTP against real PostgreSQL: at and past each limit, concurrent callers, and the database's own
refusal of a self-approval."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import ledger
from entitlements import generations
from tests.support.generations import fresh_key
from tests.support.http import Api, api_for

CAP = 5_000
DAILY = 10_000
THRESHOLD = 2_000
# A second support person, and the first person's second key (rotation keeps a name: one person).
PEOPLE = {"bob": ("support", "bob"), "support_again": ("support", "test-support")}


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url, extra_keys=PEOPLE) as client:
        yield client


async def grant(api: Api, user: str, moments: int, role: str = "support", **extra: Any) -> Any:
    return await api.post(
        f"/v1/users/{user}/grants", role, {"moments": moments, "reason": "goodwill", **extra}, fresh_key()
    )


async def available(api: Api, user: str) -> int:
    response = await api.get(f"/v1/users/{user}/entitlements", "support")
    assert response.status_code == 200, response.text
    return int(response.json()["balance"]["available"])


async def decide(api: Api, approval_id: int, decision: str, who: str, reason: str = "checked") -> Any:
    return await api.post(f"/v1/approvals/{approval_id}/{decision}", who, {"reason": reason})


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


# --- support's limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("category", ["paid", "subscription"])
async def test_support_grants_promotional_moments_only(api: Api, category: str) -> None:
    refused = problem(await grant(api, "u1", 10, category=category), 403, "forbidden")
    assert "promotional moments only" in refused["detail"]
    assert (await grant(api, "u1", 10, category="promotional")).status_code == 201
    assert (await grant(api, "u1", 10, "admin", category=category)).status_code == 201
    assert await available(api, "u1") == 20


async def test_the_per_grant_cap_at_and_past_it_and_admin_is_not_capped(api: Api) -> None:
    at_cap = await grant(api, "u1", CAP)
    assert at_cap.status_code == 202, at_cap.text  # at the cap, but above the threshold: four eyes
    assert at_cap.json()["status"] == "pending_approval"
    over = problem(await grant(api, "u1", CAP + 1), 403, "forbidden")
    assert str(CAP) in over["detail"]
    admin = await grant(api, "u1", CAP + 1, "admin")
    assert admin.status_code == 201, admin.text
    assert await available(api, "u1") == CAP + 1


async def test_the_approval_threshold_at_and_past_it(api: Api) -> None:
    at = await grant(api, "u1", THRESHOLD)
    assert at.status_code == 201, at.text
    past = await grant(api, "u1", THRESHOLD + 1)
    assert past.status_code == 202, past.text
    assert set(past.json()) == {"approval_id", "status"}
    assert await available(api, "u1") == THRESHOLD


async def test_four_grants_of_five_thousand_in_a_row_stop_at_the_daily_total(api: Api) -> None:
    answers = [await grant(api, "u1", CAP) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [202, 202, 403, 403]
    assert "per person per UTC day" in answers[2].json()["detail"]
    # The same person with another key (a rotated one keeps the name) shares the day's total.
    problem(await grant(api, "u1", 1, "support_again"), 403, "forbidden")
    # Another person has a day of their own; an admin has no daily total.
    assert (await grant(api, "u1", 1, "bob")).status_code == 201
    assert (await grant(api, "u1", 20_000, "admin")).status_code == 201


async def test_the_daily_total_at_and_past_it(database_url: str) -> None:
    async with api_for(database_url, api_settings={"support_grant_daily_moments_max": 1_000}) as api:
        assert (await grant(api, "u1", 600)).status_code == 201
        assert (await grant(api, "u1", 400)).status_code == 201  # exactly the total
        refused = problem(await grant(api, "u1", 1), 403, "forbidden")
        assert "granted 1000 of the 1000" in refused["detail"]
        assert await available(api, "u1") == 1_000


async def test_concurrent_grants_never_pass_the_daily_total_together(database_url: str) -> None:
    async with api_for(database_url, api_settings={"support_grant_daily_moments_max": 1_000}) as api:
        answers = await asyncio.gather(*[grant(api, f"u{n}", 300) for n in range(10)])
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201] * 3 + [403] * 7, statuses
        totals = [await available(api, f"u{n}") for n in range(10)]
        assert sum(totals) == 900


# --- approvals ----------------------------------------------------------------------------------------


async def pending_grant(api: Api, user: str, moments: int = 3_000) -> int:
    response = await grant(api, user, moments)
    assert response.status_code == 202, response.text
    return int(response.json()["approval_id"])


async def test_a_pending_grant_takes_effect_only_when_a_second_person_approves(api: Api, pool: asyncpg.Pool) -> None:
    approval_id = await pending_grant(api, "u1")
    assert await available(api, "u1") == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE user_id = 'u1'") == 0
    listed = (await api.get("/v1/approvals", "support", status="pending")).json()["items"]
    assert [(item["id"], item["kind"], item["moments"], item["status"]) for item in listed] == [
        (approval_id, "grant", 3_000, "pending")
    ]

    # Not the requester, whichever of their keys; not finance or the service.
    for who in ("support", "support_again"):
        assert "second person" in problem(await decide(api, approval_id, "approve", who), 403, "forbidden")["detail"]
        problem(await decide(api, approval_id, "reject", who), 403, "forbidden")
    for role in ("finance", "service"):
        problem(await decide(api, approval_id, "approve", role), 403, "forbidden")

    approved = await decide(api, approval_id, "approve", "bob", "logs confirm the outage")
    assert approved.status_code == 200, approved.text
    decided = approved.json()
    assert (decided["status"], decided["decision_reason"]) == ("approved", "logs confirm the outage")
    assert decided["decided_by"].endswith(":bob")
    assert decided["requested_by"].endswith(":test-support")
    assert await available(api, "u1") == 3_000
    (item,) = (await api.get("/v1/users/u1/ledger", "support")).json()["items"]
    assert (item["transaction_id"], item["kind"], item["delta_available"]) == (
        decided["transaction_id"],
        "grant",
        3_000,
    )
    assert item["actor"] == decided["requested_by"]
    assert item["reference"] == f"approval:{approval_id}"

    # The same decision again answers the same; another decision, or another person's, is a conflict.
    again = await decide(api, approval_id, "approve", "bob", "logs confirm the outage")
    assert (again.status_code, again.json()) == (200, decided)
    problem(await decide(api, approval_id, "reject", "bob"), 409, "conflict")
    problem(await decide(api, approval_id, "approve", "admin"), 409, "conflict")
    assert await available(api, "u1") == 3_000


async def test_a_rejected_grant_changes_nothing_and_gives_the_daily_total_back(database_url: str) -> None:
    settings = {"support_grant_daily_moments_max": 3_000}
    async with api_for(database_url, api_settings=settings, extra_keys=PEOPLE) as api:
        approval_id = await pending_grant(api, "u1", 3_000)
        problem(await grant(api, "u1", 1), 403, "forbidden")  # the pending request counts against the day
        rejected = await decide(api, approval_id, "reject", "admin", "not warranted")
        assert rejected.status_code == 200, rejected.text
        assert (rejected.json()["status"], rejected.json()["transaction_id"]) == ("rejected", None)
        assert await available(api, "u1") == 0
        assert (await grant(api, "u1", 1_000)).status_code == 201
        problem(await decide(api, approval_id, "approve", "bob"), 409, "conflict")


async def test_a_concurrent_approve_and_reject_decide_once(api: Api, pool: asyncpg.Pool) -> None:
    approval_id = await pending_grant(api, "u1")
    answers = await asyncio.gather(
        decide(api, approval_id, "approve", "bob"),
        decide(api, approval_id, "reject", "admin"),
        decide(api, approval_id, "approve", "admin"),
    )
    statuses = sorted(answer.status_code for answer in answers)
    # One decision wins; the winner's own repeat (admin approving twice) answers it again, the rest conflict.
    assert statuses in ([200, 409, 409], [200, 200, 409]), statuses
    status = await pool.fetchval("SELECT status FROM approvals WHERE id = $1", approval_id)
    grants = await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE user_id = 'u1'")
    assert grants == (1 if status == "approved" else 0)


async def test_an_expired_approval_cannot_be_approved(api: Api, pool: asyncpg.Pool) -> None:
    approval_id = await pending_grant(api, "u1")
    await pool.execute(
        "UPDATE approvals SET created_at = now() - interval '8 days', expires_at = now() - interval '1 day' "
        "WHERE id = $1",
        approval_id,
    )
    assert "expired" in problem(await decide(api, approval_id, "approve", "bob"), 409, "conflict")["detail"]
    expired = (await api.get("/v1/approvals", "admin", status="expired")).json()["items"]
    assert [item["id"] for item in expired] == [approval_id]
    assert (await api.get("/v1/approvals", "admin", status="pending")).json()["items"] == []
    assert await available(api, "u1") == 0


async def test_the_database_refuses_a_decision_by_the_requester(api: Api, pool: asyncpg.Pool) -> None:
    approval_id = await pending_grant(api, "u1")
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "UPDATE approvals SET status = 'rejected', decided_at = now(), decided_by = 'key:1:test-support', "
            "decided_by_person = 'test-support' WHERE id = $1",
            approval_id,
        )
    await pool.execute(
        "UPDATE approvals SET status = 'rejected', decided_at = now(), decided_by = 'x', decided_by_person = 'x' "
        "WHERE id = $1",
        approval_id,
    )
    with pytest.raises(asyncpg.CheckViolationError, match="already rejected"):
        await pool.execute("UPDATE approvals SET status = 'pending' WHERE id = $1", approval_id)


async def test_approvals_are_paged_and_refuse_forged_cursors_and_unknown_ids(api: Api) -> None:
    ids = [await pending_grant(api, f"u{n}", 2_001 + n) for n in range(3)]
    first = (await api.get("/v1/approvals", "support", limit=2)).json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    second = (await api.get("/v1/approvals", "support", limit=2, cursor=first["next_cursor"])).json()
    assert ([item["id"] for item in second["items"]], second["next_cursor"]) == ([ids[0]], None)
    problem(await api.get("/v1/approvals", "support", cursor="forged"), 422, "validation_failed")
    problem(await api.get("/v1/approvals", "support", status="maybe"), 422, "validation_failed")
    problem(await decide(api, 999_999, "approve", "bob"), 404, "not_found")
    problem(await api.post(f"/v1/approvals/{ids[0]}/approve", "bob", {}), 422, "validation_failed")
    for role in ("finance", "service"):
        problem(await api.get("/v1/approvals", role), 403, "forbidden")


# --- refunds above the threshold --------------------------------------------------------------------------


async def delivered(api: Api, pool: asyncpg.Pool, user: str, price: int) -> str:
    """A succeeded generation of `price` moments, settled as the dispatcher would (no worker needed)."""
    assert (await api.put(f"/v1/users/{user}/subscription", "admin", {"tier": "PREMIUM"})).status_code == 200
    assert (await grant(api, user, price, "admin")).status_code == 201
    created = await api.post(
        f"/v1/users/{user}/generations",
        "service",
        {"image_id": "img", "prompt": "a wave", "mode": "advanced", "resolution": "1080p", "duration_s": 15},
        fresh_key(),
    )
    assert created.status_code == 202, created.text
    generation_id = created.json()["id"]
    assert created.json()["moments"] == price
    async with ledger.Ledger(pool) as ledger_service:
        assert await generations.settle_success(pool, ledger_service, uuid.UUID(generation_id), Path("/dev/null"), 0)
    return str(generation_id)


PRICE_1080P_15S = 2_700


async def test_a_refund_above_the_threshold_waits_and_an_approval_refunds_it(api: Api, pool: asyncpg.Pool) -> None:
    generation_id = await delivered(api, pool, "u1", PRICE_1080P_15S)
    refund = f"/v1/generations/{generation_id}/refund"
    at_threshold = await api.post(refund, "support", {"reason": "r", "moments": THRESHOLD}, fresh_key())
    assert at_threshold.status_code == 201, at_threshold.text
    # What is left (700) is below the threshold: refunded at once.
    rest = await api.post(refund, "support", {"reason": "the rest"}, fresh_key())
    assert (rest.status_code, rest.json()["refunded"]) == (201, PRICE_1080P_15S - THRESHOLD)
    # The whole of a fresh one is above it: it waits.
    other = await delivered(api, pool, "u2", PRICE_1080P_15S)
    pending = await api.post(f"/v1/generations/{other}/refund", "support", {"reason": "broken video"}, fresh_key())
    assert pending.status_code == 202, pending.text
    approval_id = pending.json()["approval_id"]
    assert (await api.get(f"/v1/generations/{other}", "support")).json()["charged"] == PRICE_1080P_15S
    approved = await decide(api, approval_id, "approve", "bob")
    assert approved.status_code == 200, approved.text
    after = (await api.get(f"/v1/generations/{other}", "support")).json()
    assert (after["status"], after["charged"]) == ("refunded", 0)
    assert await available(api, "u2") == PRICE_1080P_15S


async def test_an_approved_refund_that_no_longer_fits_is_refused_and_stays_pending(
    api: Api, pool: asyncpg.Pool
) -> None:
    generation_id = await delivered(api, pool, "u1", PRICE_1080P_15S)
    pending = await api.post(f"/v1/generations/{generation_id}/refund", "support", {"reason": "broken"}, fresh_key())
    assert pending.status_code == 202, pending.text
    approval_id = pending.json()["approval_id"]
    # Meanwhile an admin refunds part of it: the approved refund of everything no longer fits.
    by_admin = await api.post(
        f"/v1/generations/{generation_id}/refund", "admin", {"reason": "r", "moments": 1}, fresh_key()
    )
    assert by_admin.status_code == 201, by_admin.text
    problem(await decide(api, approval_id, "approve", "bob"), 409, "not_refundable")
    assert (await api.get("/v1/approvals", "bob", status="pending")).json()["items"][0]["id"] == approval_id
    assert (await decide(api, approval_id, "reject", "bob", "superseded")).status_code == 200
