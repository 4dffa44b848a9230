"""The pure posting rules (ledger.rules) and the operations' request hash, with no database.

Every rule is checked for what it posts (zero-sum, one leg per account), what it does to the lots and
the hold, and that it leaves the state's invariants (`UserState.check`) behind.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import operations as ops
from ledger import rules
from ledger.rules import (
    AVAILABLE,
    CLAWBACK,
    DEBT,
    EXPIRED,
    HELD,
    PROMOTIONS,
    REVENUE,
    SALES,
    SUBSCRIPTION_GRANTS,
    HoldNotOpen,
    InsufficientMoments,
    InvalidOperation,
    Lot,
    NotRefundable,
    Postings,
    UserState,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
FAR = NOW + timedelta(days=365)


def minutes(count: float) -> datetime:
    return NOW + timedelta(minutes=count)


def make_lot(
    lot_id: int, category: str, amount: int, *, expires_at: datetime | None = None, remaining: int | None = None
) -> Lot:
    return Lot(
        id=lot_id,
        category=category,
        amount=amount,
        remaining=amount if remaining is None else remaining,
        expires_at=expires_at,
    )


def make_state(*lots: Lot, owed: int = 0, held: int = 0) -> UserState:
    state = UserState(
        user_id="u1",
        available=sum(lot.remaining for lot in lots),
        held=held,
        owed=owed,
        lots={lot.id: lot for lot in lots},
    )
    state.check()
    return state


def assert_sound(state: UserState, postings: Postings) -> dict[str, int]:
    """A rule's postings: at least two legs, none zero, one per account, summing to zero; the state's
    invariants hold afterwards. Returns the postings as a dict for easy comparison."""
    assert len(postings) >= 2, postings
    assert all(amount != 0 for _, amount in postings), postings
    accounts = [account for account, _ in postings]
    assert len(accounts) == len(set(accounts)), postings
    assert sum(amount for _, amount in postings) == 0, postings
    state.check()
    return dict(postings)


def remaining(state: UserState) -> dict[int, int]:
    return {lot_id: lot.remaining for lot_id, lot in state.lots.items()}


def new_ids(start: int) -> Callable[[], int]:
    counter = itertools.count(start)
    return lambda: next(counter)


def hold_of(state: UserState, amount: int, hold_id: int = 1, *, now: datetime = NOW) -> rules.Hold:
    postings, hold = rules.hold(state, amount=amount, hold_id=hold_id, expires_at=FAR, now=now)
    assert assert_sound(state, postings) == {AVAILABLE: -amount, HELD: amount}
    return hold


def drawn(hold: rules.Hold) -> list[tuple[int, int]]:
    return [(share.lot_id, share.drawn) for share in hold.shares]


# --- spending order -----------------------------------------------------------------------------------


def test_soonest_expiring_lot_is_spent_first_never_expiring_last() -> None:
    state = make_state(
        make_lot(1, "promotional", 10),  # never expires: last, even though promotional
        make_lot(2, "paid", 10, expires_at=minutes(30)),
        make_lot(3, "paid", 10, expires_at=minutes(10)),
    )
    hold = hold_of(state, 25)
    assert drawn(hold) == [(3, 10), (2, 10), (1, 5)]
    assert remaining(state) == {1: 5, 2: 0, 3: 0}
    assert (state.available, state.held) == (5, 25)


def test_same_expiry_spends_promotional_then_subscription_then_paid() -> None:
    expiry = minutes(60)
    state = make_state(
        make_lot(1, "paid", 10, expires_at=expiry),
        make_lot(2, "subscription", 10, expires_at=expiry),
        make_lot(3, "promotional", 10, expires_at=expiry),
        make_lot(4, "paid", 10),
        make_lot(5, "subscription", 10),
        make_lot(6, "promotional", 10),
    )
    hold = hold_of(state, 60)
    assert [lot_id for lot_id, _ in drawn(hold)] == [3, 2, 1, 6, 5, 4]


def test_same_expiry_and_category_spends_the_oldest_lot_first() -> None:
    state = make_state(
        make_lot(9, "paid", 10),
        make_lot(4, "paid", 10),
        make_lot(7, "paid", 10),
    )
    hold = hold_of(state, 15)
    assert drawn(hold) == [(4, 10), (7, 5)]
    assert remaining(state) == {9: 10, 4: 0, 7: 5}


def test_an_earlier_expiry_beats_a_cheaper_category() -> None:
    state = make_state(
        make_lot(1, "promotional", 10, expires_at=minutes(20)),
        make_lot(2, "paid", 10, expires_at=minutes(10)),
    )
    assert drawn(hold_of(state, 5)) == [(2, 5)]


def test_empty_lots_are_skipped() -> None:
    state = make_state(
        make_lot(1, "promotional", 10, remaining=0, expires_at=minutes(1)),
        make_lot(2, "paid", 10, remaining=3),
    )
    assert drawn(hold_of(state, 3)) == [(2, 3)]


# --- insufficient moments -----------------------------------------------------------------------------


def test_insufficient_counts_only_unexpired_lots_and_changes_nothing() -> None:
    state = make_state(
        make_lot(1, "paid", 100, expires_at=minutes(-1)),
        make_lot(2, "subscription", 50, expires_at=NOW),  # expires exactly now: expired
        make_lot(3, "promotional", 5),
    )
    assert state.available == 155
    before = remaining(state)
    with pytest.raises(InsufficientMoments) as refused:
        rules.hold(state, amount=6, hold_id=1, expires_at=FAR, now=NOW)
    assert (refused.value.required, refused.value.available) == (6, 5)
    assert refused.value.code == "insufficient_moments"
    assert remaining(state) == before
    assert (state.available, state.held) == (155, 0)
    # Exactly what is spendable is allowed.
    assert drawn(hold_of(state, 5)) == [(3, 5)]


def test_hold_of_everything_then_one_more_is_refused() -> None:
    state = make_state(make_lot(1, "paid", 370))
    hold_of(state, 370)
    with pytest.raises(InsufficientMoments) as refused:
        rules.hold(state, amount=1, hold_id=2, expires_at=FAR, now=NOW)
    assert (refused.value.required, refused.value.available) == (1, 0)


@pytest.mark.parametrize("amount", [0, -1, True, 1.5, "10", rules.AMOUNT_MOMENTS_MAX + 1])
def test_hold_refuses_amounts_that_are_not_positive_whole_moments(amount: Any) -> None:
    state = make_state(make_lot(1, "paid", 10))
    with pytest.raises(InvalidOperation):
        rules.hold(state, amount=amount, hold_id=1, expires_at=FAR, now=NOW)
    assert remaining(state) == {1: 10}


def test_hold_must_expire_in_the_future() -> None:
    state = make_state(make_lot(1, "paid", 10))
    with pytest.raises(InvalidOperation):
        rules.hold(state, amount=1, hold_id=1, expires_at=NOW, now=NOW)


# --- capture --------------------------------------------------------------------------------------------


def three_lot_state() -> UserState:
    return make_state(
        make_lot(1, "promotional", 5, expires_at=minutes(5)),
        make_lot(2, "subscription", 5, expires_at=minutes(10)),
        make_lot(3, "paid", 10),
    )


def test_full_capture_moves_held_to_revenue() -> None:
    state = three_lot_state()
    hold = hold_of(state, 15)
    postings = rules.capture(state, hold, amount=None, now=NOW)
    assert assert_sound(state, postings) == {HELD: -15, REVENUE: 15}
    assert (hold.status, hold.captured) == ("captured", 15)
    assert (state.available, state.held) == (5, 0)


def test_partial_capture_returns_the_rest_to_the_last_drawn_lots_first() -> None:
    state = three_lot_state()
    hold = hold_of(state, 15)
    assert drawn(hold) == [(1, 5), (2, 5), (3, 5)]
    postings = rules.capture(state, hold, amount=7, now=NOW)
    assert assert_sound(state, postings) == {HELD: -15, REVENUE: 7, AVAILABLE: 8}
    # 8 back: 5 to lot 3 (drawn last), then 3 to lot 2; lot 1 keeps nothing back.
    assert remaining(state) == {1: 0, 2: 3, 3: 10}
    assert [share.returned for share in hold.shares] == [0, 3, 5]
    assert [share.captured for share in hold.shares] == [5, 2, 0]
    assert (hold.status, hold.captured) == ("captured", 7)
    assert (state.available, state.held) == (13, 0)


def test_capture_of_the_whole_amount_explicitly_returns_nothing() -> None:
    state = three_lot_state()
    hold = hold_of(state, 15)
    assert assert_sound(state, rules.capture(state, hold, amount=15, now=NOW)) == {HELD: -15, REVENUE: 15}


def test_partial_capture_return_to_an_expired_lot_goes_to_system_expired() -> None:
    state = three_lot_state()
    hold = hold_of(state, 12)
    assert drawn(hold) == [(1, 5), (2, 5), (3, 2)]
    # At +10 minutes lots 1 and 2 have expired: lot 3 takes its 2 back, the other 8 are breakage.
    postings = rules.capture(state, hold, amount=2, now=minutes(10))
    assert assert_sound(state, postings) == {HELD: -12, REVENUE: 2, AVAILABLE: 2, EXPIRED: 8}
    assert remaining(state) == {1: 0, 2: 0, 3: 10}


@pytest.mark.parametrize("amount", [0, -3, 16])
def test_capture_refuses_nothing_or_more_than_held(amount: int) -> None:
    state = three_lot_state()
    hold = hold_of(state, 15)
    with pytest.raises(InvalidOperation):
        rules.capture(state, hold, amount=amount, now=NOW)
    assert hold.status == "open"
    assert (state.available, state.held) == (5, 15)


@pytest.mark.parametrize("end", ["capture", "void", "expire"])
def test_an_ended_hold_can_be_neither_captured_nor_voided(end: str) -> None:
    state = three_lot_state()
    hold = hold_of(state, 10)
    if end == "capture":
        rules.capture(state, hold, amount=None, now=NOW)
    else:
        rules.void(state, hold, expired=end == "expire", now=NOW)
    snapshot = (state.available, state.held, remaining(state), hold.status)
    with pytest.raises(HoldNotOpen):
        rules.capture(state, hold, amount=None, now=NOW)
    with pytest.raises(HoldNotOpen):
        rules.void(state, hold, expired=False, now=NOW)
    assert (state.available, state.held, remaining(state), hold.status) == snapshot


# --- void -----------------------------------------------------------------------------------------------


def test_void_returns_every_moment_to_the_lots_it_came_from() -> None:
    state = three_lot_state()
    hold = hold_of(state, 15)
    postings = rules.void(state, hold, expired=False, now=NOW)
    assert assert_sound(state, postings) == {HELD: -15, AVAILABLE: 15}
    assert remaining(state) == {1: 5, 2: 5, 3: 10}
    assert hold.status == "voided"
    assert [share.returned for share in hold.shares] == [5, 5, 5]


def test_void_as_expired_marks_the_hold_expired() -> None:
    state = three_lot_state()
    hold = hold_of(state, 3)
    rules.void(state, hold, expired=True, now=NOW)
    assert hold.status == "expired"


def test_void_share_of_an_expired_lot_goes_to_system_expired() -> None:
    state = make_state(
        make_lot(1, "promotional", 5, expires_at=minutes(5)),
        make_lot(2, "paid", 10),
    )
    hold = hold_of(state, 10)
    assert drawn(hold) == [(1, 5), (2, 5)]
    postings = rules.void(state, hold, expired=False, now=minutes(5))
    assert assert_sound(state, postings) == {HELD: -10, AVAILABLE: 5, EXPIRED: 5}
    assert remaining(state) == {1: 0, 2: 10}
    assert (state.available, state.held) == (10, 0)


def test_void_of_a_hold_whose_lots_all_expired_posts_only_to_system_expired() -> None:
    state = make_state(make_lot(1, "subscription", 8, expires_at=minutes(5)))
    hold = hold_of(state, 8)
    postings = rules.void(state, hold, expired=True, now=minutes(6))
    assert assert_sound(state, postings) == {HELD: -8, EXPIRED: 8}
    assert (state.available, state.held) == (0, 0)


def test_void_share_of_a_lot_already_expired_by_the_sweeper_goes_to_system_expired() -> None:
    state = make_state(
        make_lot(1, "promotional", 10, expires_at=minutes(5)),
        make_lot(2, "paid", 10),
    )
    hold = hold_of(state, 4)
    assert drawn(hold) == [(1, 4)]
    expired = rules.expire_lots(state, now=minutes(5))
    assert expired is not None
    assert assert_sound(state, expired) == {AVAILABLE: -6, EXPIRED: 6}
    assert state.lots[1].expired_at == minutes(5)
    # Even with a clock that says otherwise, a lot marked expired takes nothing back.
    postings = rules.void(state, hold, expired=False, now=NOW)
    assert assert_sound(state, postings) == {HELD: -4, EXPIRED: 4}
    assert remaining(state) == {1: 0, 2: 10}


# --- refund ---------------------------------------------------------------------------------------------


def captured_hold(state: UserState, amount: int, *, capture: int | None = None) -> rules.Hold:
    hold = hold_of(state, amount)
    assert_sound(state, rules.capture(state, hold, amount=capture, now=NOW))
    return hold


def test_refund_returns_to_the_source_lots_last_drawn_first() -> None:
    state = three_lot_state()
    hold = captured_hold(state, 15)
    postings, fresh = rules.refund(state, hold, amount=7, new_lot_id=new_ids(100), now=NOW)
    assert assert_sound(state, postings) == {REVENUE: -7, AVAILABLE: 7}
    assert fresh == []
    assert remaining(state) == {1: 0, 2: 2, 3: 10}
    assert [share.refunded for share in hold.shares] == [0, 2, 5]
    assert hold.refunded == 7
    assert hold.status == "captured"


def test_refunds_never_exceed_what_was_captured() -> None:
    state = three_lot_state()
    hold = captured_hold(state, 10)
    assert_sound(state, rules.refund(state, hold, amount=6, new_lot_id=new_ids(100), now=NOW)[0])
    with pytest.raises(NotRefundable):
        rules.refund(state, hold, amount=5, new_lot_id=new_ids(100), now=NOW)
    assert_sound(state, rules.refund(state, hold, amount=4, new_lot_id=new_ids(100), now=NOW)[0])
    assert hold.refunded == 10
    before = (state.available, remaining(state))
    with pytest.raises(NotRefundable):
        rules.refund(state, hold, amount=1, new_lot_id=new_ids(100), now=NOW)
    assert (state.available, remaining(state)) == before
    assert remaining(state) == {1: 5, 2: 5, 3: 10}


def test_refund_of_a_partial_capture_is_capped_at_the_captured_part() -> None:
    state = three_lot_state()
    hold = captured_hold(state, 10, capture=4)
    with pytest.raises(NotRefundable):
        rules.refund(state, hold, amount=5, new_lot_id=new_ids(100), now=NOW)
    postings, _ = rules.refund(state, hold, amount=4, new_lot_id=new_ids(100), now=NOW)
    assert assert_sound(state, postings) == {REVENUE: -4, AVAILABLE: 4}
    assert remaining(state) == {1: 5, 2: 5, 3: 10}


@pytest.mark.parametrize("status", ["open", "voided", "expired"])
def test_only_a_captured_hold_can_be_refunded(status: str) -> None:
    state = three_lot_state()
    hold = hold_of(state, 10)
    if status != "open":
        rules.void(state, hold, expired=status == "expired", now=NOW)
    before = (state.available, state.held, remaining(state))
    with pytest.raises(NotRefundable):
        rules.refund(state, hold, amount=1, new_lot_id=new_ids(100), now=NOW)
    assert (state.available, state.held, remaining(state)) == before
    assert hold.refunded == 0


@pytest.mark.parametrize("amount", [0, -1, True])
def test_refund_refuses_amounts_that_are_not_positive_whole_moments(amount: Any) -> None:
    state = three_lot_state()
    hold = captured_hold(state, 10)
    with pytest.raises(InvalidOperation):
        rules.refund(state, hold, amount=amount, new_lot_id=new_ids(100), now=NOW)


def test_refund_to_an_expired_lot_becomes_a_new_lot_of_the_same_category_without_expiry() -> None:
    state = make_state(
        make_lot(1, "subscription", 5, expires_at=minutes(5)),
        make_lot(2, "paid", 10),
    )
    hold = captured_hold(state, 8)
    assert drawn(hold) == [(1, 5), (2, 3)]
    later = minutes(30)
    postings, fresh = rules.refund(state, hold, amount=8, new_lot_id=new_ids(100), now=later)
    assert assert_sound(state, postings) == {REVENUE: -8, AVAILABLE: 8}
    assert [(lot.id, lot.category, lot.amount, lot.remaining, lot.expires_at) for lot in fresh] == [
        (100, "subscription", 5, 5, None)
    ]
    assert fresh[0].new
    assert remaining(state) == {1: 0, 2: 10, 100: 5}
    assert state.available == 15


def test_credit_repays_debt_first_then_makes_a_lot_of_the_rest() -> None:
    state = make_state(owed=30)
    postings, lot = rules.credit(state, amount=50, source=SALES, category="paid", expires_at=None, lot_id=7, now=NOW)
    assert assert_sound(state, postings) == {SALES: -50, DEBT: 30, AVAILABLE: 20}
    assert lot is not None
    assert (lot.id, lot.category, lot.amount, lot.remaining, lot.new) == (7, "paid", 20, 20, True)
    assert (state.available, state.owed) == (20, 0)


def test_credit_smaller_than_the_debt_makes_no_lot() -> None:
    state = make_state(owed=30)
    postings, lot = rules.credit(
        state, amount=20, source=PROMOTIONS, category="promotional", expires_at=None, lot_id=7, now=NOW
    )
    assert assert_sound(state, postings) == {PROMOTIONS: -20, DEBT: 20}
    assert lot is None
    assert state.lots == {}
    assert (state.available, state.owed) == (0, 10)


def test_credit_without_debt_is_a_lot_with_its_category_and_expiry() -> None:
    state = make_state()
    postings, lot = rules.credit(
        state,
        amount=100,
        source=SUBSCRIPTION_GRANTS,
        category="subscription",
        expires_at=minutes(60),
        lot_id=3,
        now=NOW,
    )
    assert assert_sound(state, postings) == {SUBSCRIPTION_GRANTS: -100, AVAILABLE: 100}
    assert lot is not None
    assert (lot.category, lot.expires_at, lot.remaining) == ("subscription", minutes(60), 100)


@pytest.mark.parametrize(
    ("amount", "category", "expires_at"),
    [(0, "paid", None), (-5, "paid", None), (5, "gold", None), (5, "paid", NOW), (5, "paid", minutes(-1))],
)
def test_credit_refuses_bad_input(amount: int, category: str, expires_at: datetime | None) -> None:
    state = make_state(owed=3)
    with pytest.raises(InvalidOperation):
        rules.credit(state, amount=amount, source=SALES, category=category, expires_at=expires_at, lot_id=1, now=NOW)
    assert (state.available, state.owed, state.lots) == (0, 3, {})


def test_refund_repays_debt_first() -> None:
    state = make_state(make_lot(1, "paid", 10))
    hold = captured_hold(state, 10)
    clawed = rules.clawback(state, amount=25, preferred_lot_id=None, now=NOW)
    assert assert_sound(state, clawed) == {DEBT: -25, CLAWBACK: 25}
    assert state.owed == 25
    postings, fresh = rules.refund(state, hold, amount=4, new_lot_id=new_ids(100), now=NOW)
    assert assert_sound(state, postings) == {REVENUE: -4, DEBT: 4}
    assert fresh == []
    assert (state.available, state.owed) == (0, 21)
    assert remaining(state) == {1: 0}


def test_refund_larger_than_the_debt_repays_it_and_returns_the_rest_to_lots() -> None:
    state = make_state(make_lot(1, "promotional", 5, expires_at=minutes(5)), make_lot(2, "paid", 5))
    hold = captured_hold(state, 10)
    assert_sound(state, rules.clawback(state, amount=3, preferred_lot_id=None, now=NOW))
    postings, _ = rules.refund(state, hold, amount=10, new_lot_id=new_ids(100), now=NOW)
    assert assert_sound(state, postings) == {REVENUE: -10, DEBT: 3, AVAILABLE: 7}
    assert (state.available, state.owed) == (7, 0)
    assert sum(remaining(state).values()) == 7
    assert hold.refunded == 10


# --- clawback -------------------------------------------------------------------------------------------


def test_clawback_takes_the_named_lot_first_then_spending_order() -> None:
    state = make_state(
        make_lot(1, "promotional", 10, expires_at=minutes(5)),
        make_lot(2, "subscription", 10, expires_at=minutes(10)),
        make_lot(3, "paid", 10),
    )
    postings = rules.clawback(state, amount=15, preferred_lot_id=3, now=NOW)
    assert assert_sound(state, postings) == {AVAILABLE: -15, CLAWBACK: 15}
    assert remaining(state) == {1: 5, 2: 10, 3: 0}
    assert state.owed == 0


def test_clawback_without_a_named_lot_follows_spending_order() -> None:
    state = make_state(
        make_lot(1, "paid", 10),
        make_lot(2, "promotional", 10),
        make_lot(3, "paid", 10, expires_at=minutes(10)),
    )
    assert_sound(state, rules.clawback(state, amount=15, preferred_lot_id=None, now=NOW))
    assert remaining(state) == {1: 10, 2: 5, 3: 0}


def test_clawback_beyond_what_is_available_becomes_debt() -> None:
    state = make_state(make_lot(1, "paid", 10, remaining=4), make_lot(2, "promotional", 3))
    postings = rules.clawback(state, amount=20, preferred_lot_id=1, now=NOW)
    assert assert_sound(state, postings) == {AVAILABLE: -7, DEBT: -13, CLAWBACK: 20}
    assert remaining(state) == {1: 0, 2: 0}
    assert (state.available, state.owed) == (0, 13)


def test_clawback_with_nothing_available_is_all_debt() -> None:
    state = make_state(owed=2)
    postings = rules.clawback(state, amount=9, preferred_lot_id=None, now=NOW)
    assert assert_sound(state, postings) == {DEBT: -9, CLAWBACK: 9}
    assert state.owed == 11


def test_clawback_ignores_an_expired_named_lot_and_unknown_lots() -> None:
    state = make_state(
        make_lot(1, "paid", 10, expires_at=minutes(-1)),
        make_lot(2, "paid", 10),
    )
    postings = rules.clawback(state, amount=12, preferred_lot_id=1, now=NOW)
    assert assert_sound(state, postings) == {AVAILABLE: -10, DEBT: -2, CLAWBACK: 12}
    assert remaining(state) == {1: 10, 2: 0}
    state2 = make_state(make_lot(2, "paid", 10))
    assert_sound(state2, rules.clawback(state2, amount=3, preferred_lot_id=999, now=NOW))
    assert remaining(state2) == {2: 7}


def test_clawback_unspent_takes_a_share_of_one_lot_only_rounded_down_never_debt() -> None:
    state = make_state(
        make_lot(1, "subscription", 3000, remaining=2001, expires_at=minutes(60)), make_lot(2, "paid", 50)
    )
    postings = rules.clawback_unspent(state, lot_id=1, numerator=1, denominator=2, now=NOW)
    assert postings is not None
    assert assert_sound(state, postings) == {AVAILABLE: -1000, CLAWBACK: 1000}
    assert remaining(state) == {1: 1001, 2: 50}
    # The whole rest of it: exactly what is left, the other lot untouched, no debt.
    postings = rules.clawback_unspent(state, lot_id=1, numerator=7, denominator=7, now=NOW)
    assert postings is not None
    assert assert_sound(state, postings) == {AVAILABLE: -1001, CLAWBACK: 1001}
    assert remaining(state) == {1: 0, 2: 50}
    assert state.owed == 0


def test_clawback_unspent_of_a_spent_expired_or_unknown_lot_is_nothing() -> None:
    state = make_state(
        make_lot(1, "subscription", 10, remaining=0, expires_at=minutes(60)),
        make_lot(2, "subscription", 10, expires_at=minutes(-1)),
        make_lot(3, "subscription", 1, expires_at=minutes(60)),
    )
    assert rules.clawback_unspent(state, lot_id=1, numerator=1, denominator=1, now=NOW) is None
    assert rules.clawback_unspent(state, lot_id=2, numerator=1, denominator=1, now=NOW) is None
    assert rules.clawback_unspent(state, lot_id=999, numerator=1, denominator=1, now=NOW) is None
    # A share that rounds down to nothing takes nothing.
    assert rules.clawback_unspent(state, lot_id=3, numerator=1, denominator=2, now=NOW) is None
    assert remaining(state) == {1: 0, 2: 10, 3: 1}


@pytest.mark.parametrize(("numerator", "denominator"), [(0, 1), (2, 1), (-1, 1), (1, 0), (True, 1)])
def test_clawback_unspent_needs_a_share_between_nothing_and_all(numerator: int, denominator: int) -> None:
    operation = ops.ClawbackUnspent(
        key="k", user_id="u1", actor="a", lot_id=1, numerator=numerator, denominator=denominator
    )
    with pytest.raises(rules.InvalidOperation, match="numerator"):
        ops.validate(operation)


def test_debt_blocks_new_holds_until_repaid() -> None:
    state = make_state(make_lot(1, "paid", 10), owed=5)
    with pytest.raises(rules.InDebt) as refused:
        rules.hold(state, amount=1, hold_id=1, expires_at=FAR, now=NOW)
    assert (refused.value.owed, refused.value.code) == (5, "in_debt")
    assert (state.available, state.held, remaining(state)) == (10, 0, {1: 10})
    # Debt is checked before sufficiency: a user in debt hears about the debt.
    with pytest.raises(rules.InDebt):
        rules.hold(state, amount=1000, hold_id=1, expires_at=FAR, now=NOW)
    # Once a credit repays it, holds work again.
    postings, lot = rules.credit(state, amount=5, source=SALES, category="paid", expires_at=None, lot_id=2, now=NOW)
    assert assert_sound(state, postings) == {SALES: -5, DEBT: 5}
    assert lot is None
    assert drawn(hold_of(state, 10)) == [(1, 10)]


# --- expiry ---------------------------------------------------------------------------------------------


def test_expire_lots_moves_what_is_left_of_expired_lots_and_nothing_else() -> None:
    state = make_state(
        make_lot(1, "subscription", 10, expires_at=minutes(5), remaining=6),
        make_lot(2, "promotional", 10, expires_at=minutes(10)),
        make_lot(3, "paid", 10),
    )
    assert rules.expire_lots(state, now=minutes(4)) is None
    assert remaining(state) == {1: 6, 2: 10, 3: 10}
    postings = rules.expire_lots(state, now=minutes(5))
    assert postings is not None
    assert assert_sound(state, postings) == {AVAILABLE: -6, EXPIRED: 6}
    assert remaining(state) == {1: 0, 2: 10, 3: 10}
    assert (state.lots[1].expired_at, state.lots[2].expired_at) == (minutes(5), None)
    postings = rules.expire_lots(state, now=minutes(60))
    assert postings is not None
    assert assert_sound(state, postings) == {AVAILABLE: -10, EXPIRED: 10}
    assert rules.expire_lots(state, now=minutes(120)) is None
    assert state.available == 10


# --- every rule, in any order: zero-sum postings and the state's invariants ------------------------------


@st.composite
def rule_sequences(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    steps = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["credit", "hold", "capture", "void", "refund", "expire", "clawback", "tick"]))
        steps.append(
            (
                kind,
                draw(st.integers(1, 60)),
                draw(st.sampled_from(rules.CATEGORIES)),
                draw(st.sampled_from([None, 3, 10, 30])),
                draw(st.integers(0, 1000)),
                draw(st.booleans()),
            )
        )
    return steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_sequences())
def test_any_sequence_of_rules_keeps_every_posting_balanced_and_the_state_sound(steps: list[tuple[Any, ...]]) -> None:
    state = make_state()
    now = NOW
    ids = itertools.count(1)
    holds: list[rules.Hold] = []
    # Per-account running totals of everything posted for this user, and the conservation they imply.
    totals: dict[str, int] = {}
    for kind, amount, category, expiry, pick, flag in steps:
        postings: Postings | None = None
        try:
            if kind == "credit":
                expires_at = None if expiry is None else now + timedelta(minutes=expiry)
                postings, _ = rules.credit(
                    state,
                    amount=amount,
                    source=SALES,
                    category=category,
                    expires_at=expires_at,
                    lot_id=next(ids),
                    now=now,
                )
            elif kind == "hold":
                postings, hold = rules.hold(state, amount=amount, hold_id=next(ids), expires_at=FAR, now=now)
                holds.append(hold)
            elif kind == "tick":
                now += timedelta(minutes=amount % 7)
            elif kind == "expire":
                postings = rules.expire_lots(state, now=now)
            elif kind == "clawback":
                postings = rules.clawback(state, amount=amount, preferred_lot_id=pick % 50 if flag else None, now=now)
            elif holds:
                hold = holds[pick % len(holds)]
                if kind == "capture":
                    postings = rules.capture(state, hold, amount=None if flag else amount, now=now)
                elif kind == "void":
                    postings = rules.void(state, hold, expired=flag, now=now)
                else:
                    postings, _ = rules.refund(state, hold, amount=amount, new_lot_id=lambda: next(ids), now=now)
        except rules.LedgerRuleError:
            state.check()
            continue
        if postings is None:
            state.check()
            continue
        assert_sound(state, postings)
        for account, posted in postings:
            totals[account] = totals.get(account, 0) + posted
        assert totals.get(AVAILABLE, 0) == state.available
        assert totals.get(HELD, 0) == state.held
        assert -totals.get(DEBT, 0) == state.owed
        assert state.held == sum(hold.amount for hold in holds if hold.status == "open")
        for hold in holds:
            assert sum(share.drawn for share in hold.shares) == hold.amount
            assert hold.refunded <= hold.captured <= hold.amount
            for share in hold.shares:
                assert 0 <= share.returned + share.refunded <= share.drawn
        for lot in state.lots.values():
            assert 0 <= lot.remaining <= lot.amount


# --- the operations' request hash -----------------------------------------------------------------------

EXPIRY = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
OPERATIONS: list[ops.AnyOperation] = [
    ops.Credit(key="k", user_id="u1", actor="a", amount=370, kind="purchase", category="paid"),
    ops.Credit(
        key="k",
        user_id="u1",
        actor="a",
        reason="r",
        reference="ref",
        amount=370,
        kind="subscription_grant",
        category="subscription",
        expires_at=EXPIRY,
    ),
    ops.Hold(key="k", user_id="u1", actor="a", amount=10, expires_at=EXPIRY),
    ops.Capture(key="k", user_id="u1", actor="a", hold_id=1),
    ops.Capture(key="k", user_id="u1", actor="a", hold_id=1, amount=5),
    ops.Void(key="k", user_id="u1", actor="a", hold_id=1),
    ops.Refund(key="k", user_id="u1", actor="a", hold_id=1, amount=3),
    ops.ExpireLots(key="k", user_id="u1", actor="a"),
    ops.Clawback(key="k", user_id="u1", actor="a", amount=1000),
    ops.Clawback(key="k", user_id="u1", actor="a", amount=1000, lot_id=4),
    ops.ClawbackUnspent(key="k", user_id="u1", actor="a", lot_id=4, numerator=1, denominator=3),
]


def different_value(value: Any, name: str) -> Any:
    if name == "kind":
        return "grant" if value != "grant" else "purchase"
    if name == "category":
        return "promotional" if value != "promotional" else "paid"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if value is None:
        return {"reason": "r", "reference": "ref", "expires_at": EXPIRY}.get(name, 1)
    raise AssertionError(f"no different value for {name}={value!r}")


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: type(op).__name__)
def test_request_hash_is_equal_for_equal_operations(operation: ops.AnyOperation) -> None:
    copy = msgspec.json.decode(msgspec.json.encode(operation), type=ops.AnyOperation)
    assert copy == operation
    assert copy is not operation
    assert copy.request_hash() == operation.request_hash()
    assert len(operation.request_hash()) == 32


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: type(op).__name__)
def test_request_hash_changes_when_any_field_changes(operation: ops.AnyOperation) -> None:
    fields = msgspec.structs.fields(operation)
    assert fields
    for field in fields:
        value = getattr(operation, field.name)
        changed = msgspec.structs.replace(operation, **{field.name: different_value(value, field.name)})
        assert changed != operation, field.name
        assert changed.request_hash() != operation.request_hash(), field.name


def test_request_hash_differs_between_operation_types_with_the_same_fields() -> None:
    capture = ops.Capture(key="k", user_id="u1", actor="a", hold_id=1)
    void = ops.Void(key="k", user_id="u1", actor="a", hold_id=1)
    expire = ops.ExpireLots(key="k", user_id="u1", actor="a")
    hashes = {capture.request_hash(), void.request_hash(), expire.request_hash()}
    assert len(hashes) == 3
    all_hashes = [operation.request_hash() for operation in OPERATIONS]
    assert len(set(all_hashes)) == len(OPERATIONS)
