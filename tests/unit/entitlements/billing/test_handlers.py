"""The Stripe event decisions of entitlements.billing.handlers and .clawbacks, pure: no database, no Stripe.

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
from entitlements.billing.clawbacks import (
    Paid,
    RecordedDispute,
    dispute_shares,
    dispute_step,
    proportional_shares,
    refund_decision,
    refund_moments,
    refund_share,
)
from entitlements.billing.effects import Effect, NotYetApplicable, customer_owner
from entitlements.billing.events import Charge, CheckoutSession, Invoice, Subscription
from entitlements.billing.handlers import (
    Allowance,
    SubscriptionState,
    invoice_allowance,
    session_packs,
    subscription_change,
    subscription_update_refusal,
)

CATALOG = pricing.load_catalog()
NOW = datetime(2025, 6, 1, tzinfo=UTC)
NOW_S = int(NOW.timestamp())


def without_effect_because(result: object, words: str) -> bool:
    return isinstance(result, Effect) and result.without_effect and words in result.outcome


# --- customers -----------------------------------------------------------------------------------------------


def test_customer_owner_prefers_the_mapping_and_falls_back_to_the_metadata() -> None:
    assert customer_owner("cus_1", "u1", None) == "u1"
    assert customer_owner("cus_1", "u1", "u1") == "u1"
    assert customer_owner("cus_1", None, "u2") == "u2"
    assert customer_owner(None, None, "u2") == "u2"


def test_customer_owner_waits_when_the_mapping_and_the_metadata_disagree_or_neither_is_known() -> None:
    with pytest.raises(NotYetApplicable, match="belongs to 'u1' but the object's metadata names 'u2'"):
        customer_owner("cus_1", "u1", "u2")
    with pytest.raises(NotYetApplicable, match="unknown buyer: customer cus_1"):
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


def line(price: str, end: int, *, proration: bool = False, parent: str = "subscription_item_details") -> dict[str, Any]:
    """A line as since basil: its kind and proration under `parent`, its price under `pricing`."""
    return {
        "period": {"start": end - 3600, "end": end},
        "pricing": {"price_details": {"price": price}},
        "parent": {"type": parent, parent: {"proration": proration, "subscription": "sub_1"}},
    }


def legacy_line(price: str, end: int, *, proration: bool = False, kind: str = "subscription") -> dict[str, Any]:
    """A line as before basil: `price`, `proration` and `type` on the line itself."""
    return {"period": {"start": end - 3600, "end": end}, "price": {"id": price}, "proration": proration, "type": kind}


def invoice(*lines: dict[str, Any], subscription_id: str | None = "sub_1") -> Invoice:
    parent = {"subscription_details": {"subscription": subscription_id}} if subscription_id else None
    return msgspec.convert({"id": "in_1", "parent": parent, "lines": {"data": list(lines)}}, Invoice)


def test_the_allowance_is_the_tier_of_the_latest_subscription_line_until_its_period_end() -> None:
    paid = invoice(
        line("price_premium_monthly", NOW_S + 100),
        line("price_ultimate_monthly", NOW_S + 200),
        line("price_premium_monthly", NOW_S + 300, proration=True),
        line("price_premium_monthly", NOW_S + 400, parent="invoice_item_details"),
    )
    ultimate = CATALOG.tier("ULTIMATE")
    assert ultimate is not None
    assert invoice_allowance(paid, CATALOG, NOW) == Allowance(
        tier=ultimate, expires_at=datetime.fromtimestamp(NOW_S + 200, UTC)
    )


@pytest.mark.parametrize(
    "prorations",
    [
        [line("price_ultimate_monthly", NOW_S + 100, proration=True)],
        [line("price_ultimate_monthly", NOW_S + 100, proration=True, parent="invoice_item_details")],
        [
            line("price_premium_monthly", NOW_S + 100, proration=True, parent="invoice_item_details"),
            line("price_ultimate_monthly", NOW_S + 100, proration=True, parent="invoice_item_details"),
        ],
        [legacy_line("price_ultimate_monthly", NOW_S + 100, proration=True, kind="invoiceitem")],
        [legacy_line("price_ultimate_monthly", NOW_S + 100, proration=True)],
    ],
    ids=["subscription-item", "invoice-item", "credit-and-debit", "legacy-invoiceitem", "legacy-subscription"],
)
def test_an_invoice_of_only_prorations_grants_nothing_under_either_parent(prorations: list[dict[str, Any]]) -> None:
    result = invoice_allowance(invoice(*prorations), CATALOG, NOW)
    assert without_effect_because(result, "has only proration lines")


def test_a_proration_line_is_one_under_either_parent_or_the_legacy_flag() -> None:
    # Stripe's own fixture of a line names both parents; the proration of either counts.
    both = {
        "period": {"start": NOW_S, "end": NOW_S + 100},
        "pricing": {"price_details": {"price": "price_ultimate_monthly"}},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": {"proration": True},
            "subscription_item_details": {"proration": False, "subscription": "sub_1"},
        },
    }
    assert without_effect_because(invoice_allowance(invoice(both), CATALOG, NOW), "only proration lines")


def test_one_off_invoice_items_never_grant() -> None:
    items = invoice(
        line("price_ultimate_monthly", NOW_S + 100, parent="invoice_item_details"),
        legacy_line("price_ultimate_monthly", NOW_S + 100, kind="invoiceitem"),
    )
    assert without_effect_because(invoice_allowance(items, CATALOG, NOW), "no subscription line with a price")


def test_an_invoice_of_no_subscription_or_of_an_ended_period_grants_nothing() -> None:
    unsubscribed = invoice(line("price_premium_monthly", NOW_S + 100), subscription_id=None)
    assert without_effect_because(invoice_allowance(unsubscribed, CATALOG, NOW), "not a subscription invoice")
    ended = invoice(line("price_premium_monthly", NOW_S))
    assert without_effect_because(invoice_allowance(ended, CATALOG, NOW), "its allowance would expire at once")


def test_a_tier_without_allowance_grants_nothing() -> None:
    premium = CATALOG.tier("PREMIUM")
    assert premium is not None
    catalog = pricing.Catalog(tiers=(msgspec.structs.replace(premium, monthly_allowance_moments=0),), packs=())
    paid = invoice(line("price_premium_monthly", NOW_S + 100))
    assert without_effect_because(invoice_allowance(paid, catalog, NOW), "tier PREMIUM has no allowance")


def test_an_invoice_waits_for_a_price_the_catalog_knows_and_grants_nothing_without_a_priced_line() -> None:
    with pytest.raises(NotYetApplicable, match="price price_x is not a tier's"):
        invoice_allowance(invoice(line("price_x", NOW_S + 100)), CATALOG, NOW)
    unpriced = invoice({"period": {"start": NOW_S, "end": NOW_S + 100}, "pricing": {"type": "price_details"}})
    assert without_effect_because(invoice_allowance(unpriced, CATALOG, NOW), "no subscription line with a price")


# --- checkout: moment packs ----------------------------------------------------------------------------------


def session(metadata: dict[str, str] | None = None) -> CheckoutSession:
    fields: dict[str, Any] = {"id": "cs_1", "mode": "payment", "payment_status": "paid", "metadata": metadata}
    return msgspec.convert(fields, CheckoutSession)


def test_the_packs_are_the_metadata_pack_else_every_line_items_price_with_its_quantity() -> None:
    pack_1000, pack_5000 = CATALOG.pack("pack_1000"), CATALOG.pack("pack_5000")
    assert session_packs(session({"pack": "pack_5000"}), CATALOG, [("price_pack_1000", 1)]) == [(pack_5000, 1)]
    lines = [("price_pack_1000", 3), ("price_pack_5000", 1), ("price_pack_1000", 2)]
    assert session_packs(session(), CATALOG, lines) == [(pack_1000, 5), (pack_5000, 1)]


def test_a_paid_session_that_matches_no_pack_waits_it_is_never_without_effect() -> None:
    with pytest.raises(NotYetApplicable, match="pack pack_x is not in pricing/catalog"):
        session_packs(session({"pack": "pack_x"}), CATALOG, None)
    with pytest.raises(NotYetApplicable, match="price_x match no moment pack"):
        session_packs(session(), CATALOG, [("price_pack_1000", 1), ("price_x", 1)])
    with pytest.raises(NotYetApplicable, match="None match no moment pack"):
        session_packs(session(), CATALOG, [(None, 1)])
    with pytest.raises(NotYetApplicable, match="has no line item"):
        session_packs(session(), CATALOG, [])


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


PURCHASE = Paid(
    kind="pack",
    key="cs_1",
    charge_id="ch_1",
    user_id="u1",
    label="pack_1000",
    moments=1000,
    amount_paid=999,
    lot_id=7,
    expires_at=None,
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


def test_an_allowance_refund_takes_its_share_of_what_was_not_refunded_before() -> None:
    assert refund_share(1999, 999, 0) == (999, 1999)
    # The rest: all of what was not refunded before, so everything still unspent goes.
    assert refund_share(1999, 1999, 999) == (1000, 1000)
    assert refund_share(1999, 5000, 999) == (1000, 1000)  # never past the charge
    assert refund_share(1999, 999, 999) is None  # redelivered
    assert refund_share(1999, 500, 999) is None  # older than what was applied
    assert refund_share(0, 1, 0) is None


def test_open_disputes_of_an_allowance_give_up_the_refunds_share_of_what_they_hold() -> None:
    assert proportional_shares([("dp_1", 1000), ("dp_2", 3)], (1, 2)) == [("dp_1", 500), ("dp_2", 1)]
    assert proportional_shares([("dp_1", 1)], (1, 3)) == []


@given(
    amount=st.integers(1, 10_000), refunds=st.lists(st.integers(0, 12_000), max_size=6), unspent=st.integers(0, 10**6)
)
def test_cumulative_allowance_refunds_take_at_most_what_is_unspent_and_all_of_it_on_a_full_refund(
    amount: int, refunds: list[int], unspent: int
) -> None:
    refunded, left = 0, unspent
    for amount_refunded in [*sorted(refunds), amount]:
        share = refund_share(amount, amount_refunded, refunded)
        if share is None:
            continue
        added, rest = share
        assert 0 < added <= rest
        left -= left * added // rest
        refunded = min(amount_refunded, amount)
    assert left == 0


OPEN = RecordedDispute(status="open", moments=750)
LOST = RecordedDispute(status="lost", moments=750)
WON = RecordedDispute(status="won", moments=750)


@pytest.mark.parametrize(
    ("status", "recorded", "expected"),
    [
        ("needs_response", None, "take"),
        ("warning_needs_response", None, "take"),
        ("lost", None, "take_lost"),
        ("won", None, "record_won"),
        ("prevented", None, "record_won"),
        ("won", OPEN, "release"),
        ("warning_closed", OPEN, "release"),
        ("lost", OPEN, "mark_lost"),
        # An appeal: lost, fought again, and won at last gives the moments back.
        ("won", LOST, "release"),
    ],
)
def test_a_dispute_moves_forwards_to_the_status_its_event_carries(
    status: str, recorded: RecordedDispute | None, expected: str
) -> None:
    assert dispute_step("dp_1", status, recorded) == expected


@pytest.mark.parametrize(
    ("status", "recorded", "words"),
    [
        ("under_review", OPEN, "recorded open"),
        ("appeal_needs_response", LOST, "recorded lost, its clawback of 750 stands"),
        ("appeal_under_review", LOST, "recorded lost"),
        ("needs_response", LOST, "recorded lost"),
        ("lost", LOST, "already lost"),
        ("won", WON, "already won"),
        ("lost", WON, "already won"),
        ("needs_response", WON, "already won"),
        ("charge_refunded", OPEN, "not a status this service acts on"),
    ],
)
def test_a_dispute_never_moves_backwards_nor_twice(status: str, recorded: RecordedDispute, words: str) -> None:
    assert without_effect_because(dispute_step("dp_1", status, recorded), words)


STATUS_SEQUENCES = [
    ["needs_response", "under_review", "won"],
    ["needs_response", "under_review", "lost"],
    ["needs_response", "lost", "appeal_needs_response", "appeal_under_review", "won"],
    ["warning_needs_response", "warning_under_review", "warning_closed"],
]


@pytest.mark.parametrize("sequence", STATUS_SEQUENCES)
@given(data=st.data())
def test_a_disputes_events_in_any_order_take_at_most_once_and_give_back_at_most_once(
    sequence: list[str], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(sequence))
    recorded: RecordedDispute | None = None
    takes = releases = 0
    for status in order:
        step = dispute_step("dp_1", status, recorded)
        if step in ("take", "take_lost"):
            takes += 1
            recorded = RecordedDispute(status="open" if step == "take" else "lost", moments=750)
        elif step == "record_won":
            recorded = RecordedDispute(status="won", moments=0)
        elif step == "mark_lost":
            recorded = replace_status(recorded, "lost")
        elif step == "release":
            releases += 1
            recorded = replace_status(recorded, "won")
    assert takes <= 1
    assert releases <= takes
    # Whatever the order, it ends where its last status says (won is final).
    final = sequence[-1]
    assert recorded is not None
    assert recorded.status == ("lost" if final == "lost" else "won")
    assert releases == (1 if final != "lost" and takes == 1 else 0)


def replace_status(recorded: RecordedDispute | None, status: str) -> RecordedDispute:
    assert recorded is not None
    return replace(recorded, status=status)  # type: ignore[arg-type]
