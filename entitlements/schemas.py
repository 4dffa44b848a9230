"""What every domain's bodies share: the strict Struct base, the balance pair, and the text rules.

Each rule here has one definition; the request types, the path parameters and the Stripe payload views
all use it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import msgspec

import ledger
from entitlements.errors import ValidationFailed

PROMPT_CHARS_MAX = 5_000
IMAGE_ID_CHARS_MAX = 200
# Image ids name files on the worker: unreserved URL characters, no leading dot (no path tricks).
# Identifier patterns end in `$(?!\n)`: Python's `$` (msgspec and Litestar search with it) also matches
# before a final newline, so "img\n" passed; the lookahead is the same in the document's ECMA-262 regexes,
# where `\Z` would mean a literal Z.
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._~-]*$(?!\n)"
IDEMPOTENCY_KEY_CHARS_MAX = 255
REASON_CHARS_MAX = 1_000
NAME_CHARS_MAX = 200
# PostgreSQL text cannot hold NUL: refuse it at the edge as bad input rather than fail at the write.
TEXT_PATTERN = r"^[^\x00]*$"
# A user id is the other services' own id: 1-200 characters, no control characters, and no ':' (the
# ledger's account codes are `user:{id}:available`, so a ':' would let one id spell another's account).
USER_ID_CHARS_MAX = 200
USER_ID_PATTERN = r"^[^:\x00-\x1f\x7f-\x9f]{1,200}$(?!\n)"
_USER_ID = re.compile(USER_ID_PATTERN)

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=USER_ID_CHARS_MAX, pattern=USER_ID_PATTERN)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=REASON_CHARS_MAX, pattern=TEXT_PATTERN)]
# A generation's prompt, and what prompt advice reads: one rule for both.
Prompt = Annotated[str, msgspec.Meta(min_length=1, max_length=PROMPT_CHARS_MAX, pattern=TEXT_PATTERN)]


def aware(value: datetime | None, field: str = "timestamp") -> datetime | None:
    """A timestamp without a zone is ambiguous for money: it is read as UTC, as the whole API speaks.
    Normalised to UTC, so the same instant written in two zones is the same request for idempotency.
    An instant that has no UTC value (0001-01-01T00:00:00+14:00 is before year 1) is bad input."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValidationFailed(field, "is out of range: its UTC value falls outside years 1-9999") from None


def is_user_id(value: str) -> bool:
    return _USER_ID.fullmatch(value) is not None


class Struct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for every request and response body."""


class Balance(Struct, frozen=True):
    available: int
    held: int


class Preview(Struct, frozen=True):
    """A money-changing request tried and rolled back: the user's balances before and after it, and
    whether it would wait for a second person's approval (then `after` is what approving it would make)."""

    before: ledger.Balances
    after: ledger.Balances
    pending_approval: bool
