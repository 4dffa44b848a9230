"""Parameters every domain's endpoints share, each checked in one place and documented in OpenAPI.

Handlers ask for them by name (`idempotency_key`, `page_limit`, `window`, `caller`); Litestar's dependency
injection calls these providers with the request's header, query and state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from litestar import Request
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, PathParameter, QueryParameter

import ledger
from entitlements.errors import IdempotencyKeyRequired, ValidationFailed
from entitlements.http.auth import CALLER_SCOPE_KEY
from entitlements.keys import Caller
from entitlements.schemas import IDEMPOTENCY_KEY_CHARS_MAX, USER_ID_CHARS_MAX, USER_ID_PATTERN, aware
from entitlements.settings import Settings

# The largest `limit` any page takes, whatever PAGE_SIZE_MAX says; the setting may only lower it.
LIMIT_MAX = 1000
IDEMPOTENCY_KEY_PATTERN = r"^[^\x00-\x1f\x7f]+$(?!\n)"

UserIdPath = Annotated[
    str,
    PathParameter(
        description="The user's id in the calling product: 1-200 characters, no ':' and no control characters.",
        min_length=1,
        max_length=USER_ID_CHARS_MAX,
        pattern=USER_ID_PATTERN,
    ),
]


# What a header's kwarg is called in a validation error: the header's own name, as the client sent it.
HEADER_FIELDS = {"idempotency_key_header": "Idempotency-Key"}


_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
IDEMPOTENCY_KEY_FIELD = "Idempotency-Key"


def provide_idempotency_key(
    request: Request[Any, Any, Any],
    idempotency_key_header: Annotated[
        str | None,
        HeaderParameter(
            name="Idempotency-Key",
            required=True,
            # Documented here, checked below on the UTF-8 text: Litestar reads header bytes as Latin-1,
            # so its own checks would count bytes and take "é" for "Ã©".
            schema_extra={"minLength": 1, "maxLength": IDEMPOTENCY_KEY_CHARS_MAX, "pattern": IDEMPOTENCY_KEY_PATTERN},
            description="Makes this money-changing request safe to retry: the same key with the same body "
            "replays the first answer; with another body it is 409 idempotency_key_reused. UTF-8, given once.",
        ),
    ] = None,
) -> str:
    return idempotency_key_from(request.scope["headers"])


def idempotency_key_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's Idempotency-Key as the UTF-8 text the client sent; exactly one, or the request is refused
    (a proxy or client that sends two would otherwise have one of them silently chosen)."""
    found = [value for name, value in headers if name == b"idempotency-key"]
    if not found:
        raise IdempotencyKeyRequired("this request changes money: send an Idempotency-Key header")
    if len(found) > 1:
        raise ValidationFailed(IDEMPOTENCY_KEY_FIELD, "is given more than once; send one key")
    try:
        key = bytes(found[0]).decode()
    except UnicodeDecodeError:
        raise ValidationFailed(IDEMPOTENCY_KEY_FIELD, "is not valid UTF-8") from None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_CHARS_MAX:
        raise ValidationFailed(IDEMPOTENCY_KEY_FIELD, f"must be 1-{IDEMPOTENCY_KEY_CHARS_MAX} characters")
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise ValidationFailed(IDEMPOTENCY_KEY_FIELD, "must not contain control characters")
    return key


def provide_limit(
    settings: NamedDependency[Settings],
    limit: Annotated[
        int | None, QueryParameter(ge=1, le=LIMIT_MAX, description="Page size; PAGE_SIZE_MAX bounds it.")
    ] = None,
) -> int:
    if limit is None:
        return settings.api.page_size_default
    if limit > settings.api.page_size_max:
        raise ValidationFailed("limit", f"must be between 1 and {settings.api.page_size_max}")
    return limit


CursorQuery = Annotated[
    str | None, QueryParameter(max_length=ledger.CURSOR_CHARS_MAX, description="next_cursor of the previous page.")
]


@dataclass(frozen=True)
class Window:
    """A since/until pair of instants in UTC; either end may be open."""

    since: datetime | None
    until: datetime | None


def provide_window(
    since: Annotated[datetime | None, QueryParameter(description="From this instant (inclusive), RFC 3339.")] = None,
    until: Annotated[datetime | None, QueryParameter(description="Up to this instant (exclusive), RFC 3339.")] = None,
) -> Window:
    window = Window(aware(since, "since"), aware(until, "until"))
    if window.since is not None and window.until is not None and window.since > window.until:
        raise ValidationFailed("until", "must not be before since")
    return window


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    caller = request.scope.get(CALLER_SCOPE_KEY)
    assert isinstance(caller, Caller), "the role guard runs before every handler that asks for its caller"
    return caller
