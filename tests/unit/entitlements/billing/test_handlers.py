"""The Stripe event decisions of entitlements.billing.handlers, pure: no database, no Stripe.

Each handler reads the stored state, calls one of these, and performs what it decided; the integration
tests (tests/integration/entitlements/billing/) cover the performing against PostgreSQL.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pricing
from entitlements.billing.events import Charge, CheckoutSession, Invoice, Subscription
from entitlements.billing.handlers import (
    Allowance,
    Effect,
    NotYetApplicable,
    Purchase,
    RecordedDispute,
    SubscriptionState,
    customer_owner,
    dispute_closing,
    dispute_shares,
    invoice_allowance,
    purchased_pack,
    refund_decision,
    refund_moments,
    subscription_change,
    subscription_update_refusal,
)

CATALOG = pricing.load_catalog()
NOW = datetime(2025, 6, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())


def ignored_because(result: object, words: str) -> bool:
    return isinstance(result, Effect) and result.ignored and words in result.outcome


# --- customers -----------------------------------------------------------------------------------------------


def test_customer_owner_prefers_the_mapping_and_falls_back_to_the_metadata() -> None:
    assert customer_owner("cus_1", "u1", None) == "u1"
    assert customer_owner("cus_1", "u1", "u1") == "u1"
    assert customer_owner("cus_1", None, "u2") == "u2"
    assert customer_owner(None, None, "u2") == "u2"


def test_customer_owner_waits_when_the_mapping_and_the_metadata_disagree_or_neither_is_known() -> None:
    with pytest.raises(NotYetApplicable, match="belongs to 'u1' but the object's metadata names 'u2'"):
        customer_owner("cus_1", "u1", "u2")
    with pytest.raises(NotYetApplicable, match="unknown customer cus_1"):
        customer_owner("cus_1", None, None)


# --- subscriptions: the ordering rule ------------------------------------------------------------------------


def state(subscription_id: str | None, status: str | None, created: int | None) -> SubscriptionState:
    return SubscriptionState(subscription_id, status, datetime.fromtimestamp(created, UTC) if created else None)


@pytest.mark.parametrize(
    ("stored", "incoming", "wins"),
    [
        (state(None, None, None), state("sub_1", "active", 100), True),
        (state("sub_1", "active", 100), state("sub_1", "canceled", 101), True),
        (state("sub_1", "active", 100), state("sub_1", "canceled", 99), False),
        (state("sub_1", "active", 100), state("sub_1", "incomplete", 100), False),
        (state("sub_1", "incomplete", 100), state("sub_1", "active", 100), True),
        (state("sub_1", "canceled", 100), state("sub_1", "active", 200), False),
        (state("sub_1", "active", 100), state("sub_2", "canceled", 200), False),
        (state("sub_1", "canceled", 100), state("sub_2", "active", 200), True),
        (state("sub_1", "unpaid", 100), state("sub_2", "incomplete", 200), True),
        (SubscriptionState(None, None, None, manual=True), state("sub_1", "incomplete", 100), False),
        (SubscriptionState(None, None, None, manual=True), state("sub_1", "active", 100), True),
    ],
)
def test_subscription_ordering_rule(stored: SubscriptionState, incoming: SubscriptionState, wins: bool) -> None:
    assert (subscription_update_refusal(stored, incoming) is None) is wins


# --- subscriptions: what an event sets -----------------------------------------------------------------------


def subscription(status: str = "active", price: str = "price_premium_monthly", **fields: Any) -> Subscription:
    item = {"price": {"id": price}, "current_period_end": NOW_S + 3600}
    return msgspec.convert({"id": "sub_1", "status": status, "items": {"data": [item]}, **fields}, Subscription)


def test_a_tier_giving_status_sets_the_tier_of_its_price_until_the_items_period_end() -> None:
    change = subscription_change("customer.subscription.updated", subscription("past_due"), CATALOG)
    assert (change.tier, change.status) == ("PREMIUM", "past_due")
    assert change.current_period_end == datetime.fromtimestamp(NOW_S + 3600, UTC)
    assert not change.cancel_at_period_end


def test_the_subscriptions_own_period_end_wins_over_its_items() -> None:
    change = subscription_change("customer.subscription.updated", subscription(current_period_end=NOW_S + 60), CATALOG)
    assert change.current_period_end == datetime.fromtimestamp(NOW_S + 60, UTC)


def test_deleted_ends_the_subscription_whatever_its_status_says() -> None:
    change = subscription_change(
        "customer.subscription.deleted", subscription("active", cancel_at_period_end=True), CATALOG
    )
    assert (change.tier, change.status) == (pricing.FREE_TIER, "canceled")
    # An ended subscription is not "canceled at period end": it is over.
    assert not change.cancel_at_period_end


def test_a_status_without_a_tier_needs_no_known_price() -> None:
    change = subscription_change("customer.subscription.updated", subscription("unpaid", price="price_x"), CATALOG)
    assert change.tier == pricing.FREE_TIER
    assert subscription_change(
        "customer.subscription.updated", subscription("active", cancel_at_period_end=True), CATALOG
    ).cancel_at_period_end


def test_a_tier_giving_status_waits_for_a_price_the_catalog_knows() -> None:
    with pytest.raises(NotYetApplicable, match="price price_x is not a tier's stripe_price_id"):
        subscription_change("customer.subscription.updated", subscription(price="price_x"), CATALOG)
    empty = msgspec.convert({"id": "sub_1", "status": "active"}, Subscription)
    with pytest.raises(NotYetApplicable, match="has no items"):
        subscription_change("customer.subscription.updated", empty, CATALOG)


# --- invoices: the period's allowance ------------------------------------------------------------------------


def line(price: str, end: int, *, proration: bool = False) -> dict[str, Any]:
    return {
        "period": {"start": end - 3600, "end": end},
        "pricing": {"price_details": {"price": price}},
        "parent": {"subscription_item_details": {"proration": proration, "subscription": "sub_1"}},
    }


def invoice(*lines: dict[str, Any], subscription_id: str | None = "sub_1") -> Invoice:
    parent = {"subscription_details": {"subscription": subscription_id}} if subscription_id else None
    return msgspec.convert({"id": "in_1", "parent": parent, "lines": {"data": list(lines)}}, Invoice)


def test_the_allowance_is_the_tier_of_the_latest_non_proration_line_until_its_period_end() -> None:
    paid = invoice(
        line("price_premium_monthly", NOW_S + 100),
        line("price_ultimate_monthly", NOW_S + 200),
        line("price_premium_monthly", NOW_S + 300, proration=True),
    )
    ultimate = CATALOG.tier("ULTIMATE")
    assert ultimate is not None
    assert invoice_allowance(paid, CATALOG, NOW) == Allowance(
        tier=ultimate, expires_at=datetime.fromtimestamp(NOW_S + 200, UTC)
    )


def test_an_invoice_of_no_subscription_or_of_an_ended_period_grants_nothing() -> None:
    unsubscribed = invoice(line("price_premium_monthly", NOW_S + 100), subscription_id=None)
    assert ignored_because(invoice_allowance(unsubscribed, CATALOG, NOW), "not a subscription invoice")
    ended = invoice(line("price_premium_monthly", NOW_S))
    assert ignored_because(invoice_allowance(ended, CATALOG, NOW), "its allowance would expire at once")


def test_a_tier_without_allowance_grants_nothing() -> None:
    premium = CATALOG.tier("PREMIUM")
    assert premium is not None
    catalog = pricing.Catalog(tiers=(msgspec.structs.replace(premium, monthly_allowance_moments=0),), packs=())
    paid = invoice(line("price_premium_monthly", NOW_S + 100))
    assert ignored_because(invoice_allowance(paid, catalog, NOW), "tier PREMIUM has no allowance")


def test_an_invoice_waits_for_a_line_with_a_price_the_catalog_knows() -> None:
    with pytest.raises(NotYetApplicable, match="has no subscription line with a price"):
        invoice_allowance(invoice(line("price_premium_monthly", NOW_S + 100, proration=True)), CATALOG, NOW)
    with pytest.raises(NotYetApplicable, match="price price_x is not a tier's"):
        invoice_allowance(invoice(line("price_x", NOW_S + 100)), CATALOG, NOW)


# --- checkout: moment packs ----------------------------------------------------------------------------------


def session(
    metadata: dict[str, str] | None = None, prices: tuple[str, ...] = (), payment_status: str = "paid"
) -> CheckoutSession:
    fields: dict[str, Any] = {"id": "cs_1", "mode": "payment", "payment_status": payment_status, "metadata": metadata}
    if prices:
        fields["line_items"] = {"data": [{"price": {"id": price}} for price in prices]}
    return msgspec.convert(fields, CheckoutSession)


def test_the_pack_is_the_metadata_pack_else_the_first_known_lines_price() -> None:
    assert purchased_pack(session({"pack": "pack_5000"}, ("price_pack_1000",)), CATALOG) == CATALOG.pack("pack_5000")
    assert purchased_pack(session(None, ("price_x", "price_pack_1000")), CATALOG) == CATALOG.pack("pack_1000")


def test_a_pack_the_catalog_does_not_know_waits_even_when_a_line_names_a_known_one() -> None:
    with pytest.raises(NotYetApplicable, match="pack pack_x is not in pricing/catalog"):
        purchased_pack(session({"pack": "pack_x"}, ("price_pack_1000",)), CATALOG)
    with pytest.raises(NotYetApplicable, match=r"pack \['price_x'\] is not in"):
        purchased_pack(session(None, ("price_x",)), CATALOG)


def test_a_session_naming_no_pack_or_not_paid_yet_credits_nothing() -> None:
    assert ignored_because(purchased_pack(session(), CATALOG), "names no moment pack")
    unpaid = session({"pack": "pack_1000"}, payment_status="unpaid")
    assert ignored_because(purchased_pack(unpaid, CATALOG), "async_payment_succeeded credits it once paid")


# --- refunds -------------------------------------------------------------------------------------------------


def test_refund_moments_are_proportional_rounded_down_and_whole_on_a_full_refund() -> None:
    assert refund_moments(1000, 999, 999) == 1000
    assert refund_moments(1000, 1, 999) == 1
    assert refund_moments(1000, 500, 999) == 500
    assert refund_moments(5000, 1, 3999) == 1
    assert refund_moments(5000, 3998, 3999) == 4998
    assert refund_moments(1000, 5000, 999) == 1000  # never more than the purchase
    assert refund_moments(1000, 0, 999) == 0


def test_refund_moments_of_a_free_purchase_are_all_or_nothing() -> None:
    assert refund_moments(1000, 1, 0) == 1000
    assert refund_moments(1000, 0, 0) == 0


PURCHASE = Purchase(
    checkout_session_id="cs_1",
    charge_id="ch_1",
    user_id="u1",
    pack_id="pack_1000",
    moments=1000,
    amount_paid=999,
    lot_id=7,
    amount_refunded=0,
    refund_moments=0,
    dispute_moments=0,
)


def charge(amount_refunded: int, amount: int = 999) -> Charge:
    return Charge(id="ch_1", amount=amount, amount_refunded=amount_refunded)


def test_a_refund_takes_back_what_its_cumulative_amount_adds() -> None:
    first = refund_decision(PURCHASE, charge(333))
    assert (first.amount_refunded, first.wanted, first.taken) == (333, 333, 333)
    after = replace(PURCHASE, amount_refunded=333, refund_moments=333)
    second = refund_decision(after, charge(999))
    assert (second.amount_refunded, second.wanted, second.taken) == (999, 667, 667)


def test_a_redelivered_or_older_refund_takes_nothing_and_never_lowers_the_amount_recorded() -> None:
    after = replace(PURCHASE, amount_refunded=500, refund_moments=500)
    assert refund_decision(after, charge(500)).wanted == 0
    older = refund_decision(after, charge(300))
    assert (older.amount_refunded, older.taken) == (500, 0)
    assert older.wanted < 0


def test_what_an_open_dispute_holds_back_is_wanted_but_not_taken_again() -> None:
    disputed = replace(PURCHASE, dispute_moments=1000)
    decision = refund_decision(disputed, charge(400))
    assert (decision.wanted, decision.taken) == (400, 0)
    partly = replace(PURCHASE, refund_moments=250, dispute_moments=600)
    decision = refund_decision(partly, charge(999))
    assert (decision.wanted, decision.taken) == (750, 150)


def test_a_charge_without_its_amount_is_measured_against_the_amount_paid() -> None:
    assert refund_decision(PURCHASE, charge(333, amount=0)).wanted == 333


@given(
    moments=st.integers(1, 100_000),
    refunded=st.integers(0, 100_000),
    disputed=st.integers(0, 100_000),
    amount=st.integers(0, 10_000),
    amount_refunded=st.integers(0, 20_000),
)
def test_a_refund_never_takes_more_than_is_left_nor_more_than_it_wants(
    moments: int, refunded: int, disputed: int, amount: int, amount_refunded: int
) -> None:
    refunded, disputed = min(refunded, moments), min(disputed, moments - min(refunded, moments))
    purchase = replace(PURCHASE, moments=moments, refund_moments=refunded, dispute_moments=disputed, amount_paid=999)
    decision = refund_decision(purchase, charge(amount_refunded, amount))
    assert 0 <= decision.taken <= purchase.remaining
    assert decision.taken <= max(decision.wanted, 0)
    assert refunded + decision.wanted <= moments  # a refund's target never passes the purchase


# --- disputes ------------------------------------------------------------------------------------------------


def test_dispute_shares_take_from_the_first_open_disputes_first() -> None:
    held = [("dp_1", 300), ("dp_2", 500), ("dp_3", 200)]
    assert dispute_shares(held, 0) == []
    assert dispute_shares(held, 200) == [("dp_1", 200)]
    assert dispute_shares(held, 600) == [("dp_1", 300), ("dp_2", 300)]
    assert dispute_shares(held, 5000) == held


@given(st.lists(st.integers(1, 1000), max_size=5), st.integers(-10, 5000))
def test_dispute_shares_never_take_more_than_asked_nor_than_a_dispute_holds(held: list[int], moments: int) -> None:
    disputes = [(f"dp_{index}", amount) for index, amount in enumerate(held)]
    shares = dispute_shares(disputes, moments)
    assert sum(take for _, take in shares) == max(0, min(moments, sum(held)))
    assert all(0 < take <= dict(disputes)[dispute_id] for dispute_id, take in shares)


OPEN = RecordedDispute(status="open", moments=750)


@pytest.mark.parametrize(
    ("closed_as", "recorded", "expected"),
    [
        ("won", OPEN, "won"),
        ("warning_closed", OPEN, "won"),
        ("prevented", OPEN, "won"),
        ("lost", OPEN, "lost"),
        ("won", None, "won_before_opening"),
        ("lost", None, "lost_before_opening"),
    ],
)
def test_closing_a_dispute(closed_as: str, recorded: RecordedDispute | None, expected: str) -> None:
    assert dispute_closing("dp_1", closed_as, recorded) == expected


def test_closing_a_dispute_twice_or_as_neither_won_nor_lost_does_nothing() -> None:
    for recorded in (RecordedDispute(status="won", moments=0), RecordedDispute(status="lost", moments=750)):
        assert ignored_because(dispute_closing("dp_1", "won", recorded), f"already closed as {recorded.status}")
    assert ignored_because(dispute_closing("dp_1", "warning_needs_response", OPEN), "closed as warning_needs")
    assert ignored_because(dispute_closing("dp_1", "under_review", None), "closed as under_review")
