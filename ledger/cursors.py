"""The one codec of every page cursor the service hands out: opaque, versioned by scope, bounded.

A cursor is `scope|part|part…` in unpadded base64url. Clients pass it back unchanged; anything else
(another scope's cursor, a cursor edited by hand, a huge number) is an `InvalidCursor`, never a crash.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

CURSOR_CHARS_MAX = 512
BIGINT_MAX = (1 << 63) - 1


class InvalidCursor(ValueError):
    def __init__(self) -> None:
        super().__init__("cursor is not one this service issued")


def encode_cursor(scope: str, *parts: str) -> str:
    text = "|".join((scope, *parts))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, scope: str, parts: int) -> tuple[str, ...]:
    """The cursor's parts, checked to be `parts` of them under `scope`."""
    if len(cursor) > CURSOR_CHARS_MAX:
        raise InvalidCursor
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor from None
    found_scope, *found = text.split("|")
    if found_scope != scope or len(found) != parts:
        raise InvalidCursor
    return tuple(found)


def decode_instant(text: str) -> datetime:
    """An instant a cursor carries, in UTC: with its zone, and one PostgreSQL can bind (a forged
    9999-12-31T23:59:59-23:59 has no UTC value before year 10000)."""
    try:
        instant = datetime.fromisoformat(text)
        if instant.tzinfo is None:
            raise InvalidCursor
        return instant.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidCursor from None


def encode_id_cursor(scope: str, last_id: int) -> str:
    return encode_cursor(scope, str(last_id))


def decode_id_cursor(cursor: str | None, scope: str) -> int | None:
    """The id a page continues after; within PostgreSQL's bigint so it can always be bound."""
    if cursor is None:
        return None
    (text,) = decode_cursor(cursor, scope, 1)
    if not text.isdigit() or len(text) > 19 or not 0 <= int(text) <= BIGINT_MAX:
        raise InvalidCursor
    return int(text)
