"""POST /v1/stripe/webhook against real PostgreSQL: signatures, storage, every event type, duplicates,
concurrency, ordering, failures and retries. Events are signed with a test secret exactly as Stripe signs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import ledger
from entitlements.billing import handlers
from tests.support.billing import (
    assert_reconciled,
    delivered,
    entitlements,
    event_row,
    mismatches,
    sweep,
    transactions_of,
)
from tests.support.http import Api
from tests.support.stripe_fake import WEBHOOK_SECRET, deliver, link_customer, sign, stripe_api_for
from tests.support.stripe_payloads import (
    CURRENT,
    LEGACY,
    charge_refunded_event,
    checkout_completed_event,
    dispute_event,
    invoice_paid_event,
    now_s,
    subscription_event,
)
from tests.support.stripe_payloads import (
    event as stripe_event,
)


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url) as client:
        yield client


async def one(pool: asyncpg.Pool, query: str, *args: Any) -> asyncpg.Record:
    row = await pool.fetchrow(query, *args)
    assert row is not None, query
    return row


async def buy_pack(api: Api, pool: asyncpg.Pool, user: str, **options: Any) -> dict[str, Any]:
    event = checkout_completed_event(user_id=user, **options)
    body = await delivered(api, event)
    assert body["status"] == "applied", body
    return event


# --- signatures --------------------------------------------------------------------------------------------


async def test_bad_or_missing_signature_is_400_and_stores_nothing(api: Api, pool: asyncpg.Pool) -> None:
    event = invoice_paid_event(user_id="u1")
    payload = json.dumps(event)
    attempts = [
        await deliver(api, event, signature=None),
        await deliver(api, event, signature=""),
        await deliver(api, event, signature="garbage"),
        await deliver(api, event, signature="t=123"),
        await deliver(api, event, secret="whsec_someone_else"),
        # Signed for one body, sent with another.
        await api.client.post(
            "/v1/stripe/webhook",
            content=payload.replace("u1", "u2").encode(),
            headers={"stripe-signature": sign(payload), "content-type": "application/json"},
        ),
    ]
    for response in attempts:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "invalid_signature"
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0


async def test_a_signature_older_than_the_tolerance_is_refused(api: Api, pool: asyncpg.Pool) -> None:
    tolerance_s = 300  # STRIPE_WEBHOOK_TOLERANCE_S
    old = await deliver(api, invoice_paid_event(user_id="u1"), timestamp=now_s() - tolerance_s - 5)
    assert old.status_code == 400
    assert old.json()["code"] == "invalid_signature"
    assert "tolerance" in old.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
    # Just inside the tolerance is accepted.
    recent = await deliver(api, invoice_paid_event(user_id="u1"), timestamp=now_s() - tolerance_s + 30)
    assert recent.status_code == 200, recent.text


async def test_a_signed_body_that_is_not_an_event_is_422_and_not_stored(api: Api, pool: asyncpg.Pool) -> None:
    payload = json.dumps({"hello": "world"})
    response = await api.client.post(
        "/v1/stripe/webhook", content=payload.encode(), headers={"stripe-signature": sign(payload)}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_without_a_webhook_secret_the_endpoint_is_503(database_url: str) -> None:
    from tests.support.http import api_for

    async with api_for(database_url) as api:
        response = await deliver(api, invoice_paid_event(user_id="u1"))
    assert response.status_code == 503
    assert response.json()["code"] == "stripe_not_configured"


# --- storage, unknown types, duplicates ---------------------------------------------------------------------


async def test_unknown_event_types_are_stored_and_ignored(api: Api, pool: asyncpg.Pool) -> None:
    unknown = stripe_event("payment_method.attached", {"id": "pm_1", "object": "payment_method"})
    body = await delivered(api, unknown)
    assert body["status"] == "applied_without_effect"
    row = await event_row(pool, unknown["id"])
    assert row["type"] == "payment_method.attached"
    assert row["applied_at"] is not None
    assert row["created"] == datetime.fromtimestamp(unknown["created"], UTC)
    assert json.loads(row["payload"])["data"]["object"]["id"] == "pm_1"
    again = await delivered(api, unknown)
    assert again["status"] == "duplicate"
    await assert_reconciled(api)


async def test_the_same_event_three_times_in_a_row_credits_once(api: Api, pool: asyncpg.Pool) -> None:
    event = invoice_paid_event(user_id="u1")
    statuses = [(await delivered(api, event))["status"] for _ in range(3)]
    assert statuses == ["applied", "duplicate", "duplicate"]
    assert len(await transactions_of(pool, event["id"])) == 1
    assert (await entitlements(api, "u1"))["balance"]["available"] == 3000
    assert await pool.fetchval("SELECT attempts FROM stripe_events WHERE id = $1", event["id"]) == 1
    await assert_reconciled(api)


@pytest.mark.parametrize("kind", ["invoice", "checkout"])
async def test_the_same_event_three_times_at_once_credits_once(api: Api, pool: asyncpg.Pool, kind: str) -> None:
    event = invoice_paid_event(user_id="u1") if kind == "invoice" else checkout_completed_event(user_id="u1")
    responses = await asyncio.gather(*(deliver(api, event) for _ in range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert sorted(r.json()["status"] for r in responses) == ["applied", "duplicate", "duplicate"]
    assert len(await transactions_of(pool, event["id"])) == 1
    assert (await entitlements(api, "u1"))["balance"]["available"] == (3000 if kind == "invoice" else 1000)
    await assert_reconciled(api)


async def test_two_events_about_one_invoice_credit_it_once(api: Api, pool: asyncpg.Pool) -> None:
    first = invoice_paid_event(invoice_id="in_same", user_id="u1")
    second = json.loads(json.dumps(first)) | {"id": "evt_other_delivery_of_in_same"}
    assert (await delivered(api, first))["status"] == "applied"
    body = await delivered(api, second)
    assert body["status"] == "applied_without_effect"
    assert first["id"] in body["detail"]
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 1
    await assert_reconciled(api)


# --- subscriptions ---------------------------------------------------------------------------------------


async def test_subscription_lifecycle_sets_and_drops_the_tier(api: Api, pool: asyncpg.Pool) -> None:
    t = now_s()
    created = subscription_event(
        "customer.subscription.created", status="incomplete", user_id="u1", customer="cus_u1", created=t
    )
    assert (await delivered(api, created))["status"] == "applied"
    assert (await entitlements(api, "u1"))["tier"] == "FREE"
    # The metadata taught the service whose customer this is.
    assert await pool.fetchval("SELECT user_id FROM stripe_customers WHERE customer_id = 'cus_u1'") == "u1"
    await delivered(api, subscription_event(customer="cus_u1", created=t + 1))
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"
    await delivered(api, subscription_event(customer="cus_u1", price="price_ultimate_monthly", created=t + 2))
    assert (await entitlements(api, "u1"))["tier"] == "ULTIMATE"
    row = await one(pool, "SELECT * FROM subscriptions WHERE user_id = 'u1'")
    assert row["source"] == "stripe"
    assert row["stripe_subscription_id"] == "sub_1"
    assert row["stripe_event_created"] == datetime.fromtimestamp(t + 2, UTC)
    await delivered(api, subscription_event("customer.subscription.deleted", customer="cus_u1", created=t + 3))
    result = await entitlements(api, "u1")
    assert result["tier"] == "FREE"
    assert result["video"] == {"allowed": False, "reason": "tier_required"}
    await assert_reconciled(api)


@pytest.mark.parametrize(
    ("status", "tier"),
    [
        ("active", "PREMIUM"),
        ("trialing", "PREMIUM"),
        ("past_due", "PREMIUM"),
        ("unpaid", "FREE"),
        ("canceled", "FREE"),
        ("incomplete", "FREE"),
        ("incomplete_expired", "FREE"),
        ("paused", "FREE"),
    ],
)
async def test_the_status_decides_the_tier(api: Api, pool: asyncpg.Pool, status: str, tier: str) -> None:
    await link_customer(pool, "cus_1", "u1")
    await delivered(api, subscription_event(status=status, version=LEGACY))
    assert (await entitlements(api, "u1"))["tier"] == tier


async def test_payment_failure_drops_the_tier_when_stripe_gives_up(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    t = now_s()
    await delivered(api, subscription_event(created=t))
    await delivered(api, subscription_event(status="past_due", created=t + 1))
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"  # Stripe is still retrying the payment
    await delivered(api, subscription_event(status="unpaid", created=t + 2))
    assert (await entitlements(api, "u1"))["tier"] == "FREE"


async def test_subscription_events_out_of_order_do_not_win(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    t = now_s()
    newer = subscription_event(price="price_ultimate_monthly", created=t + 10)
    older = subscription_event(price="price_premium_monthly", created=t)
    await delivered(api, newer)
    body = await delivered(api, older)
    assert body["status"] == "applied_without_effect"
    assert "older" in body["detail"]
    assert (await entitlements(api, "u1"))["tier"] == "ULTIMATE"
    # A deletion, then a stale update from before it: the subscription stays ended.
    await delivered(api, subscription_event("customer.subscription.deleted", created=t + 20))
    assert (await delivered(api, subscription_event(created=t + 15)))["status"] == "applied_without_effect"
    assert (await entitlements(api, "u1"))["tier"] == "FREE"
    # An ended subscription never comes back, even with a later timestamp.
    assert (await delivered(api, subscription_event(created=t + 30)))["status"] == "applied_without_effect"
    assert (await entitlements(api, "u1"))["tier"] == "FREE"
    # A new subscription does.
    await delivered(api, subscription_event(subscription_id="sub_2", created=t + 40))
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"
    await assert_reconciled(api)


async def test_same_second_events_keep_the_later_lifecycle_stage(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    t = now_s()
    await delivered(api, subscription_event(status="active", created=t))
    # `created` (incomplete) of the same second arrives after `updated` (active): Stripe's clock has
    # one-second resolution, so the earlier stage must not win the tie.
    late = subscription_event("customer.subscription.created", status="incomplete", created=t)
    assert (await delivered(api, late))["status"] == "applied_without_effect"
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"


async def test_an_old_subscription_ending_does_not_take_the_new_ones_tier(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    t = now_s()
    await delivered(api, subscription_event(subscription_id="sub_old", created=t))
    await delivered(api, subscription_event(subscription_id="sub_new", price="price_ultimate_monthly", created=t + 5))
    ended = subscription_event("customer.subscription.deleted", subscription_id="sub_old", created=t + 10)
    assert (await delivered(api, ended))["status"] == "applied_without_effect"
    assert (await entitlements(api, "u1"))["tier"] == "ULTIMATE"


async def test_cancel_at_period_end_keeps_the_tier_until_the_period_ends(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    t = now_s()
    period_end = t + 3600
    await delivered(api, subscription_event(period_end=period_end, created=t))
    await delivered(api, subscription_event(period_end=period_end, cancel_at_period_end=True, created=t + 1))
    row = await one(pool, "SELECT * FROM subscriptions WHERE user_id = 'u1'")
    assert row["cancel_at_period_end"] is True
    assert row["current_period_end"] == datetime.fromtimestamp(period_end, UTC)
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"
    # The period ends (moved into the past, as time would): FREE, before Stripe's deletion arrives.
    await pool.execute("UPDATE subscriptions SET current_period_end = now() - interval '1 second'")
    result = await entitlements(api, "u1")
    assert result["tier"] == "FREE"
    assert result["video"]["reason"] == "tier_required"
    generation = await api.post(
        "/v1/users/u1/generations",
        "service",
        {"image_id": "img", "prompt": "p", "mode": "advanced", "resolution": "480p", "duration_s": 4},
        "gen-after-cancel",
    )
    assert generation.status_code == 403
    assert generation.json()["code"] == "tier_required"
    # Reactivated before the end (cancel_at_period_end back to false): the tier is kept.
    await pool.execute("UPDATE subscriptions SET current_period_end = now() + interval '1 hour'")
    await delivered(api, subscription_event(period_end=period_end, created=t + 2))
    await pool.execute("UPDATE subscriptions SET current_period_end = now() - interval '1 second'")
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"
    await assert_reconciled(api)


async def test_a_manual_tier_is_not_ended_by_an_old_stripe_period(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    await delivered(api, subscription_event(cancel_at_period_end=True, period_end=now_s() + 3600))
    await pool.execute("UPDATE subscriptions SET current_period_end = now() - interval '1 second'")
    assert (await entitlements(api, "u1"))["tier"] == "FREE"
    response = await api.put("/v1/users/u1/subscription", "admin", {"tier": "ULTIMATE"})
    assert response.status_code == 200
    assert (await entitlements(api, "u1"))["tier"] == "ULTIMATE"


async def test_an_abandoned_checkout_does_not_take_a_manual_tier_away(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    assert (await api.put("/v1/users/u1/subscription", "admin", {"tier": "PREMIUM"})).status_code == 200
    started = subscription_event("customer.subscription.created", status="incomplete")
    assert (await delivered(api, started))["status"] == "applied_without_effect"
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"
    # A subscription that does give a tier takes over from the manual one.
    await delivered(api, subscription_event(price="price_ultimate_monthly"))
    assert (await entitlements(api, "u1"))["tier"] == "ULTIMATE"


async def test_a_price_not_in_the_catalog_waits(api: Api, pool: asyncpg.Pool) -> None:
    event = subscription_event(price="price_unknown", user_id="u1")
    body = await delivered(api, event, status=202)
    assert body["status"] == "pending"
    row = await event_row(pool, event["id"])
    assert row["applied_at"] is None
    assert "price_unknown" in row["last_error"]
    assert (await entitlements(api, "u1"))["tier"] == "FREE"
    # Not a money event, but a waiting one: reconciliation lists it all the same.
    assert await mismatches(api) == [("event_not_applied", event["id"])]


# --- invoices: the allowance ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [CURRENT, LEGACY])
async def test_invoice_paid_grants_the_periods_allowance_as_an_expiring_lot(
    api: Api, pool: asyncpg.Pool, version: str
) -> None:
    await link_customer(pool, "cus_1", "u1")
    period_end = now_s() + 3 * 86_400
    event = invoice_paid_event(price="price_ultimate_monthly", period_end=period_end, version=version)
    body = await delivered(api, event)
    assert body["status"] == "applied"
    (transaction,) = await transactions_of(pool, event["id"])
    assert transaction["kind"] == "subscription_grant"
    assert transaction["idempotency_key"] == f"stripe:invoice:{event['data']['object']['id']}"
    assert transaction["actor"] == "stripe:webhook"
    lot = await one(pool, "SELECT * FROM ledger_lots WHERE source_transaction_id = $1", transaction["id"])
    assert lot["category"] == "subscription"
    assert lot["amount"] == 10_000
    assert lot["expires_at"] == datetime.fromtimestamp(period_end, UTC)
    row = await event_row(pool, event["id"])
    assert (row["ledger_kind"], row["ledger_moments"]) == ("subscription_grant", 10_000)
    await assert_reconciled(api)


async def test_invoices_that_are_not_a_subscriptions_grant_nothing(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    one_off = invoice_paid_event(version=LEGACY, subscription_id=None)
    assert (await delivered(api, one_off))["status"] == "applied_without_effect"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0
    assert (await event_row(pool, one_off["id"]))["state"] == "applied_without_effect"


async def test_an_allowance_expires_at_period_end_with_the_spent_part_kept(
    api: Api, pool: asyncpg.Pool, database_url: str
) -> None:
    await link_customer(pool, "cus_1", "u1")
    period_end = now_s() + 3600
    await delivered(api, invoice_paid_event(period_end=period_end))  # 3000 subscription moments
    await buy_pack(api, pool, "u1")  # 1000 paid moments, no expiry
    async with ledger.Ledger(pool) as led:
        hold = await led.submit(
            ledger.Hold(
                key="spend-hold",
                user_id="u1",
                actor="test",
                amount=1200,
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )
        assert hold.hold_id is not None
        await led.submit(ledger.Capture(key="spend-capture", user_id="u1", actor="test", hold_id=hold.hold_id))
        # The hold drew the expiring allowance first: 1800 of it is left, and the 1000 paid moments.
        assert (await led.balances("u1")).available == 2800
        # Not yet due: nothing expires.
        assert await led.expire_due_lots(datetime.now(UTC)) == 0
    assert await pool.fetchval("SELECT expires_at FROM ledger_lots WHERE category = 'subscription'") == (
        datetime.fromtimestamp(period_end, UTC)
    )
    # The period ends (its end moved into the past, as time would): the sweeper expires what is left.
    await pool.execute(
        "UPDATE ledger_lots SET expires_at = now() - interval '1 second' WHERE category = 'subscription'"
    )
    assert (await sweep(api, pool))["lot_users"] == 1
    assert (await entitlements(api, "u1"))["balance"]["available"] == 1000
    expired = await pool.fetchval(
        "SELECT sum(p.amount) FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id "
        "WHERE a.code = 'system:expired'"
    )
    assert expired == 1800
    await assert_reconciled(api)


async def test_an_allowance_whose_period_already_ended_is_not_granted(api: Api, pool: asyncpg.Pool) -> None:
    await link_customer(pool, "cus_1", "u1")
    body = await delivered(api, invoice_paid_event(period_end=now_s() - 60))
    assert body["status"] == "applied_without_effect"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0


# --- packs, refunds, disputes ---------------------------------------------------------------------------


async def test_checkout_completed_credits_a_paid_lot_and_records_the_purchase(api: Api, pool: asyncpg.Pool) -> None:
    event = await buy_pack(api, pool, "u1", pack="pack_5000", amount_total=3999, payment_intent="pi_5000")
    (transaction,) = await transactions_of(pool, event["id"])
    assert transaction["kind"] == "purchase"
    purchase = await one(pool, "SELECT * FROM stripe_purchases")
    assert purchase["checkout_session_id"] == event["data"]["object"]["id"]
    assert (purchase["user_id"], purchase["pack_id"], purchase["moments"]) == ("u1", "pack_5000", 5000)
    assert (purchase["payment_intent_id"], purchase["amount_paid"], purchase["currency"]) == ("pi_5000", 3999, "usd")
    assert purchase["transaction_id"] == transaction["id"]
    lot = await one(pool, "SELECT * FROM ledger_lots WHERE id = $1", purchase["lot_id"])
    assert (lot["category"], lot["amount"], lot["expires_at"]) == ("paid", 5000, None)
    assert (await entitlements(api, "u1"))["balance"]["available"] == 5000
    await assert_reconciled(api)


async def test_a_pack_is_found_by_its_line_price_without_metadata(api: Api, pool: asyncpg.Pool) -> None:
    event = checkout_completed_event(user_id="u1", pack=None)
    event["data"]["object"]["line_items"] = {"data": [{"price": {"id": "price_pack_12000"}}]}
    assert (await delivered(api, event))["status"] == "applied"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 12_000


async def test_an_unpaid_checkout_waits_for_async_payment_succeeded(api: Api, pool: asyncpg.Pool) -> None:
    unpaid = checkout_completed_event(user_id="u1", payment_status="unpaid", session_id="cs_async")
    assert (await delivered(api, unpaid))["status"] == "applied_without_effect"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    paid = checkout_completed_event(
        user_id="u1", session_id="cs_async", event_type="checkout.session.async_payment_succeeded"
    )
    assert (await delivered(api, paid))["status"] == "applied"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 1000
    await assert_reconciled(api)


async def test_a_subscription_checkout_only_teaches_the_customer(api: Api, pool: asyncpg.Pool) -> None:
    event = checkout_completed_event(user_id="u1", customer="cus_sub", mode="subscription", pack=None)
    assert (await delivered(api, event))["status"] == "applied_without_effect"
    assert await pool.fetchval("SELECT user_id FROM stripe_customers WHERE customer_id = 'cus_sub'") == "u1"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0


async def test_a_partial_refund_claws_back_proportionally_then_the_rest(api: Api, pool: asyncpg.Pool) -> None:
    await buy_pack(api, pool, "u1")  # 1000 moments for 999 cents
    first = charge_refunded_event(amount_refunded=333)
    body = await delivered(api, first)
    assert body["status"] == "applied"
    (clawback,) = await transactions_of(pool, first["id"])
    assert clawback["kind"] == "clawback"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 1000 - 333
    purchase = await one(pool, "SELECT * FROM stripe_purchases")
    assert (purchase["charge_id"], purchase["amount_refunded"], purchase["refund_moments"]) == ("ch_1", 333, 333)
    # The same cumulative amount again (another event): nothing more.
    assert (await delivered(api, charge_refunded_event(amount_refunded=333)))["status"] == "applied_without_effect"
    # The rest: amount_refunded is cumulative, so only the difference is taken.
    rest = charge_refunded_event(amount_refunded=999)
    await delivered(api, rest)
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    assert await pool.fetchval("SELECT refund_moments FROM stripe_purchases") == 1000
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback'") == 2
    await assert_reconciled(api)


async def test_a_refund_of_spent_moments_creates_debt(api: Api, pool: asyncpg.Pool) -> None:
    await buy_pack(api, pool, "u1")
    async with ledger.Ledger(pool) as led:
        hold = await led.submit(
            ledger.Hold(
                key="h", user_id="u1", actor="test", amount=900, expires_at=datetime.now(UTC) + timedelta(minutes=5)
            )
        )
        assert hold.hold_id is not None
        await led.submit(ledger.Capture(key="c", user_id="u1", actor="test", hold_id=hold.hold_id))
    await delivered(api, charge_refunded_event(amount_refunded=999))
    result = await entitlements(api, "u1")
    assert result["balance"]["available"] == 0
    assert result["owed"] == 900
    assert result["video"]["reason"] in {"tier_required", "in_debt"}
    await assert_reconciled(api)


async def test_a_dispute_lost_keeps_the_clawback(api: Api, pool: asyncpg.Pool) -> None:
    await buy_pack(api, pool, "u1")
    opened = dispute_event("charge.dispute.created")
    assert (await delivered(api, opened))["status"] == "applied"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    assert (await one(pool, "SELECT status, moments FROM stripe_disputes"))["moments"] == 1000
    closed = dispute_event("charge.dispute.closed", status="lost")
    assert (await delivered(api, closed))["status"] == "applied"
    assert await transactions_of(pool, closed["id"]) == []
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    assert await pool.fetchval("SELECT status FROM stripe_disputes") == "lost"
    await assert_reconciled(api)


async def test_a_dispute_won_gives_the_moments_back(api: Api, pool: asyncpg.Pool) -> None:
    await buy_pack(api, pool, "u1")
    await delivered(api, charge_refunded_event(amount_refunded=250))  # 250 moments refunded first
    await delivered(api, dispute_event("charge.dispute.created"))  # the remaining 750
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    closed = dispute_event("charge.dispute.closed", status="won")
    assert (await delivered(api, closed))["status"] == "applied"
    (reversal,) = await transactions_of(pool, closed["id"])
    assert reversal["kind"] == "clawback_reversal"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 750
    purchase = await one(pool, "SELECT * FROM stripe_purchases")
    assert (purchase["refund_moments"], purchase["dispute_moments"]) == (250, 0)
    # Closing twice changes nothing.
    assert (await delivered(api, dispute_event("charge.dispute.closed", status="won")))[
        "status"
    ] == "applied_without_effect"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 750
    await assert_reconciled(api)


async def test_a_refund_during_a_dispute_is_not_given_back_when_the_dispute_is_won(
    api: Api, pool: asyncpg.Pool
) -> None:
    await buy_pack(api, pool, "u1")
    await delivered(api, dispute_event("charge.dispute.created"))  # all 1000 held back
    await delivered(api, charge_refunded_event(amount_refunded=400))  # 400 of them now count as refunded
    assert await pool.fetchval("SELECT moments FROM stripe_disputes") == 600
    await delivered(api, dispute_event("charge.dispute.closed", status="won"))
    assert (await entitlements(api, "u1"))["balance"]["available"] == 600
    await assert_reconciled(api)


async def test_dispute_closed_before_created_is_handled(api: Api, pool: asyncpg.Pool) -> None:
    await buy_pack(api, pool, "u1")
    await delivered(api, dispute_event("charge.dispute.closed", status="lost"))
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    assert (await delivered(api, dispute_event("charge.dispute.created")))["status"] == "applied_without_effect"
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback'") == 1
    await assert_reconciled(api)


# --- waiting, failures, retries -------------------------------------------------------------------------------


async def test_an_unknown_customer_is_stored_with_its_error_then_applied_by_the_sweeper(
    api: Api, pool: asyncpg.Pool
) -> None:
    event = invoice_paid_event(customer="cus_unknown")
    body = await delivered(api, event, status=202)
    assert body["status"] == "pending"
    row = await event_row(pool, event["id"])
    assert row["applied_at"] is None
    assert row["attempts"] == 1
    assert "cus_unknown" in row["last_error"]
    assert row["next_attempt_at"] > datetime.now(UTC)
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0
    # Still unknown: the sweeper tries and fails again.
    assert (await sweep(api, pool))["stripe_events"] == 0
    assert (await event_row(pool, event["id"]))["attempts"] == 2
    await link_customer(pool, "cus_unknown", "u9")
    assert (await sweep(api, pool))["stripe_events"] == 1
    row = await event_row(pool, event["id"])
    assert row["applied_at"] is not None
    assert row["last_error"] is None
    assert (await entitlements(api, "u9"))["balance"]["available"] == 3000
    await assert_reconciled(api)


async def test_a_refund_before_its_purchase_waits_and_is_applied_after_it(api: Api, pool: asyncpg.Pool) -> None:
    refund = charge_refunded_event(amount_refunded=999, payment_intent="pi_early", charge_id="ch_early")
    assert (await delivered(api, refund, status=202))["status"] == "pending"
    await buy_pack(api, pool, "u1", payment_intent="pi_early")
    assert (await entitlements(api, "u1"))["balance"]["available"] == 1000
    # Stripe's redelivery applies it too (as the sweeper would).
    assert (await delivered(api, refund))["status"] == "applied"
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    await assert_reconciled(api)


async def test_a_failure_while_applying_leaves_the_event_stored_and_nothing_half_applied(
    api: Api, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await buy_pack(api, pool, "u1")
    real = handlers.HANDLERS["charge.refunded"]

    async def fails_after_the_ledger(context: Any) -> handlers.Effect:
        await real(context)  # the clawback is written in the event's transaction …
        raise ConnectionResetError("the database went away")  # … and rolled back with it

    monkeypatch.setitem(handlers.HANDLERS, "charge.refunded", fails_after_the_ledger)
    event = charge_refunded_event(amount_refunded=999)
    response = await deliver(api, event)
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    row = await event_row(pool, event["id"])
    assert row["applied_at"] is None
    assert "ConnectionResetError" in row["last_error"]
    assert await transactions_of(pool, event["id"]) == []
    assert await pool.fetchval("SELECT refund_moments FROM stripe_purchases") == 0
    assert (await entitlements(api, "u1"))["balance"]["available"] == 1000
    assert await mismatches(api) == [("event_not_applied", event["id"])]
    monkeypatch.setitem(handlers.HANDLERS, "charge.refunded", real)
    # Retried by the sweeper (or Stripe's redelivery): applied once, completely.
    assert (await sweep(api, pool))["stripe_events"] == 1
    assert (await delivered(api, event))["status"] == "duplicate"
    assert len(await transactions_of(pool, event["id"])) == 1
    assert (await entitlements(api, "u1"))["balance"]["available"] == 0
    await assert_reconciled(api)


async def test_the_webhook_secret_is_what_signs(api: Api) -> None:
    # The test secret is the one the app was configured with (guards the helpers themselves).
    assert sign("x", secret=WEBHOOK_SECRET) != sign("x", secret="whsec_other")
