"""API keys' requests and responses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

import msgspec

from entitlements.schemas import NAME_CHARS_MAX, TEXT_PATTERN, Struct

Role = Literal["service", "support", "finance", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)

KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_CHARS_MAX, pattern=TEXT_PATTERN)]


class KeyCreate(Struct, frozen=True):
    role: Role
    name: KeyName


class KeyOut(Struct, frozen=True):
    id: int
    name: str
    role: Role
    # The first characters of the raw key: enough to tell keys apart, useless to an attacker.
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(Struct, frozen=True):
    """A new key: `key` is the raw secret, shown here once and never again."""

    key: str
    api_key: KeyOut


class KeysPage(Struct, frozen=True):
    items: list[KeyOut]
    next_cursor: str | None
