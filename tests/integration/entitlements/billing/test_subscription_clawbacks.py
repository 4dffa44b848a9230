"""Refunds and disputes of subscription charges, and dispute appeals, as Stripe sends them under both API
versions: before basil the charge names its invoice; since, the service learns it from
invoice_payment.paid or asks Stripe's invoice payments (the fake answers as Stripe does).

The policy (docs/stripe.md): a refund takes back its share of what is still unspent of that invoice's
allowance; a dispute takes all of what is unspent and gives it back if won (also on appeal, after lost);
neither creates debt, and neither changes the tier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.support.billing import (
    assert_reconciled,
    available,
    delivered,
    entitlements,
    event_row,
    mismatches,
    spend,
    sweep,
    transactions_of,
)
from tests.support.http import Api
from tests.support.stripe_fake import FakeStripe, deliver, link_customer, stripe_api_for
from tests.support.stripe_payloads import (
    CURRENT,
    LEGACY,
    charge_refunded_event,
    checkout_completed_event,
    dispute_event,
    invoice_paid_event,
    invoice_payment_event,
    now_s,
    subscription_event,
    unique,
)

ATTEMPTS_MAX = 3
AMOUNT = 1999  # PREMIUM's monthly price, in cents
ALLOWANCE = 3000  # PREMIUM's monthly_allowance_moments


@pytest.fixture
async def api(database_url: str, fake: FakeStripe, pool: asyncpg.Pool) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url, fake=fake, event_attempts_max=ATTEMPTS_MAX) as client:
        await link_customer(pool, "cus_1", "u1")
        await delivered(client, subscription_event())  # PREMIUM, active
        yield client


@dataclass(frozen=True)
class Paid:
    """A paid subscription invoice and how its charge's events must name it under `version`."""

    version: str
    invoice_id: str
    charge_id: str
    payment_intent: str

    def refund(self, amount_refunded: int) -> dict[str, object]:
        return charge_refunded_event(
            version=self.version,
            charge_id=self.charge_id,
            payment_intent=self.payment_intent,
            amount=AMOUNT,
            amount_refunded=amount_refunded,
            invoice=self.invoice_id,
        )

    def dispute(self, event_type: str, status: str, dispute_id: str = "dp_sub") -> dict[str, object]:
        return dispute_event(
            event_type,
            version=self.version,
            dispute_id=dispute_id,
            charge_id=self.charge_id,
            payment_intent=self.payment_intent,
            status=status,
            amount=AMOUNT,
        )


# How the service finds the invoice of a refunded or disputed charge.
FINDINGS = [
    pytest.param("charge-names-invoice", id="acacia-charge.invoice"),
    pytest.param("invoice_payment.paid", id="basil-invoice_payment.paid-event"),
    pytest.param("stripe-invoice-payments", id="basil-retrieved-invoice_payments"),
]


async def pay_invoice(api: Api, fake: FakeStripe, finding: str) -> Paid:
    version = LEGACY if finding == "charge-names-invoice" else CURRENT
    paid = Paid(version, unique("in"), unique("ch"), unique("pi"))
    invoice = invoice_paid_event(
        version=version,
        invoice_id=paid.invoice_id,
        charge=paid.charge_id,
        payment_intent=paid.payment_intent,
        amount_paid=AMOUNT,
    )
    assert (await delivered(api, invoice))["status"] == "applied"
    if finding == "invoice_payment.paid":
        found = invoice_payment_event(invoice_id=paid.invoice_id, payment_intent=paid.payment_intent, amount=AMOUNT)
        assert (await delivered(api, found))["status"] == "applied"
    elif finding == "stripe-invoice-payments":
        fake.pay_invoice(paid.invoice_id, paid.payment_intent, amount=AMOUNT)
    return paid


def lookups(fake: FakeStripe) -> int:
    return len(fake.calls("/v1/invoice_payments"))


@pytest.mark.parametrize("finding", FINDINGS)
async def test_refunds_claw_back_their_share_of_the_unspent_allowance_never_debt(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool, finding: str
) -> None:
    paid = await pay_invoice(api, fake, finding)
    await spend(pool, "u1", 1000)
    assert await available(api, "u1") == 2000
    half = paid.refund(1000)
    body = await delivered(api, half)
    assert body["status"] == "applied", body
    # 1000 of 1999 refunded: that share of the 2000 still unspent, rounded down.
    assert await available(api, "u1") == 2000 - 2000 * 1000 // 1999
    (clawback,) = await transactions_of(pool, str(half["id"]))
    assert clawback["kind"] == "clawback"
    # The rest of the money: everything still unspent goes, the 1000 spent are not taken back.
    rest = paid.refund(AMOUNT)
    assert (await delivered(api, rest))["status"] == "applied"
    result = await entitlements(api, "u1")
    assert (result["balance"]["available"], result.get("owed", 0)) == (0, 0)
    assert result["tier"] == "PREMIUM"  # a refund does not end the subscription; Stripe's events do
    recorded = await pool.fetchrow("SELECT * FROM stripe_invoices WHERE invoice_id = $1", paid.invoice_id)
    assert recorded is not None
    assert (recorded["amount_refunded"], recorded["refund_moments"]) == (AMOUNT, 2000)
    # Stripe was asked at most once: the answer is remembered for the next event of that payment.
    assert lookups(fake) == (1 if finding == "stripe-invoice-payments" else 0)
    await assert_reconciled(api)


async def test_the_same_refund_delivered_at_once_or_again_claws_back_once(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    paid = await pay_invoice(api, fake, "stripe-invoice-payments")
    refund = paid.refund(AMOUNT)
    responses = await asyncio.gather(*(deliver(api, refund) for _ in range(3)))
    assert sorted(r.json()["status"] for r in responses) == ["applied", "duplicate", "duplicate"]
    again = paid.refund(AMOUNT)  # another event with the same cumulative amount
    assert (await delivered(api, again))["status"] == "applied_without_effect"
    assert await available(api, "u1") == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback'") == 1
    await assert_reconciled(api)


@pytest.mark.parametrize("finding", FINDINGS)
async def test_a_dispute_takes_the_unspent_allowance_and_winning_it_gives_it_back(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool, finding: str
) -> None:
    paid = await pay_invoice(api, fake, finding)
    await spend(pool, "u1", 500)
    opened = paid.dispute("charge.dispute.created", "needs_response")
    assert (await delivered(api, opened))["status"] == "applied"
    result = await entitlements(api, "u1")
    assert (result["balance"]["available"], result.get("owed", 0), result["tier"]) == (0, 0, "PREMIUM")
    won = paid.dispute("charge.dispute.closed", "won")
    assert (await delivered(api, won))["status"] == "applied"
    assert await available(api, "u1") == 2500
    (reversal,) = await transactions_of(pool, str(won["id"]))
    assert reversal["kind"] == "clawback_reversal"
    # Given back as the allowance it was: a subscription lot expiring when the period ends.
    lots = await pool.fetch(
        "SELECT category, expires_at FROM ledger_lots WHERE user_id = 'u1' AND remaining > 0 ORDER BY id"
    )
    expiry = await pool.fetchval("SELECT expires_at FROM stripe_invoices WHERE invoice_id = $1", paid.invoice_id)
    assert [(lot["category"], lot["expires_at"]) for lot in lots] == [("subscription", expiry)]
    await assert_reconciled(api)


async def test_a_lost_dispute_keeps_the_clawback(api: Api, fake: FakeStripe, pool: asyncpg.Pool) -> None:
    paid = await pay_invoice(api, fake, "stripe-invoice-payments")
    await delivered(api, paid.dispute("charge.dispute.created", "needs_response"))
    lost = paid.dispute("charge.dispute.closed", "lost")
    body = await delivered(api, lost)
    assert "the clawback of 3000 moments stands" in body["detail"]
    assert await available(api, "u1") == 0
    assert (await entitlements(api, "u1"))["tier"] == "PREMIUM"
    await assert_reconciled(api)


APPEAL = [
    ("charge.dispute.created", "needs_response"),
    ("charge.dispute.updated", "under_review"),
    ("charge.dispute.closed", "lost"),
    ("charge.dispute.updated", "appeal_needs_response"),
    ("charge.dispute.updated", "appeal_under_review"),
    ("charge.dispute.funds_reinstated", "won"),
    ("charge.dispute.closed", "won"),
]


@pytest.mark.parametrize("bought", ["allowance", "pack"])
@pytest.mark.parametrize("order", ["as-sent", "won-first", "reversed"])
async def test_a_dispute_lost_then_won_on_appeal_gives_the_moments_back_once(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool, bought: str, order: str
) -> None:
    if bought == "allowance":
        paid = await pay_invoice(api, fake, "stripe-invoice-payments")
        expected = ALLOWANCE
    else:
        paid = Paid(CURRENT, "", unique("ch"), unique("pi"))
        pack = checkout_completed_event(user_id="u1", pack="pack_5000", payment_intent=paid.payment_intent)
        await delivered(api, pack)
        expected = 5000
    events = [paid.dispute(event_type, status) for event_type, status in APPEAL]
    if order == "won-first":
        events = [events[-1], *events[:-1]]
    elif order == "reversed":
        events.reverse()
    for event in events:
        response = await deliver(api, event)
        assert response.status_code == 200, response.text
    assert await available(api, "u1") == expected
    clawbacks = await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback'")
    reversals = await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback_reversal'")
    # Taken once and given back once when the appeal was seen; nothing at all when won came first.
    assert (clawbacks, reversals) == ((0, 0) if order != "as-sent" else (1, 1))
    assert await pool.fetchval("SELECT status FROM stripe_disputes WHERE dispute_id = 'dp_sub'") == "won"
    await assert_reconciled(api)


async def test_a_dispute_won_after_the_allowance_expired_gives_nothing_back(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    paid = await pay_invoice(api, fake, "stripe-invoice-payments")
    await delivered(api, paid.dispute("charge.dispute.created", "needs_response"))
    # The period ends while the dispute is fought over (its end moved into the past, as time would).
    await pool.execute("UPDATE stripe_invoices SET expires_at = now() - interval '1 second'")
    body = await delivered(api, paid.dispute("charge.dispute.closed", "won"))
    assert "expired" in body["detail"]
    assert await available(api, "u1") == 0
    await assert_reconciled(api)


async def test_a_refund_before_its_invoice_waits_for_it(api: Api, fake: FakeStripe, pool: asyncpg.Pool) -> None:
    paid = Paid(LEGACY, unique("in"), unique("ch"), unique("pi"))
    refund = paid.refund(AMOUNT)
    body = await delivered(api, refund, status=202)
    assert f"invoice {paid.invoice_id}, whose invoice.paid is not applied yet" in body["detail"]
    invoice = invoice_paid_event(
        version=LEGACY, invoice_id=paid.invoice_id, charge=paid.charge_id, payment_intent=paid.payment_intent
    )
    await delivered(api, invoice)
    await sweep(api, pool)
    assert (await event_row(pool, str(refund["id"])))["state"] == "applied"
    assert await available(api, "u1") == 0
    await assert_reconciled(api)


async def test_a_refund_of_a_charge_of_nothing_recorded_ends_failed_and_listed(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    refund = Paid(CURRENT, "", unique("ch"), unique("pi")).refund(AMOUNT)
    body = await delivered(api, refund, status=202)
    assert "no moment-pack purchase recorded" in body["detail"]
    assert "it paid no invoice" in body["detail"]
    for _ in range(ATTEMPTS_MAX - 1):
        await sweep(api, pool)
    assert (await event_row(pool, str(refund["id"])))["state"] == "failed"
    assert await mismatches(api) == [("event_failed", refund["id"])]


async def test_the_allowance_period_is_the_invoice_lines(api: Api, fake: FakeStripe, pool: asyncpg.Pool) -> None:
    period_end = now_s() + 3 * 86_400
    invoice = invoice_paid_event(period_end=period_end)
    await delivered(api, invoice)
    row = await pool.fetchrow("SELECT * FROM stripe_invoices WHERE invoice_id = $1", invoice["data"]["object"]["id"])
    assert row is not None
    assert (row["moments"], row["expires_at"], row["tier"]) == (
        ALLOWANCE,
        datetime.fromtimestamp(period_end, UTC),
        "PREMIUM",
    )


async def test_a_disputes_events_delivered_at_once_take_once_and_give_back_once(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    paid = await pay_invoice(api, fake, "stripe-invoice-payments")
    opened = [paid.dispute("charge.dispute.created", "needs_response") for _ in range(2)]
    opened.append(paid.dispute("charge.dispute.funds_withdrawn", "needs_response"))
    responses = await asyncio.gather(*(deliver(api, event) for event in opened))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert await available(api, "u1") == 0
    won = [paid.dispute("charge.dispute.closed", "won"), paid.dispute("charge.dispute.funds_reinstated", "won")]
    responses = await asyncio.gather(*(deliver(api, event) for event in won))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sorted(r.json()["status"] for r in responses) == ["applied", "applied_without_effect"]
    assert await available(api, "u1") == ALLOWANCE
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback'") == 1
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'clawback_reversal'") == 1
    await assert_reconciled(api)
