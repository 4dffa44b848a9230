"""Moment packs bought through Checkout sessions the service did not create (a Payment Link, a session made
in the dashboard): webhooks carry no line items, so the service retrieves them through the stripe library
from the fake Stripe, which answers as Stripe does. Both API versions; real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

import pricing
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
from tests.support.stripe_fake import FakeStripe, deliver, link_customer, stripe_api_for
from tests.support.stripe_payloads import CURRENT, VERSIONS, checkout_completed_event, unique

LINE_ITEMS = "/v1/checkout/sessions/{}/line_items"
ATTEMPTS_MAX = 3


@pytest.fixture
async def api(database_url: str, fake: FakeStripe) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url, fake=fake, event_attempts_max=ATTEMPTS_MAX) as client:
        yield client


def payment_link_session(version: str, **fields: object) -> dict[str, object]:
    """Completed through a Payment Link opened with ?client_reference_id=u1: no metadata, no customer."""
    options: dict[str, object] = {
        "pack": None,
        "customer": None,
        "client_reference_id": "u1",
        "payment_link": unique("plink"),
        "payment_intent": unique("pi"),
        "amount_total": 3999,
    }
    return checkout_completed_event(version=version, **(options | fields))


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_payment_link_session_is_credited_from_its_retrieved_line_items(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool, version: str
) -> None:
    event = payment_link_session(version)
    session_id = event["data"]["object"]["id"]  # type: ignore[index]
    assert "line_items" not in event["data"]["object"]  # type: ignore[operator]
    fake.sell(session_id, ("price_pack_5000", 1))
    body = await delivered(api, event)
    assert body["status"] == "applied", body
    assert await available(api, "u1") == 5000
    (call,) = fake.calls(LINE_ITEMS.format(session_id))
    assert call.method == "GET"
    assert call.stripe_version == CURRENT  # the pinned library's version, whatever the webhook's
    purchase = await pool.fetchrow("SELECT * FROM stripe_purchases WHERE checkout_session_id = $1", session_id)
    assert purchase is not None
    assert (purchase["user_id"], purchase["pack_id"], purchase["moments"], purchase["amount_paid"]) == (
        "u1",
        "pack_5000",
        5000,
        3999,
    )
    await assert_reconciled(api)


async def test_every_line_and_its_quantity_are_credited(api: Api, fake: FakeStripe) -> None:
    event = payment_link_session(CURRENT)
    fake.sell(event["data"]["object"]["id"], ("price_pack_1000", 3), ("price_pack_5000", 1))  # type: ignore[index]
    body = await delivered(api, event)
    assert body["detail"] == "credited 8000 paid moments (pack_1000 x3, pack_5000) to u1"
    assert await available(api, "u1") == 8000
    await assert_reconciled(api)


async def test_a_dashboard_session_credits_the_customers_user(api: Api, fake: FakeStripe, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_dash", "u7")
    event = payment_link_session(CURRENT, customer="cus_dash", client_reference_id=None, payment_link=None)
    fake.sell(event["data"]["object"]["id"], ("price_pack_1000", 1))  # type: ignore[index]
    assert (await delivered(api, event))["status"] == "applied"
    assert await available(api, "u7") == 1000
    await assert_reconciled(api)


async def test_the_same_session_delivered_at_once_and_by_two_event_types_credits_once(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    completed = payment_link_session(CURRENT)
    session = completed["data"]["object"]  # type: ignore[index]
    fake.sell(session["id"], ("price_pack_12000", 1))
    succeeded = checkout_completed_event(
        event_type="checkout.session.async_payment_succeeded",
        session_id=session["id"],
        pack=None,
        customer=None,
        client_reference_id="u1",
        payment_intent=session["payment_intent"],
    )
    responses = await asyncio.gather(*(deliver(api, e) for e in (completed, completed, completed, succeeded)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses.count("applied") == 1, statuses
    assert set(statuses) <= {"applied", "duplicate", "applied_without_effect"}
    assert await available(api, "u1") == 12_000
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'purchase'") == 1
    await assert_reconciled(api)


async def test_a_paid_session_matching_no_pack_is_a_mismatch_until_the_catalog_knows_it(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    event = payment_link_session(CURRENT)
    session_id = event["data"]["object"]["id"]  # type: ignore[index]
    fake.sell(session_id, ("price_tshirt", 1))
    body = await delivered(api, event, status=202)
    assert body["status"] == "pending"
    assert "price_tshirt match no moment pack" in body["detail"]
    assert await mismatches(api) == [("event_not_applied", event["id"])]
    # Retried by the sweeper, a bounded number of times, then it ends failed with its reason.
    for _ in range(ATTEMPTS_MAX - 1):
        await sweep(api, pool)
    row = await event_row(pool, str(event["id"]))
    assert (row["state"], row["attempts"]) == ("failed", ATTEMPTS_MAX)
    assert "price_tshirt" in row["last_error"]
    await sweep(api, pool)
    assert (await event_row(pool, str(event["id"])))["attempts"] == ATTEMPTS_MAX  # no longer retried
    assert await mismatches(api) == [("event_failed", event["id"])]
    assert await metric(api, 'moments_stripe_events{state="failed"}') == 1.0
    assert await available(api, "u1") == 0
    # The fix: the catalog learns the price (a pack sold through the link); an admin re-applies the event.
    state = api.client.app.state
    shirt = pricing.Pack(
        id="pack_tshirt", moments=700, stripe_price_id="price_tshirt", price_cents=3999, currency="usd"
    )
    state.catalog = pricing.Catalog(tiers=state.catalog.tiers, packs=(*state.catalog.packs, shirt))
    response = await api.post(f"/v1/stripe/events/{event['id']}/reapply", "admin", None)
    assert response.status_code == 200, response.text
    reapplied = response.json()
    assert (reapplied["state"], reapplied["attempts"]) == ("applied", 1)
    assert reapplied["reapplied_by"].startswith("key:")
    assert await available(api, "u1") == 700
    assert len(await transactions_of(pool, str(event["id"]))) == 1
    assert await metric(api, 'moments_stripe_events{state="failed"}') == 0.0
    await assert_reconciled(api)


async def test_a_buyer_the_service_cannot_name_is_a_mismatch_never_ignored(api: Api, fake: FakeStripe) -> None:
    event = payment_link_session(CURRENT, client_reference_id=None)
    fake.sell(event["data"]["object"]["id"], ("price_pack_1000", 1))  # type: ignore[index]
    body = await delivered(api, event, status=202)
    assert "unknown buyer" in body["detail"]
    assert await mismatches(api) == [("event_not_applied", event["id"])]


async def test_stripe_failing_the_retrieval_is_retried_by_the_library_then_by_the_sweeper(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    event = payment_link_session(CURRENT)
    session_id = event["data"]["object"]["id"]  # type: ignore[index]
    fake.sell(session_id, ("price_pack_1000", 1))
    # One 500 is retried by the stripe library itself (STRIPE_LOOKUP_RETRIES_MAX = 1).
    fake.fail_status, fake.fail_next = 500, 1
    assert (await delivered(api, event))["status"] == "applied"
    assert len(fake.calls(LINE_ITEMS.format(session_id))) == 2
    # Two in a row: the event waits, then the sweeper's attempt succeeds.
    second = payment_link_session(CURRENT)
    fake.sell(second["data"]["object"]["id"], ("price_pack_1000", 1))  # type: ignore[index]
    fake.fail_next = 2
    body = await delivered(api, second, status=202)
    assert "Stripe refused the line items" in body["detail"]
    assert await available(api, "u1") == 1000
    await sweep(api, pool)
    assert (await event_row(pool, str(second["id"])))["state"] == "applied"
    assert await available(api, "u1") == 2000
    await assert_reconciled(api)


async def test_a_session_stripe_does_not_know_waits_with_stripes_answer(api: Api, fake: FakeStripe) -> None:
    event = payment_link_session(CURRENT)
    body = await delivered(api, event, status=202)
    assert "No such checkout.session" in body["detail"]
    assert await mismatches(api) == [("event_not_applied", event["id"])]


async def test_without_an_api_key_a_session_made_elsewhere_waits(database_url: str) -> None:
    async with stripe_api_for(database_url) as api:
        body = await delivered(api, payment_link_session(CURRENT), status=202)
    assert "STRIPE_API_KEY is not set" in body["detail"]


async def test_a_session_of_this_services_own_needs_no_retrieval(api: Api, fake: FakeStripe) -> None:
    assert (await delivered(api, checkout_completed_event(user_id="u1", pack="pack_1000")))["status"] == "applied"
    assert fake.requests == []
    await assert_reconciled(api)
