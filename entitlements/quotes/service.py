"""Quotes and the published price document, from the price table in force now."""

from __future__ import annotations

from typing import Any

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


_documents: dict[str, PricingOut] = {}


def pricing_document(table: pricing.PriceTable) -> PricingOut:
    """Built once per published table (a version is never edited), not once per request."""
    document = _documents.get(table.version)
    if document is None:
        document = _documents[table.version] = _build_document(table)
    return document


def _build_document(table: pricing.PriceTable) -> PricingOut:
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


def request_json_schema(table: pricing.PriceTable) -> dict[str, Any]:
    """This table's grid as JSON Schema for a request's mode, resolution, duration_s and audio: one
    alternative per mode, so that the published contract accepts exactly what `quote` accepts. A field
    that has a default may be omitted or null."""
    variants = []
    for grid in table.modes:
        optional = {
            "resolution": grid.resolution_default is not None,
            "duration_s": grid.duration_s_default is not None,
            "audio": grid.audio_default is not None,
        }
        null = [None]
        properties: dict[str, Any] = {
            "mode": {"const": grid.name},
            "resolution": {"enum": [*grid.resolutions, *(null if optional["resolution"] else [])]},
            "duration_s": {
                "type": ["integer", "null"] if optional["duration_s"] else "integer",
                "minimum": grid.duration_s_min,
                "maximum": grid.duration_s_max,
            },
            "audio": {"enum": [*grid.audio_allowed, *(null if optional["audio"] else [])]},
        }
        required = ["mode", *(field for field, may_omit in optional.items() if not may_omit)]
        variants.append({"title": f"mode {grid.name}", "properties": properties, "required": required})
    return {"properties": {"mode": {"type": "string", "enum": [grid.name for grid in table.modes]}}, "oneOf": variants}
