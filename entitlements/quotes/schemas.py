"""Pricing and quotes: requests and responses."""

from __future__ import annotations

from typing import Annotated

import msgspec

from entitlements.schemas import Struct

# Free-form strings here: the price table, not the type, says what is allowed, and its error names the
# allowed values.
ModeName = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
ResolutionName = Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
# Any whole number: the grid says which durations exist, and its error lists them.
DurationS = int


class QuoteCreate(Struct, frozen=True):
    mode: ModeName
    resolution: ResolutionName | None = None
    duration_s: DurationS | None = None
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
