"""Quotes and the published price document, from the price table in force now."""

from __future__ import annotations

import pricing
from entitlements.errors import ValidationFailed
from entitlements.quotes.schemas import PriceCell, PricingOut, QuoteOut


def quote(
    table: pricing.PriceTable, *, mode: str, resolution: str | None, duration_s: int | None, audio: bool | None
) -> pricing.Quote:
    """The price of one request, or a validation failure naming the field and every allowed value."""
    try:
        return pricing.quote(table, mode=mode, resolution=resolution, duration_s=duration_s, audio=audio)
    except pricing.InvalidQuoteRequest as invalid:
        raise ValidationFailed(invalid.field, invalid.message, allowed=invalid.allowed) from None


def quote_out(quote: pricing.Quote) -> QuoteOut:
    return QuoteOut(
        moments=quote.moments,
        price_version=quote.price_version,
        mode=quote.mode,
        resolution=quote.resolution,
        duration_s=quote.duration_s,
        audio=quote.audio,
    )


def pricing_document(table: pricing.PriceTable) -> PricingOut:
    return PricingOut(
        version=table.version,
        effective_from=table.effective_from.isoformat().replace("+00:00", "Z"),
        currency=table.currency,
        cells=[
            PriceCell(mode=c.mode, resolution=c.resolution, duration_s=c.duration_s, audio=c.audio, moments=c.moments)
            for c in table.cells
        ],
    )


def cheapest_moments(table: pricing.PriceTable) -> int:
    """The least a video costs under this table: below it, a user cannot generate anything."""
    return min(cell.moments for cell in table.cells)
