"""GET /v1/pricing and POST /v1/quotes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, get, post
from litestar.params import JSONBody

import pricing
from entitlements.auth import ROLES
from entitlements.errors import ValidationFailed
from entitlements.http import strict_body
from entitlements.schemas import PriceCell, PricingOut, QuoteCreate, QuoteOut


def current_table(request: Request[Any, Any, Any]) -> pricing.PriceTable:
    return pricing.current_table(request.app.state.price_tables, datetime.now(UTC))


def quote_or_422(
    table: pricing.PriceTable,
    *,
    mode: str,
    resolution: str | None,
    duration_s: int | None,
    audio: bool | None,
) -> pricing.Quote:
    try:
        return pricing.quote(table, mode=mode, resolution=resolution, duration_s=duration_s, audio=audio)
    except pricing.InvalidQuoteRequest as invalid:
        raise ValidationFailed(invalid.field, invalid.message, allowed=list(invalid.allowed)) from None


@get("/v1/pricing", operation_id="getPricing", opt={"roles": ROLES}, tags=["pricing"])
async def get_pricing(request: Request[Any, Any, Any]) -> PricingOut:
    table = current_table(request)
    return PricingOut(
        version=table.version,
        effective_from=table.effective_from.isoformat().replace("+00:00", "Z"),
        currency=table.currency,
        cells=[
            PriceCell(
                mode=c.mode,
                resolution=c.resolution,
                duration_s=c.duration_s,
                audio=c.audio,
                moments=c.moments,
            )
            for c in table.cells
        ],
    )


@post("/v1/quotes", operation_id="createQuote", opt={"roles": ROLES}, tags=["pricing"], status_code=200)
async def create_quote(request: Request[Any, Any, Any], data: JSONBody[QuoteCreate]) -> QuoteOut:
    data = await strict_body(request, QuoteCreate)
    quote = quote_or_422(
        current_table(request),
        mode=data.mode,
        resolution=data.resolution,
        duration_s=data.duration_s,
        audio=data.audio,
    )
    return QuoteOut(
        moments=quote.moments,
        price_version=quote.price_version,
        mode=quote.mode,
        resolution=quote.resolution,
        duration_s=quote.duration_s,
        audio=quote.audio,
    )


ROUTES = [get_pricing, create_quote]
