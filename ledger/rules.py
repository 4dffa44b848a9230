"""The posting rules: pure functions over one user's in-memory state, no I/O.

Each rule checks its preconditions, mutates the state it is given and returns the postings of one
ledger transaction. The engine loads the state under the user's row lock, applies rules, and writes
what changed. PostgreSQL checks the same rules again (migrations/0002_ledger.sql).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Category = Literal["paid", "subscription", "promotional"]
CATEGORIES: tuple[Category, ...] = ("paid", "subscription", "promotional")
# Spending order among lots that expire at the same moment: the least valuable to the user first.
CATEGORY_SPENDING_RANK: dict[str, int] = {"promotional": 0, "subscription": 1, "paid": 2}

# The user's own accounts, by role; system accounts are named by their code.
AVAILABLE = "user:available"
HELD = "user:held"
DEBT = "user:debt"
SALES = "system:sales"
SUBSCRIPTION_GRANTS = "system:subscription_grants"
PROMOTIONS = "system:promotions"
REVENUE = "system:revenue"
EXPIRED = "system:expired"
CLAWBACK = "system:clawback"
SYSTEM_ACCOUNTS = (SALES, SUBSCRIPTION_GRANTS, PROMOTIONS, REVENUE, EXPIRED, CLAWBACK)

# One operation may move at most this many moments: far above any real purchase, far below bigint.
AMOUNT_MOMENTS_MAX = 1_000_000_000_000

Postings = list[tuple[str, int]]


class LedgerRuleError(Exception):
    """An operation the ledger refuses; nothing is written. `code` is the API's problem code."""

    code = "conflict"


class InsufficientMoments(LedgerRuleError):
    code = "insufficient_moments"

    def __init__(self, required: int, available: int) -> None:
        super().__init__(f"{required} moments required, {available} available")
        self.required = required
        self.available = available


class InDebt(LedgerRuleError):
    code = "in_debt"

    def __init__(self, owed: int) -> None:
        super().__init__(f"the user owes {owed} moments from a clawback; debt blocks new holds until repaid")
        self.owed = owed


class TooManyOpenHolds(LedgerRuleError):
    """The user already has as many open holds (generations in progress) as the caller allows."""

    code = "concurrency_limited"

    def __init__(self, open_holds_max: int) -> None:
        super().__init__(f"the user already has {open_holds_max} generations in progress; wait for one to finish")
        self.open_holds_max = open_holds_max


class HoldNotOpen(LedgerRuleError):
    code = "conflict"

    def __init__(self, hold_id: int, status: str) -> None:
        super().__init__(f"hold {hold_id} is {status}, not open")
        self.status = status


class NotRefundable(LedgerRuleError):
    code = "not_refundable"


class InvalidOperation(LedgerRuleError):
    code = "validation_failed"


@dataclass(slots=True)
class Lot:
    id: int
    category: str
    amount: int
    remaining: int
    expires_at: datetime | None
    expired_at: datetime | None = None
    new: bool = False
    changed: bool = False

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(slots=True)
class Share:
    """The part of a hold drawn from one lot."""

    lot_id: int
    drawn: int
    returned: int = 0
    refunded: int = 0

    @property
    def captured(self) -> int:
        return self.drawn - self.returned


@dataclass(slots=True)
class Hold:
    id: int
    user_id: str
    amount: int
    status: str
    expires_at: datetime
    shares: list[Share]
    captured: int = 0
    refunded: int = 0
    new: bool = False
    changed: bool = False


@dataclass(slots=True)
class UserState:
    user_id: str
    available: int
    held: int
    owed: int
    # How many of the user's holds are open: kept on the balance row, so a cap on it is checked under
    # the row lock every hold takes (concurrent holds of one user cannot both pass it).
    open_holds: int = 0
    lots: dict[int, Lot] = field(default_factory=dict)

    def spendable_lots(self, now: datetime) -> list[Lot]:
        lots = [lot for lot in self.lots.values() if lot.remaining > 0 and not lot.is_expired(now)]
        lots.sort(key=spending_order_key)
        return lots

    def check(self) -> None:
        """The invariants every rule must leave behind (programmer errors if broken)."""
        assert self.available >= 0, self
        assert self.held >= 0, self
        assert self.owed >= 0, self
        assert self.open_holds >= 0, self
        assert self.available == sum(lot.remaining for lot in self.lots.values()), self


def spending_order_key(lot: Lot) -> tuple[bool, datetime | int, int, int]:
    # Soonest-expiring first (never-expiring last), then promotional, subscription, paid; then oldest.
    expiry_key: datetime | int = lot.expires_at if lot.expires_at is not None else 0
    return (lot.expires_at is None, expiry_key, CATEGORY_SPENDING_RANK[lot.category], lot.id)


def check_amount(amount: int, *, name: str = "amount") -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidOperation(f"{name} must be a whole number of moments")
    if not 0 < amount <= AMOUNT_MOMENTS_MAX:
        raise InvalidOperation(f"{name} must be between 1 and {AMOUNT_MOMENTS_MAX} moments")


def _assert_balanced(postings: Postings) -> Postings:
    assert len(postings) >= 2, postings
    total = 0
    for _, amount in postings:  # a plain loop: this runs for every operation of every batch
        assert amount != 0, postings
        total += amount
    assert total == 0, postings
    return postings


def _merge(postings: Postings) -> Postings:
    """One posting per account (the table's key), zero-sum legs dropped."""
    totals: dict[str, int] = {}
    for account, amount in postings:
        totals[account] = totals.get(account, 0) + amount
    return [(account, amount) for account, amount in totals.items() if amount != 0]


def credit(
    state: UserState,
    *,
    amount: int,
    source: str,
    category: str,
    expires_at: datetime | None,
    lot_id: int,
    now: datetime,
) -> tuple[Postings, Lot | None]:
    """Moments from a system account to the user: debt is repaid first, the rest becomes a new lot."""
    check_amount(amount)
    if category not in CATEGORIES:
        raise InvalidOperation(f"category must be one of {', '.join(CATEGORIES)}")
    if expires_at is not None and expires_at <= now:
        raise InvalidOperation("expires_at must be in the future")
    repaid = min(amount, state.owed)
    to_available = amount - repaid
    state.owed -= repaid
    lot = None
    if to_available > 0:
        lot = Lot(
            id=lot_id,
            category=category,
            amount=to_available,
            remaining=to_available,
            expires_at=expires_at,
            new=True,
        )
        state.lots[lot.id] = lot
        state.available += to_available
    return _assert_balanced(_merge([(source, -amount), (DEBT, repaid), (AVAILABLE, to_available)])), lot


def hold(
    state: UserState,
    *,
    amount: int,
    hold_id: int,
    expires_at: datetime,
    now: datetime,
    open_holds_max: int | None = None,
) -> tuple[Postings, Hold]:
    """Reserves moments: available → held, drawing from lots in spending order. Debt blocks it, and so
    does reaching `open_holds_max` open holds (None: no cap)."""
    check_amount(amount)
    if expires_at <= now:
        raise InvalidOperation("expires_at must be in the future")
    if state.owed > 0:
        raise InDebt(state.owed)
    if open_holds_max is not None and state.open_holds >= open_holds_max:
        raise TooManyOpenHolds(open_holds_max)
    lots = state.spendable_lots(now)
    spendable = sum(lot.remaining for lot in lots)
    if spendable < amount:
        raise InsufficientMoments(required=amount, available=spendable)
    shares = []
    needed = amount
    for lot in lots:
        if needed == 0:
            break
        take = min(lot.remaining, needed)
        lot.remaining -= take
        lot.changed = True
        needed -= take
        shares.append(Share(lot_id=lot.id, drawn=take))
    assert needed == 0
    state.available -= amount
    state.held += amount
    state.open_holds += 1
    new_hold = Hold(
        id=hold_id,
        user_id=state.user_id,
        amount=amount,
        status="open",
        expires_at=expires_at,
        shares=shares,
        new=True,
    )
    return _assert_balanced([(AVAILABLE, -amount), (HELD, amount)]), new_hold


def _return_to_lots(state: UserState, hold: Hold, amount: int, now: datetime) -> Postings:
    """Gives `amount` of a hold back to the lots it came from, last-drawn first; an expired lot's share
    goes to system:expired instead."""
    postings: Postings = []
    left = amount
    for share in reversed(hold.shares):
        if left == 0:
            break
        back = min(left, share.drawn - share.returned)
        if back == 0:
            continue
        share.returned += back
        left -= back
        lot = state.lots[share.lot_id]
        if lot.is_expired(now) or lot.expired_at is not None:
            postings.append((EXPIRED, back))
        else:
            lot.remaining += back
            lot.changed = True
            state.available += back
            postings.append((AVAILABLE, back))
    assert left == 0
    return postings


def capture(state: UserState, hold: Hold, *, amount: int | None, now: datetime) -> Postings:
    """Charges a delivered video: held → revenue; a partial capture returns the rest to the lots."""
    if hold.status != "open":
        raise HoldNotOpen(hold.id, hold.status)
    charged = hold.amount if amount is None else amount
    check_amount(charged)
    if charged > hold.amount:
        raise InvalidOperation(f"cannot capture {charged} of a hold of {hold.amount}")
    released = hold.amount - charged
    postings: Postings = [(HELD, -hold.amount), (REVENUE, charged)]
    if released:
        postings += _return_to_lots(state, hold, released, now)
    state.held -= hold.amount
    state.open_holds -= 1
    hold.status, hold.captured, hold.changed = "captured", charged, True
    return _assert_balanced(_merge(postings))


def void(state: UserState, hold: Hold, *, expired: bool, now: datetime) -> Postings:
    """Gives every held moment back (failed, cancelled or expired generation)."""
    if hold.status != "open":
        raise HoldNotOpen(hold.id, hold.status)
    postings: Postings = [(HELD, -hold.amount), *_return_to_lots(state, hold, hold.amount, now)]
    state.held -= hold.amount
    state.open_holds -= 1
    hold.status, hold.changed = ("expired" if expired else "voided"), True
    return _assert_balanced(_merge(postings))


def refund(
    state: UserState, hold: Hold, *, amount: int, new_lot_id: Callable[[], int], now: datetime
) -> tuple[Postings, list[Lot]]:
    """Gives back moments of a delivered video: revenue → the user, never more than was captured.

    Each share returns to its lot while that lot is unexpired; an expired lot's share becomes a new lot
    of the same category with no expiry (support meant the user to have it). Debt is repaid first.
    """
    check_amount(amount)
    if hold.status != "captured":
        raise NotRefundable(f"hold {hold.id} is {hold.status}; only a captured hold can be refunded")
    refundable = hold.captured - hold.refunded
    if amount > refundable:
        raise NotRefundable(f"{amount} moments exceed the {refundable} still refundable")
    repaid = min(amount, state.owed)
    state.owed -= repaid
    to_lots = amount - repaid
    new_lots: list[Lot] = []
    left = amount
    for share in reversed(hold.shares):
        if left == 0:
            break
        back = min(left, share.captured - share.refunded)
        if back == 0:
            continue
        share.refunded += back
        left -= back
        # Debt repayment comes out of the first shares; what is left of each share goes to a lot.
        restore = min(back, to_lots)
        to_lots -= restore
        if restore == 0:
            continue
        lot = state.lots.get(share.lot_id)
        if lot is not None and not lot.is_expired(now) and lot.expired_at is None:
            lot.remaining += restore
            lot.changed = True
        else:
            category = lot.category if lot is not None else "promotional"
            fresh = Lot(
                id=new_lot_id(),
                category=category,
                amount=restore,
                remaining=restore,
                expires_at=None,
                new=True,
            )
            state.lots[fresh.id] = fresh
            new_lots.append(fresh)
        state.available += restore
    assert left == 0
    assert to_lots == 0
    hold.refunded += amount
    hold.changed = True
    return _assert_balanced(_merge([(REVENUE, -amount), (DEBT, repaid), (AVAILABLE, amount - repaid)])), new_lots


def expire_lots(state: UserState, *, now: datetime) -> Postings | None:
    """Moves what is left of every expired lot to system:expired; None when nothing has expired."""
    total = 0
    for lot in state.lots.values():
        if lot.remaining > 0 and lot.is_expired(now):
            total += lot.remaining
            lot.remaining = 0
            lot.expired_at = now
            lot.changed = True
    if total == 0:
        return None
    state.available -= total
    return _assert_balanced([(AVAILABLE, -total), (EXPIRED, total)])


def clawback(state: UserState, *, amount: int, preferred_lot_id: int | None, now: datetime) -> Postings:
    """Takes back refunded or disputed purchases: from the purchase's own lot first, then in spending
    order; what is not there becomes debt, which blocks generation and later credits repay."""
    check_amount(amount)
    order = state.spendable_lots(now)
    preferred = state.lots.get(preferred_lot_id) if preferred_lot_id is not None else None
    if preferred is not None and preferred in order:
        order.remove(preferred)
        order.insert(0, preferred)
    left = amount
    for lot in order:
        if left == 0:
            break
        take = min(lot.remaining, left)
        lot.remaining -= take
        lot.changed = True
        left -= take
    taken = amount - left
    state.available -= taken
    state.owed += left
    return _assert_balanced(_merge([(AVAILABLE, -taken), (DEBT, -left), (CLAWBACK, amount)]))


def clawback_unspent(
    state: UserState, *, lot_id: int, numerator: int, denominator: int, now: datetime
) -> Postings | None:
    """Takes back numerator/denominator (rounded down) of what is left of one unexpired lot, from that lot
    only; None when that comes to nothing (the lot is spent, expired, or not the user's)."""
    lot = state.lots.get(lot_id)
    if lot is None or lot.is_expired(now):
        return None
    amount = lot.remaining * numerator // denominator
    if amount == 0:
        return None
    lot.remaining -= amount
    lot.changed = True
    state.available -= amount
    return _assert_balanced([(AVAILABLE, -amount), (CLAWBACK, amount)])
