"""GET /v1/pricing and POST /v1/quotes."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.params import JSONBody

from entitlements.http import PriceTable
from entitlements.keys import ROLES
from entitlements.quotes import service
from entitlements.quotes.schemas import PricingOut, QuoteCreate, QuoteOut


class QuotesController(Controller):
    tags = ["pricing"]
    # Quotes and advice compute and change nothing: they count as reads.
    opt = {"roles": ROLES, "rate_class": "reads"}

    @get("/v1/pricing", operation_id="getPricing", summary="Every cell of the price table in force")
    async def get_pricing(self, price_table: PriceTable) -> PricingOut:
        return service.pricing_document(price_table)

    @post("/v1/quotes", operation_id="createQuote", summary="Price one generation request", status_code=200)
    async def create_quote(self, data: JSONBody[QuoteCreate], price_table: PriceTable) -> QuoteOut:
        quote = service.quote(
            price_table, mode=data.mode, resolution=data.resolution, duration_s=data.duration_s, audio=data.audio
        )
        return service.quote_out(quote)
