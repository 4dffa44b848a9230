"""invoice.paid as Stripe sends it, both API versions: a period's allowance is granted once; proration
lines (under either parent, or the pre-basil flag) and one-off invoice items never grant; an invoice
with nothing to grant ends applied without effect, recorded, and reconciliation stays clean."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.support.billing import assert_reconciled, available, delivered, event_row, transactions_of
from tests.support.http import Api
from tests.support.stripe_fake import link_customer, stripe_api_for
from tests.support.stripe_payloads import (
    CURRENT,
    LEGACY,
    VERSIONS,
    charge_refunded_event,
    invoice_line,
    invoice_paid_event,
    invoice_payment_event,
    now_s,
    unique,
)

ULTIMATE = "price_ultimate_monthly"
PREMIUM = "price_premium_monthly"


@pytest.fixture
async def api(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url) as client:
        await link_customer(pool, "cus_1", "u1")
        yield client


def upgrade_lines(version: str, invoice_id: str, *, invoice_item: bool) -> list[dict[str, Any]]:
    """What `proration_behavior=always_invoice` bills on an upgrade: a credit for the unused time of the
    old price and a charge for the rest of the period at the new one, both prorations."""
    period_end = now_s() + 20 * 86_400
    common = {"period_end": period_end, "proration": True, "invoice_item": invoice_item, "invoice_id": invoice_id}
    return [
        invoice_line(price=PREMIUM, amount=-1333, version=version, **common),
        invoice_line(price=ULTIMATE, amount=3333, version=version, **common),
    ]


UPGRADES = [
    pytest.param(CURRENT, False, id="basil-subscription_item_details"),
    pytest.param(CURRENT, True, id="basil-invoice_item_details"),
    pytest.param(LEGACY, True, id="acacia-invoiceitem-proration"),
    pytest.param(LEGACY, False, id="acacia-subscription-proration"),
]


@pytest.mark.parametrize(("version", "invoice_item"), UPGRADES)
async def test_an_upgrade_invoice_of_only_prorations_ends_applied_without_effect(
    api: Api, pool: asyncpg.Pool, version: str, invoice_item: bool
) -> None:
    invoice_id = unique("in")
    event = invoice_paid_event(
        version=version,
        invoice_id=invoice_id,
        lines=upgrade_lines(version, invoice_id, invoice_item=invoice_item),
        amount_paid=2000,
        billing_reason="subscription_update",
    )
    body = await delivered(api, event)  # 200, not 202: nothing to wait for
    assert body["status"] == "applied_without_effect"
    assert "only proration lines" in body["detail"]
    row = await event_row(pool, event["id"])
    assert (row["state"], row["attempts"], row["ledger_kind"]) == ("applied_without_effect", 1, None)
    assert row["outcome"].startswith("without effect: ")
    assert await transactions_of(pool, event["id"]) == []
    recorded = await pool.fetchrow("SELECT * FROM stripe_invoices WHERE invoice_id = $1", invoice_id)
    assert recorded is not None
    assert (recorded["moments"], recorded["amount_paid"]) == (0, 2000)
    report = await assert_reconciled(api)
    (listed,) = report["events"]
    assert (listed["state"], listed["expected_kind"], listed["transactions"]) == ("applied_without_effect", None, [])


@pytest.mark.parametrize("version", VERSIONS)
async def test_one_off_and_proration_lines_beside_the_periods_line_grant_only_the_periods_tier(
    api: Api, pool: asyncpg.Pool, version: str
) -> None:
    invoice_id = unique("in")
    period_end = now_s() + 30 * 86_400
    lines = [
        invoice_line(price=PREMIUM, period_end=period_end, invoice_id=invoice_id, version=version),
        # An invoice item priced like the higher tier, and a proration of it dated later: neither grants.
        invoice_line(price=ULTIMATE, period_end=period_end + 60, invoice_item=True, version=version),
        invoice_line(price=ULTIMATE, period_end=period_end + 120, proration=True, version=version),
    ]
    event = invoice_paid_event(version=version, invoice_id=invoice_id, lines=lines)
    body = await delivered(api, event)
    assert body["status"] == "applied"
    assert await available(api, "u1") == 3000  # PREMIUM's allowance, not ULTIMATE's
    await assert_reconciled(api)


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_refund_of_an_invoice_that_granted_nothing_is_applied_without_effect(
    api: Api, pool: asyncpg.Pool, version: str
) -> None:
    invoice_id = unique("in")
    charge_id, intent = unique("ch"), unique("pi")
    event = invoice_paid_event(
        version=version,
        invoice_id=invoice_id,
        lines=upgrade_lines(version, invoice_id, invoice_item=True),
        charge=charge_id,
        payment_intent=intent,
    )
    await delivered(api, event)
    if version == CURRENT:
        # Since basil an invoice names no charge: its payment is told by invoice_payment.paid.
        await delivered(api, invoice_payment_event(invoice_id=invoice_id, payment_intent=intent))
    refund = charge_refunded_event(
        version=version,
        charge_id=charge_id,
        payment_intent=intent,
        amount=2000,
        amount_refunded=2000,
        invoice=invoice_id,
    )
    body = await delivered(api, refund)
    assert body["status"] == "applied_without_effect"
    assert f"paid invoice {invoice_id}, which granted nothing" in body["detail"]
    await assert_reconciled(api)
