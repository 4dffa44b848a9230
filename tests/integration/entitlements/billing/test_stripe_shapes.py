"""Every event type the service handles, in Stripe's published shapes, under the API version the pinned
stripe library sends and under the last one before basil: a customer's whole history applies, each event
ends applied (or applied without effect where there is nothing to do), and reconciliation is clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from entitlements.billing.handlers import HANDLERS
from tests.support.billing import assert_reconciled, delivered, entitlements
from tests.support.http import Api
from tests.support.stripe_fake import FakeStripe, stripe_api_for
from tests.support.stripe_payloads import (
    CURRENT,
    LEGACY,
    VERSIONS,
    charge_refunded_event,
    checkout_completed_event,
    customer,
    dispute_event,
    event,
    invoice_paid_event,
    invoice_payment_event,
    now_s,
    subscription_event,
    unique,
)

# invoice_payment.paid exists since 2025-03-31.basil.
SINCE_BASIL = {"invoice_payment.paid"}


@pytest.fixture
async def api(database_url: str, fake: FakeStripe) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url, fake=fake) as client:
        yield client


def history(version: str, fake: FakeStripe) -> list[tuple[dict[str, Any], str]]:
    """A customer's life with Stripe, in order, each event with the status it must end with."""
    t = now_s() - 100
    sub = {"version": version, "customer": "cus_h", "subscription_id": "sub_h"}
    invoice_id, invoice_charge, invoice_intent = unique("in"), unique("ch"), unique("pi")
    link_session, link_intent = unique("cs_test"), unique("pi")
    fake.sell(link_session, ("price_pack_1000", 2))
    pay = {"version": version, "charge_id": invoice_charge, "payment_intent": invoice_intent, "amount": 1999}
    steps: list[tuple[dict[str, Any], str]] = [
        (event("customer.created", customer("cus_h", user_id="u1", version=version), version=version), "applied"),
        (subscription_event("customer.subscription.created", status="incomplete", created=t, **sub), "applied"),
        (subscription_event("customer.subscription.updated", created=t + 1, **sub), "applied"),
        (
            invoice_paid_event(
                version=version,
                invoice_id=invoice_id,
                customer="cus_h",
                subscription_id="sub_h",
                charge=invoice_charge,
                payment_intent=invoice_intent,
            ),
            "applied",
        ),
    ]
    if version == CURRENT:
        steps.append((invoice_payment_event(invoice_id=invoice_id, payment_intent=invoice_intent), "applied"))
    own = checkout_completed_event(version=version, customer="cus_h", user_id="u1", payment_intent=unique("pi"))
    own_charge = {"version": version, "payment_intent": own["data"]["object"]["payment_intent"], "amount": 999}
    steps += [
        (own, "applied"),
        (
            checkout_completed_event(
                version=version,
                event_type="checkout.session.async_payment_succeeded",
                session_id=link_session,
                customer="cus_h",
                pack=None,
                payment_intent=link_intent,
                payment_link=unique("plink"),
                amount_total=1998,
            ),
            "applied",
        ),
        (charge_refunded_event(charge_id=unique("ch"), amount_refunded=333, **own_charge), "applied"),
        (charge_refunded_event(amount_refunded=999, invoice=invoice_id, **pay), "applied"),
        (dispute_event("charge.dispute.created", status="warning_needs_response", **pay), "applied"),
        (dispute_event("charge.dispute.updated", status="warning_under_review", **pay), "applied_without_effect"),
        (
            dispute_event("charge.dispute.funds_withdrawn", status="warning_under_review", **pay),
            "applied_without_effect",
        ),
        (dispute_event("charge.dispute.closed", status="warning_closed", **pay), "applied"),
        (dispute_event("charge.dispute.funds_reinstated", status="warning_closed", **pay), "applied_without_effect"),
        (event("customer.updated", customer("cus_h", user_id="u1", version=version), version=version), "applied"),
        (subscription_event("customer.subscription.deleted", status="canceled", created=t + 2, **sub), "applied"),
    ]
    return steps


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_customers_whole_history_applies_and_reconciles(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool, version: str
) -> None:
    steps = history(version, fake)
    for sent, status in steps:
        assert "line_items" not in sent["data"]["object"]
        body = await delivered(api, sent)
        assert body["status"] == status, (sent["type"], body)
    handled = {sent["type"] for sent, _ in steps}
    assert handled == set(HANDLERS) - (SINCE_BASIL if version == LEGACY else set())
    result = await entitlements(api, "u1")
    assert result["tier"] == "FREE"  # the subscription ended
    # 3000 allowance, half refunded: 3000 * 999 // 1999 back; an inquiry opened and closed in its favour.
    # 1000 own pack, 333 of 999 refunded: 333 back; 2000 bought through the link.
    allowance_left = 3000 - 3000 * 999 // 1999
    assert result["balance"]["available"] == allowance_left + (1000 - 333) + 2000
    not_ended = "SELECT count(*) FROM stripe_events WHERE state NOT IN ('applied', 'applied_without_effect')"
    assert await pool.fetchval(not_ended) == 0
    await assert_reconciled(api)
