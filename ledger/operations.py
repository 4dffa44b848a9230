"""The ledger's operations (requests) and results, and the errors a caller may get back."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal, get_args

import msgspec

from ledger.rules import LedgerRuleError

IDEMPOTENCY_KEY_CHARS_MAX = 400
REASON_CHARS_MAX = 1000
REFERENCE_CHARS_MAX = 400

# Every kind of ledger transaction (the database's CHECK on ledger_transactions.kind lists the same).
TransactionKind = Literal[
    "purchase",
    "subscription_grant",
    "grant",
    "hold",
    "capture",
    "void",
    "refund",
    "expiry",
    "clawback",
    "clawback_reversal",
]
TRANSACTION_KINDS: tuple[TransactionKind, ...] = get_args(TransactionKind)
CreditKind = Literal["purchase", "subscription_grant", "grant", "clawback_reversal"]
LotCategory = Literal["paid", "subscription", "promotional"]
LOT_CATEGORIES: tuple[LotCategory, ...] = get_args(LotCategory)


class Operation(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    """Every operation names its user and carries an idempotency key, an actor and a reason."""

    key: str
    user_id: str
    actor: str
    reason: str | None = None
    reference: str | None = None

    def request_hash(self) -> bytes:
        # The canonical form is the operation itself, encoded with its tag: same key + same request
        # replays, same key + anything different is refused.
        return hashlib.sha256(msgspec.json.encode(self)).digest()


class Credit(Operation, frozen=True, tag="credit"):
    amount: int
    kind: CreditKind
    category: LotCategory
    expires_at: datetime | None = None


class Hold(Operation, frozen=True, tag="hold"):
    amount: int
    expires_at: datetime
    # Refused (TooManyOpenHolds) when the user already has this many open holds; None: no cap.
    open_holds_max: int | None = None


class Capture(Operation, frozen=True, tag="capture"):
    hold_id: int
    # None captures the whole hold; less captures part and returns the rest.
    amount: int | None = None


class Void(Operation, frozen=True, tag="void"):
    hold_id: int
    expired: bool = False


class Refund(Operation, frozen=True, tag="refund"):
    hold_id: int
    amount: int


class ExpireLots(Operation, frozen=True, tag="expire_lots"):
    pass


class Clawback(Operation, frozen=True, tag="clawback"):
    amount: int
    # The purchase's own lot, spent first.
    lot_id: int | None = None


class ClawbackUnspent(Operation, frozen=True, tag="clawback_unspent"):
    """Takes back `numerator`/`denominator` (rounded down) of what is still unspent in one lot, from that
    lot only: never more than it holds, never debt. The unspent part of a refunded subscription allowance."""

    lot_id: int
    numerator: int
    denominator: int


AnyOperation = Credit | Hold | Capture | Void | Refund | ExpireLots | Clawback | ClawbackUnspent


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """What an operation answered; stored with its transaction and replayed for a repeated key."""

    transaction_id: int | None
    kind: str
    user_id: str
    amount: int
    available: int
    held: int
    owed: int
    hold_id: int | None = None
    lot_ids: tuple[int, ...] = ()
    replayed: bool = False


class IdempotencyConflict(LedgerRuleError):
    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")


class HoldNotFound(LedgerRuleError):
    code = "not_found"

    def __init__(self, hold_id: int) -> None:
        super().__init__(f"hold {hold_id} does not exist for this user")


class LedgerUnavailable(Exception):
    """The database failed the operation for a reason that is not the operation's fault (retry later)."""


def validate(operation: AnyOperation) -> None:
    """Shape checks that need no state (bad input is an expected error, not an assertion)."""
    from ledger.rules import InvalidOperation

    if not 1 <= len(operation.key) <= IDEMPOTENCY_KEY_CHARS_MAX:
        raise InvalidOperation(f"idempotency key must be 1-{IDEMPOTENCY_KEY_CHARS_MAX} characters")
    if not 1 <= len(operation.user_id) <= 200:
        raise InvalidOperation("user_id must be 1-200 characters")
    if not 1 <= len(operation.actor) <= IDEMPOTENCY_KEY_CHARS_MAX:
        raise InvalidOperation("actor must be 1-400 characters")
    for name, text in (
        ("key", operation.key),
        ("user_id", operation.user_id),
        ("actor", operation.actor),
        ("reason", operation.reason),
        ("reference", operation.reference),
    ):
        if text is not None and "\x00" in text:
            raise InvalidOperation(f"{name} must not contain NUL characters")
    if operation.reason is not None and len(operation.reason) > REASON_CHARS_MAX:
        raise InvalidOperation(f"reason must be at most {REASON_CHARS_MAX} characters")
    if operation.reference is not None and len(operation.reference) > REFERENCE_CHARS_MAX:
        raise InvalidOperation(f"reference must be at most {REFERENCE_CHARS_MAX} characters")
    if isinstance(operation, ClawbackUnspent):
        share = (operation.numerator, operation.denominator)
        if any(isinstance(part, bool) or not isinstance(part, int) for part in share) or not (
            0 < operation.numerator <= operation.denominator
        ):
            raise InvalidOperation("numerator/denominator must be whole numbers with 0 < numerator <= denominator")
    # Ids travel to PostgreSQL inside array literals (ledger/arrays.py): only integers may.
    for name, value in (
        ("hold_id", getattr(operation, "hold_id", None)),
        ("lot_id", getattr(operation, "lot_id", None)),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidOperation(f"{name} must be a positive whole number")
