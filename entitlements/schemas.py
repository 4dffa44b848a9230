"""Request and response bodies shared across the API: msgspec Structs, checked as they are decoded."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PROMPT_CHARS_MAX = 5_000
IMAGE_ID_CHARS_MAX = 200
# Image ids name files on the worker: unreserved URL characters, no leading dot (no path tricks).
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._~-]*$"
IDEMPOTENCY_KEY_CHARS_MAX = 255
REASON_CHARS_MAX = 1_000
# PostgreSQL text cannot hold NUL: refuse it at the edge as bad input rather than fail at the write.
TEXT_PATTERN = r"^[^\x00]*$"

Mode = Literal["advanced", "adult"]


class Struct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for every request and response body."""


class Balance(Struct, frozen=True):
    available: int
    held: int


class QuoteCreate(Struct, frozen=True):
    # Free-form strings here: the price table, not the type, says what is allowed, and its error names
    # the allowed values.
    mode: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
    resolution: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] | None = None
    duration_s: int | None = None
    audio: bool | None = None


class QuoteOut(Struct, frozen=True):
    moments: int
    price_version: str
    mode: str
    resolution: str
    duration_s: int
    audio: bool


class PriceCell(Struct, frozen=True):
    mode: str
    resolution: str
    duration_s: int
    audio: bool
    moments: int


class PricingOut(Struct, frozen=True):
    version: str
    effective_from: str
    currency: str
    cells: list[PriceCell]
