"""GET /v1/reconciliation/stripe and the Stripe audit checks: clean, then with injected mismatches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import ledger
from tests.support.generations import assert_audit_ok
from tests.support.http import Api
from tests.support.stripe_fake import deliver, link_customer, stripe_api_for
from tests.support.stripe_payloads import (
    charge_refunded_event,
    checkout_completed_event,
    dispute_event,
    event,
    invoice_paid_event,
    subscription_event,
)


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url) as client:
        yield client


async def reconciliation(api: Api, **params: Any) -> dict[str, Any]:
    response = await api.get("/v1/reconciliation/stripe", "finance", **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def audit(api: Api) -> dict[str, bool]:
    response = await api.get("/v1/ledger/audit", "finance")
    assert response.status_code == 200
    return {check["name"]: check["ok"] for check in response.json()["checks"]}


async def some_stripe_history(api: Api, pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    await link_customer(pool, "cus_1", "u1")
    events = {
        "subscription": subscription_event(),
        "invoice": invoice_paid_event(),  # +3000 subscription_grant
        "checkout": checkout_completed_event(),  # +1000 purchase
        "refund": charge_refunded_event(amount_refunded=333),  # -333 clawback
        "dispute": dispute_event("charge.dispute.created"),  # -667 clawback
        "won": dispute_event("charge.dispute.closed", status="won"),  # +667 clawback_reversal
        "other": event("customer.updated", {"id": "cus_1", "object": "customer", "metadata": {}}),
    }
    for sent in events.values():
        response = await deliver(api, sent)
        assert response.status_code == 200, response.text
    return events


async def test_reconciliation_lists_every_money_event_beside_its_transaction(api: Api, pool: asyncpg.Pool) -> None:
    events = await some_stripe_history(api, pool)
    report = await reconciliation(api)
    assert report["ok"] is True, report["mismatches"]
    assert report["mismatches"] == []
    listed = {event["event_id"]: event for event in report["events"]}
    # Money events only: not the subscription update, not the customer update.
    money = ("invoice", "checkout", "refund", "dispute", "won")
    assert set(listed) == {events[name]["id"] for name in money}
    expected = {
        "invoice": ("subscription_grant", 3000),
        "checkout": ("purchase", 1000),
        "refund": ("clawback", 333),
        "dispute": ("clawback", 667),
        "won": ("clawback_reversal", 667),
    }
    for name, (kind, moments) in expected.items():
        event = listed[events[name]["id"]]
        assert event["applied"] is True
        assert (event["expected_kind"], event["expected_moments"]) == (kind, moments)
        (transaction,) = event["transactions"]
        assert (transaction["kind"], transaction["moments"], transaction["user_id"]) == (kind, moments, "u1")
        assert transaction["reference"] == events[name]["id"]
    totals = report["totals"]
    assert (totals["events"], totals["applied"], totals["not_applied"]) == (5, 5, 0)
    assert totals["credited_moments"] == 3000 + 1000 + 667
    assert totals["clawed_back_moments"] == 333 + 667
    by_kind = {item["kind"]: item for item in totals["by_kind"]}
    assert by_kind["clawback"] == {
        "kind": "clawback",
        "stripe_moments": 1000,
        "ledger_moments": 1000,
        "ledger_transactions": 2,
    }
    assert by_kind["purchase"]["ledger_moments"] == by_kind["purchase"]["stripe_moments"] == 1000
    assert report["transactions_without_event"] == []
    await assert_audit_ok(api)


async def test_the_window_is_stripes_event_time(api: Api, pool: asyncpg.Pool) -> None:
    events = await some_stripe_history(api, pool)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await reconciliation(api, since=future))["events"] == []
    created = datetime.fromtimestamp(events["invoice"]["created"], UTC)
    window = await reconciliation(
        api, since=(created - timedelta(minutes=1)).isoformat(), until=(created + timedelta(minutes=1)).isoformat()
    )
    assert events["invoice"]["id"] in {event["event_id"] for event in window["events"]}
    backwards = await api.get("/v1/reconciliation/stripe", "finance", since=future, until=created.isoformat())
    assert backwards.status_code == 422
    assert backwards.json()["errors"][0]["field"] == "until"
    assert (await api.get("/v1/reconciliation/stripe", "service")).status_code == 403


async def test_a_stray_stripe_kind_transaction_is_a_mismatch(api: Api, pool: asyncpg.Pool) -> None:
    await some_stripe_history(api, pool)
    async with ledger.Ledger(pool) as led:
        stray = await led.submit(
            ledger.Credit(
                key="stray-purchase",
                user_id="u1",
                actor="someone",
                reference="evt_never_received",
                amount=500,
                kind="purchase",
                category="paid",
            )
        )
    report = await reconciliation(api)
    assert report["ok"] is False
    (mismatch,) = report["mismatches"]
    assert mismatch["code"] == "transaction_without_event"
    assert mismatch["transaction_id"] == stray.transaction_id
    assert [t["transaction_id"] for t in report["transactions_without_event"]] == [stray.transaction_id]
    by_kind = {item["kind"]: item for item in report["totals"]["by_kind"]}
    assert (by_kind["purchase"]["stripe_moments"], by_kind["purchase"]["ledger_moments"]) == (1000, 1500)
    checks = await audit(api)
    assert checks["stripe_transactions_have_their_events"] is False
    assert checks["stripe_events_have_their_transactions"] is True


async def test_an_event_marked_applied_without_its_transaction_is_a_mismatch(api: Api, pool: asyncpg.Pool) -> None:
    await some_stripe_history(api, pool)
    await pool.execute(
        """
        INSERT INTO stripe_events (id, type, created, payload, state, applied_at, outcome, ledger_kind, ledger_moments)
        VALUES ('evt_forged', 'invoice.paid', now(), '{}', 'applied', now(), 'forged', 'subscription_grant', 3000)
        """
    )
    report = await reconciliation(api)
    (mismatch,) = report["mismatches"]
    assert (mismatch["code"], mismatch["event_id"]) == ("event_without_transaction", "evt_forged")
    assert (await audit(api))["stripe_events_have_their_transactions"] is False


async def test_amounts_that_differ_are_a_mismatch(api: Api, pool: asyncpg.Pool) -> None:
    events = await some_stripe_history(api, pool)
    await pool.execute("UPDATE stripe_events SET ledger_moments = 3001 WHERE id = $1", events["invoice"]["id"])
    report = await reconciliation(api)
    (mismatch,) = report["mismatches"]
    assert mismatch["code"] == "amount_differs"
    assert mismatch["event_id"] == events["invoice"]["id"]
    assert "3001" in mismatch["detail"]
    assert (await audit(api))["stripe_events_have_their_transactions"] is False


async def test_an_event_waiting_to_be_applied_is_reported(api: Api, pool: asyncpg.Pool) -> None:
    event = invoice_paid_event(customer="cus_nobody")
    assert (await deliver(api, event)).status_code == 202
    report = await reconciliation(api)
    (mismatch,) = report["mismatches"]
    assert (mismatch["code"], mismatch["event_id"]) == ("event_not_applied", event["id"])
    assert "cus_nobody" in mismatch["detail"]
    assert report["totals"]["not_applied"] == 1
    # Not applied is not a ledger inconsistency: the audit stays clean.
    await assert_audit_ok(api)
