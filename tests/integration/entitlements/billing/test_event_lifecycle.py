"""Every stored Stripe event ends: applied, applied without effect, or failed after bounded attempts with
its reason. Failed events are listed (reconciliation, GET /v1/stripe/events, `moments stripe failed`),
counted in /metrics, and re-applied by an admin after a fix (POST …/reapply, `moments stripe reapply`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from entitlements.billing import handlers
from tests.support.billing import (
    assert_reconciled,
    available,
    delivered,
    event_row,
    metric,
    mismatches,
    sweep,
    transactions_of,
)
from tests.support.http import Api
from tests.support.stripe_fake import deliver, link_customer, stripe_api_for
from tests.support.stripe_payloads import VERSIONS, checkout_completed_event, invoice_paid_event, subscription_event

ATTEMPTS_MAX = 3
MOMENTS_COMMAND = Path(sys.executable).parent / "moments"
CLI_TIMEOUT_S = 60


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url, event_attempts_max=ATTEMPTS_MAX) as client:
        yield client


def session(version: str = VERSIONS[0], **fields: Any) -> dict[str, Any]:
    return checkout_completed_event(version=version, **({"user_id": "u1"} | fields))


NEVER_APPLICABLE = [
    pytest.param({"amount_total": -999}, "amount_total", id="negative-amount_total"),
    pytest.param({"user_id": "a:b"}, "is not a valid user id", id="malformed-metadata.user_id"),
    pytest.param({"payment_intent": ""}, "payment_intent", id="empty-payment_intent"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("change", "reason"), NEVER_APPLICABLE)
async def test_an_event_that_can_never_apply_ends_failed_at_once_with_its_reason(
    api: Api, pool: asyncpg.Pool, version: str, change: dict[str, Any], reason: str
) -> None:
    event = session(version, **change)
    body = await delivered(api, event)  # 200: stored and ended; Stripe has nothing to retry
    assert body["status"] == "failed"
    row = await event_row(pool, event["id"])
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert row["failed_at"] is not None
    assert reason in row["last_error"]
    assert await transactions_of(pool, event["id"]) == []
    assert await mismatches(api) == [("event_failed", event["id"])]
    # Stripe's redelivery answers the same, and does not try again.
    assert (await delivered(api, event))["status"] == "failed"
    assert (await event_row(pool, event["id"]))["attempts"] == 1


async def test_an_unknown_pack_is_retried_a_bounded_number_of_times_then_fails(api: Api, pool: asyncpg.Pool) -> None:
    event = session(pack="pack_nope")
    assert (await delivered(api, event, status=202))["status"] == "pending"
    for attempt in range(2, ATTEMPTS_MAX + 1):
        await sweep(api, pool)
        assert (await event_row(pool, event["id"]))["attempts"] == attempt
    row = await event_row(pool, event["id"])
    assert row["state"] == "failed"
    assert "pack pack_nope is not in pricing/catalog.toml" in row["last_error"]
    await sweep(api, pool)
    assert (await event_row(pool, event["id"]))["attempts"] == ATTEMPTS_MAX


async def test_a_failure_that_is_not_the_events_fault_is_retried_then_ends_failed(
    api: Api, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def database_went_away(context: Any) -> handlers.Effect:
        raise ConnectionResetError("the database went away")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", database_went_away)
    event = invoice_paid_event(user_id="u1")
    response = await deliver(api, event)
    assert response.status_code == 503  # Stripe redelivers; the sweeper retries too
    assert response.json()["code"] == "unavailable"
    for _ in range(ATTEMPTS_MAX - 1):
        await sweep(api, pool)
    row = await event_row(pool, event["id"])
    assert (row["state"], row["attempts"]) == ("failed", ATTEMPTS_MAX)
    assert "ConnectionResetError: the database went away" in row["last_error"]


async def test_failed_events_are_listed_counted_and_reapplied_by_an_admin_after_the_fix(
    api: Api, pool: asyncpg.Pool
) -> None:
    first = session(customer="cus_a", user_id=None, payment_intent="pi_a")
    second = session(customer="cus_b", user_id=None, payment_intent="pi_b")
    for event in (first, second):
        assert (await delivered(api, event, status=202))["status"] == "pending"
    assert await metric(api, 'moments_stripe_events{state="pending"}') == 2.0
    for _ in range(ATTEMPTS_MAX - 1):
        await sweep(api, pool)
    assert await metric(api, 'moments_stripe_events{state="failed"}') == 2.0
    assert await metric(api, 'moments_stripe_events{state="pending"}') == 0.0
    page = await api.get("/v1/stripe/events", "finance", state="failed", limit=1)
    assert page.status_code == 200, page.text
    listed = page.json()
    rest = (await api.get("/v1/stripe/events", "finance", state="failed", cursor=listed["next_cursor"])).json()
    assert rest["next_cursor"] is None
    (one,), (other,) = listed["items"], rest["items"]
    assert {one["id"], other["id"]} == {first["id"], second["id"]}
    assert {one["last_error"][:38], other["last_error"][:38]} == {
        "unknown buyer: customer cus_a has no s",
        "unknown buyer: customer cus_b has no s",
    }
    assert sorted(await mismatches(api)) == sorted([("event_failed", first["id"]), ("event_failed", second["id"])])
    # The fix: the customers are linked; an admin re-applies each; both end applied, credited once.
    await link_customer(pool, "cus_a", "u1")
    await link_customer(pool, "cus_b", "u2")
    for event in (first, second):
        response = await api.post(f"/v1/stripe/events/{event['id']}/reapply", "admin", None)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "applied"
    assert (await available(api, "u1"), await available(api, "u2")) == (1000, 1000)
    assert await metric(api, 'moments_stripe_events{state="failed"}') == 0.0
    # Re-applying an applied event is refused and changes nothing.
    again = await api.post(f"/v1/stripe/events/{first['id']}/reapply", "admin", None)
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"
    assert await available(api, "u1") == 1000
    await assert_reconciled(api)


async def test_reapplying_at_once_credits_once(api: Api, pool: asyncpg.Pool) -> None:
    event = session(customer="cus_late", user_id=None)
    await delivered(api, event, status=202)
    await link_customer(pool, "cus_late", "u1")
    path = f"/v1/stripe/events/{event['id']}/reapply"
    responses = await asyncio.gather(*(api.post(path, "admin", None) for _ in range(3)))
    assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    assert await available(api, "u1") == 1000
    assert len(await transactions_of(pool, event["id"])) == 1
    await assert_reconciled(api)


async def test_reapply_and_the_event_endpoints_refuse_what_they_should(api: Api) -> None:
    assert (await api.post("/v1/stripe/events/evt_unknown/reapply", "admin", None)).status_code == 404
    assert (await api.get("/v1/stripe/events/evt_unknown", "finance")).status_code == 404
    assert (await api.post("/v1/stripe/events/evt_x/reapply", "finance", None)).status_code == 403
    assert (await api.post("/v1/stripe/events/evt_x/reapply", "support", None)).status_code == 403
    assert (await api.get("/v1/stripe/events", "service", state="failed")).status_code == 403
    bad_id = await api.post("/v1/stripe/events/evt%00x/reapply", "admin", None)
    assert bad_id.status_code in (404, 422), bad_id.text
    assert (await api.get("/v1/stripe/events", "finance", state="applied")).status_code == 422
    assert (await api.get("/v1/stripe/events", "finance", state="failed", cursor="forged")).status_code == 422


async def test_an_applied_event_is_shown_as_it_ended(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    event = subscription_event()
    await delivered(api, event)
    shown = (await api.get(f"/v1/stripe/events/{event['id']}", "finance")).json()
    assert (shown["state"], shown["attempts"], shown["type"]) == ("applied", 1, "customer.subscription.updated")
    assert shown["outcome"] == "u1 is PREMIUM (subscription sub_1 active)"


# --- the command line --------------------------------------------------------------------------------------


def moments(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")} | {
        "DATABASE_URL": database_url,
        "STRIPE_EVENT_ATTEMPTS_MAX": str(ATTEMPTS_MAX),
    }
    return subprocess.run(
        [str(MOMENTS_COMMAND), *args], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )


async def test_the_command_lists_failed_events_and_reapplies_them(
    api: Api, pool: asyncpg.Pool, database_url: str
) -> None:
    event = session(customer="cus_cli", user_id=None)
    await delivered(api, event, status=202)
    for _ in range(ATTEMPTS_MAX - 1):
        await sweep(api, pool)
    listed = await asyncio.to_thread(moments, "stripe", "failed", database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    assert event["id"] in listed.stdout
    assert "unknown buyer: customer cus_cli" in listed.stdout
    assert "1 failed Stripe event(s)" in listed.stdout
    # Before the fix it waits again, with a fresh set of attempts (exit 1); after it, it applies (exit 0).
    still = await asyncio.to_thread(moments, "stripe", "reapply", event["id"], database_url=database_url)
    assert still.returncode == 1
    assert f"{event['id']}: pending (unknown buyer" in still.stdout
    assert (await event_row(pool, event["id"]))["attempts"] == 1
    await link_customer(pool, "cus_cli", "u1")
    done = await asyncio.to_thread(moments, "stripe", "reapply", event["id"], database_url=database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{event['id']}: applied" in done.stdout
    row = await event_row(pool, event["id"])
    assert row["reapplied_by"].startswith("cli:")
    assert await available(api, "u1") == 1000
    unknown = await asyncio.to_thread(moments, "stripe", "reapply", "evt_nowhere", database_url=database_url)
    assert unknown.returncode == 1
    assert "no Stripe event evt_nowhere is stored" in unknown.stderr
    await assert_reconciled(api)


async def test_the_events_page_takes_its_limit_at_and_not_past_page_size_max(api: Api) -> None:
    page_size_max = api.client.app.state.settings.api.page_size_max
    at = await api.get("/v1/stripe/events", "finance", state="pending", limit=page_size_max)
    assert at.status_code == 200, at.text
    past = await api.get("/v1/stripe/events", "finance", state="pending", limit=page_size_max + 1)
    assert past.status_code == 422
    assert past.json()["errors"][0]["field"] == "limit"
